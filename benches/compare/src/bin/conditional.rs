//! Group commit and conditional writes, measured in one run (issue "Atomic
//! batches and conditional writes", benchmarks 2 and 4):
//!
//! 1. Durable puts (`SyncPolicy::Always`) from 1 writer and from 4, in
//!    alternating blocks (the disk's fdatasync latency drifts; alternating
//!    blocks see the same disk): time per put, the 4-writer ratio, and puts
//!    per `fdatasync` (`Stats::syncs`).
//! 2. Compare-and-swap under contention: 4 threads increment counters
//!    spread over 1, 16 and 1,000 keys, each with a read + CAS retry loop;
//!    sfs (`compare_and_swap`, and `update`) against sled's
//!    `compare_and_swap`, neither syncing per write (sfs `SyncPolicy::Never`;
//!    sled flushes in the background), then sfs durable (`Always`).
//!
//! 3. Batches: a durable batch of 100 puts against one durable put, and a
//!    load in batches against put by put.
//! 4. A write-ahead log's appends: durable batches of 16 entries under
//!    `SyncPolicy::Never` (the sfs-raft log's pattern), on a store with
//!    `Options::frequent_syncs` against one without, in alternating blocks.
//!
//! `cargo run --release --bin conditional -- [--dir DIR] [--quick] [--only group|batches|batch|load|cas|wal]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sfs::{Options, SyncPolicy};

const THREADS: usize = 4;

/// `--dir DIR`, `--quick`, and `--only SECTION` (`group`, `batches` (both
/// `batch` and `load`), `cas` or `wal`; every section when absent).
fn args() -> (std::path::PathBuf, bool, Option<String>) {
    let mut dir = std::env::temp_dir();
    let mut quick = false;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().expect("--dir DIR").into(),
            "--quick" => quick = true,
            "--only" => only = Some(args.next().expect("--only SECTION")),
            other => panic!("unknown argument {other}"),
        }
    }
    (dir, quick, only)
}

/// A store under `SyncPolicy::Always` in a new directory under `dir`,
/// holding `preload` entries of 100 bytes (one batch).
fn durable_store(dir: &std::path::Path, preload: usize) -> (tempfile::TempDir, sfs::Store) {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let store = Options::new()
        .sync(SyncPolicy::Always)
        .open(d.path().join("durable.sfs"))
        .expect("open");
    if preload > 0 {
        let mut b = sfs::Batch::new();
        for i in 0..preload {
            b.put(format!("preload-{i:08}"), [7u8; 100]);
        }
        store.apply(&b).expect("preload");
    }
    (d, store)
}

/// Durable puts by 1 writer and by 4, in alternating blocks: in a fresh
/// store (under 1 MiB: each put grows the file) and in one of 20,000
/// entries (past 1 MiB: puts go into the growth reserve). Then one
/// writer's time per put in the fresh store against the large one: a small
/// file must not pay for growing at every put.
fn group_commit(dir: &std::path::Path, quick: bool) {
    let mut single = Vec::new();
    for preload in [0usize, 20_000] {
        let (_d, store) = durable_store(dir, preload);
        let (blocks, per) = if quick { (4, 40) } else { (20, 100) };
        let value = vec![7u8; 100];
        let next = AtomicU64::new(0);
        let key = || format!("key-{:08}", next.fetch_add(1, Ordering::Relaxed));
        let (mut t1, mut t4, mut s1, mut s4) = (0f64, 0f64, 0u64, 0u64);
        for _ in 0..blocks {
            let syncs = store.stats().syncs;
            let t = Instant::now();
            for _ in 0..per {
                store.put(key(), &value).expect("put");
            }
            t1 += t.elapsed().as_nanos() as f64;
            s1 += store.stats().syncs - syncs;
            let syncs = store.stats().syncs;
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        for _ in 0..per / THREADS {
                            store.put(key(), &value).expect("put");
                        }
                    });
                }
            });
            t4 += t.elapsed().as_nanos() as f64;
            s4 += store.stats().syncs - syncs;
        }
        let n = (blocks * per) as f64;
        let what = if preload == 0 {
            "fresh store".to_string()
        } else {
            format!("store of {preload} entries")
        };
        println!(
            "## Group commit ({what}): durable puts, 1 writer vs {THREADS}, alternating blocks\n"
        );
        println!("| writers | µs per put | puts per fdatasync |");
        println!("|---:|---:|---:|");
        println!("| 1 | {:.1} | {:.2} |", t1 / n / 1e3, n / s1 as f64);
        println!("| {THREADS} | {:.1} | {:.2} |", t4 / n / 1e3, n / s4 as f64);
        println!(
            "\nratio, {THREADS} writers ÷ 1 (time per put): **{:.2}** (goal ≤ 0.35; ideal 0.25)\n",
            t4 / t1
        );
        single.push(t1 / n);
    }
    println!(
        "one writer, fresh store ÷ store of 20000 entries (time per durable put): **{:.2}** \
         (goal ≤ 1.1: a small file grows by a reserve, not one entry at a time)\n",
        single[0] / single[1]
    );
}

fn counter(v: Option<&[u8]>) -> u64 {
    v.map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Runs `per` increments on each of `THREADS` threads, thread `t`'s `i`-th
/// on key `(i * THREADS + t) % keys`; returns increments per second.
fn contended(per: usize, keys: usize, inc: impl Fn(&[u8]) + Sync) -> f64 {
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|k| format!("ctr-{k:05}").into_bytes())
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..THREADS {
            let (names, inc) = (&names, &inc);
            s.spawn(move || {
                for i in 0..per {
                    inc(&names[(i * THREADS + th) % keys]);
                }
            });
        }
    });
    (per * THREADS) as f64 / t.elapsed().as_secs_f64()
}

fn cas_contention(dir: &std::path::Path, quick: bool) {
    let per = if quick { 2_000 } else { 20_000 };
    println!("## Compare-and-swap under contention: {THREADS} threads incrementing\n");
    println!(
        "| keys | sfs CAS loop (Never) | sfs `update` (Never) | sled CAS loop | sfs ÷ sled | sfs CAS loop (Always) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for keys in [1usize, 16, 1000] {
        let d = tempfile::tempdir_in(dir).expect("tempdir");
        let store = Options::new()
            .sync(SyncPolicy::Never)
            .open(d.path().join("cas.sfs"))
            .expect("open");
        let sfs_cas = contended(per, keys, |k| {
            loop {
                let seen = store.get(k).expect("get");
                let next = (counter(seen.as_deref()) + 1).to_le_bytes();
                if store
                    .compare_and_swap(k, seen.as_deref(), Some(&next))
                    .expect("cas")
                    .is_ok()
                {
                    break;
                }
            }
        });
        let total: u64 = (0..keys)
            .map(|k| counter(store.get(format!("ctr-{k:05}")).expect("get").as_deref()))
            .sum();
        assert_eq!(total, (per * THREADS) as u64, "lost increments");
        let sfs_update = contended(per, keys, |k| {
            store
                .update(k, |v| Some((counter(v) + 1).to_le_bytes().to_vec()))
                .expect("update");
        });
        drop(store);
        let db = sled::Config::new()
            .path(d.path().join("sled"))
            .open()
            .expect("sled");
        let sled_cas = contended(per, keys, |k| {
            loop {
                let seen = db.get(k).expect("get");
                let next = (counter(seen.as_deref()) + 1).to_le_bytes();
                if db
                    .compare_and_swap(k, seen.as_deref(), Some(&next[..]))
                    .expect("cas")
                    .is_ok()
                {
                    break;
                }
            }
        });
        drop(db);
        let durable = Options::new()
            .sync(SyncPolicy::Always)
            .open(d.path().join("cas-always.sfs"))
            .expect("open");
        let sfs_always = contended(per / 100, keys, |k| {
            loop {
                let seen = durable.get(k).expect("get");
                let next = (counter(seen.as_deref()) + 1).to_le_bytes();
                if durable
                    .compare_and_swap(k, seen.as_deref(), Some(&next))
                    .expect("cas")
                    .is_ok()
                {
                    break;
                }
            }
        });
        println!(
            "| {keys} | {:.0}/s | {:.0}/s | {:.0}/s | **{:.2}** | {:.0}/s |",
            sfs_cas,
            sfs_update,
            sled_cas,
            sfs_cas / sled_cas,
            sfs_always
        );
    }
    println!();
}

/// A durable batch of 100 puts against one durable put, in alternating
/// blocks: in a fresh store (under 1 MiB, so the file grows by each write's
/// exact size) and in one of 20,000 entries (3.4 MB: past 1 MiB, appends go
/// into the growth reserve).
fn durable_batch(dir: &std::path::Path, quick: bool) {
    println!("## Batches\n");
    for preload in [0usize, 20_000] {
        let (_d, store) = durable_store(dir, preload);
        let value = vec![7u8; 100];
        let rounds = if quick { 10 } else { 50 };
        let (mut one, mut hundred) = (0f64, 0f64);
        for k in 0..rounds {
            let t = Instant::now();
            store.put(format!("single-{k:08}"), &value).expect("put");
            one += t.elapsed().as_nanos() as f64;
            let mut batch = sfs::Batch::new();
            for i in 0..100 {
                batch.put(format!("batch-{k:08}-{i:03}"), &value);
            }
            let t = Instant::now();
            store.apply(&batch).expect("apply");
            hundred += t.elapsed().as_nanos() as f64;
        }
        drop(store);
        let what = if preload == 0 {
            "fresh store".to_string()
        } else {
            format!("store of {preload} entries")
        };
        println!(
            "{what}: durable batch of 100 puts: {:.1} µs; one durable put: {:.1} µs; ratio **{:.2}** (goal ≤ 1.5)\n",
            hundred / rounds as f64 / 1e3,
            one / rounds as f64 / 1e3,
            hundred / one
        );
    }
}

/// A write-ahead log's appends: durable batches of 16 entries of 200 bytes
/// under `SyncPolicy::Never`, the oldest 1,000 entries deleted every 64
/// batches once 2,000 are there (a purge), on two stores in alternating
/// blocks of 100: one with `Options::frequent_syncs` (growth by writing
/// zeros, entries written with `pwrite`), one without (`fallocate`).
fn wal_appends(dir: &std::path::Path, quick: bool) {
    println!("## Write-ahead log: durable batches of 16 under `Never`\n");
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let open = |name: &str, frequent: bool| {
        Options::new()
            .sync(SyncPolicy::Never)
            .frequent_syncs(frequent)
            .open(d.path().join(name))
            .expect("open")
    };
    let stores = [open("plain.sfs", false), open("frequent.sfs", true)];
    let value = [7u8; 200];
    let mut next = [0u64; 2];
    let mut times: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let blocks = if quick { 4 } else { 30 };
    for b in 0..2 * blocks {
        let which = b % 2;
        let (store, next) = (&stores[which], &mut next[which]);
        for _ in 0..100 {
            let mut batch = sfs::Batch::new();
            for _ in 0..16 {
                batch.put(format!("entry-{:020}", *next), value);
                *next += 1;
            }
            batch.durable();
            let t = Instant::now();
            store.apply(&batch).expect("append");
            times[which].push(t.elapsed().as_nanos() as u64);
            if *next % 1024 == 0 && *next >= 2000 {
                let mut purge = sfs::Batch::new();
                for i in *next - 2000..*next - 1000 {
                    purge.delete(format!("entry-{i:020}"));
                }
                store.apply(&purge).expect("purge");
            }
        }
    }
    let pct = |v: &mut Vec<u64>, p: usize| {
        v.sort_unstable();
        v[v.len() * p / 100] as f64 / 1e3
    };
    let [plain, frequent] = &mut times;
    let (p50, p90) = (pct(plain, 50), pct(plain, 90));
    let (f50, f90) = (pct(frequent, 50), pct(frequent, 90));
    println!("| store | µs per append, median | p90 |\n|---|---:|---:|");
    println!("| `fallocate` growth, writes through the map | {p50:.1} | {p90:.1} |");
    println!("| `frequent_syncs(true)` | {f50:.1} | {f90:.1} |\n");
    println!(
        "ratio frequent_syncs ÷ without: median **{:.2}**, p90 **{:.2}**\n",
        f50 / p50,
        f90 / p90
    );
}

/// A load of `n` entries as batches of 10,000 against put by put, under
/// `SyncPolicy::Never` (each ending in one sync).
fn batched_load(dir: &std::path::Path, quick: bool) {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let value = vec![7u8; 100];
    let n: usize = if quick { 100_000 } else { 1_000_000 };
    let key = |i: usize| format!("load-{i:09}");
    let never = |name: &str| {
        Options::new()
            .sync(SyncPolicy::Never)
            .open(d.path().join(name))
            .expect("open")
    };
    let s1 = never("puts.sfs");
    let t = Instant::now();
    for i in 0..n {
        s1.put(key(i), &value).expect("put");
    }
    s1.sync().expect("sync");
    let puts = t.elapsed().as_secs_f64();
    drop(s1);
    let s2 = never("batches.sfs");
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let mut batch = sfs::Batch::new();
        for &i in chunk {
            batch.put(key(i), &value);
        }
        s2.apply(&batch).expect("apply");
    }
    s2.sync().expect("sync");
    let batched = t.elapsed().as_secs_f64();
    drop(s2);
    println!(
        "load of {n} entries (SyncPolicy::Never): put by put {:.0} ns/entry, in batches of 10,000 {:.0} ns/entry; ratio **{:.2}**\n",
        puts * 1e9 / n as f64,
        batched * 1e9 / n as f64,
        batched / puts
    );
    let per = |secs: f64| secs * 1e9 / n as f64;
    println!(
        "| engine, API (one per 10,000 entries; one sync at the end unless said) | ns per entry | ÷ sfs put by put |"
    );
    println!("|---|---:|---:|");
    let row = |what: &str, secs: f64| {
        println!("| {what} | {:.0} | {:.2} |", per(secs), secs / puts);
    };
    row("sfs `put` (`Never`)", puts);
    row(
        "sfs `Batch` + `apply` (`Never`: settled by the final sync)",
        batched,
    );
    for (what, secs) in peer_loads(d.path(), n, &value, &key) {
        row(what, secs);
    }
    println!();
}

const BATCH: usize = 10_000;

/// Each peer loads the same `n` entries through its batch or transaction
/// API, one per `BATCH` entries, ending durable: seconds per engine.
fn peer_loads(
    dir: &std::path::Path,
    n: usize,
    value: &[u8],
    key: &dyn Fn(usize) -> String,
) -> Vec<(&'static str, f64)> {
    let chunks = || (0..n).step_by(BATCH).map(move |s| s..(s + BATCH).min(n));
    let mut out = Vec::new();

    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");
    let db = redb::Database::create(dir.join("load.redb")).expect("redb");
    let t = Instant::now();
    for c in chunks() {
        let w = db.begin_write().expect("begin_write");
        {
            let mut tab = w.open_table(TABLE).expect("open_table");
            for i in c {
                tab.insert(key(i).as_bytes(), value).expect("insert");
            }
        }
        w.commit().expect("commit");
    }
    out.push((
        "redb write transaction (each commit syncs)",
        t.elapsed().as_secs_f64(),
    ));
    drop(db);

    let p = dir.join("load.lmdb");
    std::fs::create_dir_all(&p).expect("mkdir");
    // SAFETY: LMDB requires that the file is not opened twice in one
    // process; this process opens it once.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(16 << 30)
            .max_dbs(1)
            .open(&p)
            .expect("open lmdb")
    };
    let t = Instant::now();
    let mut w = env.write_txn().expect("write_txn");
    let lmdb: heed::Database<heed::types::Bytes, heed::types::Bytes> =
        env.create_database(&mut w, None).expect("create_database");
    w.commit().expect("commit");
    for c in chunks() {
        let mut w = env.write_txn().expect("write_txn");
        for i in c {
            lmdb.put(&mut w, key(i).as_bytes(), value).expect("put");
        }
        w.commit().expect("commit");
    }
    out.push((
        "LMDB (heed) write transaction (each commit syncs)",
        t.elapsed().as_secs_f64(),
    ));
    env.prepare_for_closing().wait();

    let db = fjall::Database::builder(dir.join("load.fjall"))
        .open()
        .expect("open fjall");
    let ks = db
        .keyspace("kv", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    let t = Instant::now();
    for c in chunks() {
        let mut b = db.batch();
        for i in c {
            b.insert(&ks, key(i).as_bytes(), value);
        }
        b.commit().expect("commit");
    }
    db.persist(fjall::PersistMode::SyncData).expect("persist");
    out.push(("fjall `WriteBatch`", t.elapsed().as_secs_f64()));
    drop(ks);
    drop(db);

    let db = sled::Config::new()
        .path(dir.join("load.sled"))
        .open()
        .expect("sled");
    let t = Instant::now();
    for c in chunks() {
        let mut b = sled::Batch::default();
        for i in c {
            b.insert(key(i).as_bytes(), value);
        }
        db.apply_batch(b).expect("apply_batch");
    }
    db.flush().expect("flush");
    out.push((
        "sled `Batch` (flush: `sync_file_range`, not fdatasync)",
        t.elapsed().as_secs_f64(),
    ));
    drop(db);

    let mut c = rusqlite::Connection::open(dir.join("load.sqlite")).expect("sqlite");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
    )
    .expect("create");
    let t = Instant::now();
    for ch in chunks() {
        let tx = c.transaction().expect("begin");
        {
            let mut st = tx
                .prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")
                .expect("prepare");
            for i in ch {
                st.execute((key(i).as_bytes(), value)).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    out.push((
        "SQLite transaction (WAL, `synchronous=FULL`: each commit syncs)",
        t.elapsed().as_secs_f64(),
    ));
    drop(c);
    out
}

fn main() {
    let (dir, quick, only) = args();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if run("group") {
        group_commit(&dir, quick);
    }
    if run("batches") || run("batch") {
        durable_batch(&dir, quick);
    }
    if run("batches") || run("load") {
        batched_load(&dir, quick);
    }
    if run("cas") {
        cas_contention(&dir, quick);
    }
    if run("wal") {
        wal_appends(&dir, quick);
    }
}
