//! The space workloads of issue 7: how much disk each engine holds for its
//! live data, after churn and after deletes, before and after its own
//! compaction; and, on sfs alone, get latency while `compact()` runs.
//!
//! Space amplification = bytes of all the engine's files ÷ live bytes, where
//! live bytes = the sum of key and value lengths of the live entries (the
//! same for every engine: the workload is drawn from one fixed seed).
//!
//! - `churn`: load `keys` 16-byte keys with values of uniformly random length
//!   in 64 B..=16 KiB, then `overwrites` random overwrites with new lengths
//!   drawn the same way. Every engine commits every [`BATCH`] writes (one
//!   transaction, batch or sync: sfs `sync()` under `SyncPolicy::Never`,
//!   redb/LMDB/SQLite one write transaction, fjall `persist(SyncData)`, sled
//!   `flush()`). The engine is closed and its files measured ("after churn",
//!   no explicit compaction; background work an engine does on its own counts),
//!   then reopened, compacted its own way, closed and measured again.
//! - `delete`: load `n` 16-byte keys with 100-byte values (one transaction
//!   or batch), delete 90% of them at random, committing every [`BATCH`]
//!   deletes; close and measure; reopen, compact, close, measure.
//! - `latency` (sfs only): get latency, one `Instant` per get, idle and while
//!   `compact()` runs in another thread, on one store in one process.
//!
//! Compaction per engine: sfs `Store::compact()`; redb `Database::compact()`
//! until it reports nothing left; LMDB `mdb_env_copy2(MDB_CP_COMPACT)` (heed
//! `copy_to_path(.., CompactionOption::Enabled)`) into a new file that then
//! replaces the old one; fjall `Keyspace::major_compact()` (public but
//! doc-hidden in fjall 3); SQLite `VACUUM` then `wal_checkpoint(TRUNCATE)`;
//! sled 0.34 has no compaction call (its segment cleaner runs on its own).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

use crate::engines::{
    HeedDb, REDB_TABLE, fjall_open_db, heed_env, sfs_path, sled_open_db, sqlite_conn,
};
use crate::{KEY_LEN, Metrics, disk_bytes};

/// Writes (or deletes) per commit.
pub const BATCH: usize = 1000;
/// Value lengths of the churn workload.
pub const MIN_VALUE: usize = 64;
pub const MAX_VALUE: usize = 16 * 1024;
/// Value length of the delete workload.
pub const DEL_VALUE: usize = 100;
/// Share of keys the delete workload removes, in tenths.
pub const DELETE_TENTHS: usize = 9;
/// Bytes of random data values are sliced from.
const POOL: usize = 16 << 20;

/// The engines that run the space workloads, in table order.
/// `sfs-noauto` is sfs with automatic compaction off, so that what the
/// allocator and an explicit `compact()` do is seen without the background
/// thread.
pub const SPACE_ENGINES: &[&str] = &[
    "sfs",
    "sfs-noauto",
    "redb",
    "heed",
    "fjall",
    "sled",
    "sqlite",
];

/// The key of index `i`: 16 bytes, a bijective mix of `i` (random-looking,
/// no two equal).
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&z.to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

/// Random bytes that values are sliced from (incompressible).
fn pool() -> Vec<u8> {
    let mut p = vec![0u8; POOL + MAX_VALUE];
    SmallRng::seed_from_u64(0x5f5_7007).fill_bytes(&mut p);
    p
}

/// One engine, driven through the few calls the space workloads need. Writes
/// between two `commit`s form one transaction or batch where the engine has
/// them; `commit` makes them durable.
trait Kv {
    fn put(&mut self, k: &[u8], v: &[u8]);
    fn delete(&mut self, k: &[u8]);
    fn commit(&mut self);
    /// The engine's own account of its space while open (sfs only).
    fn report(&self, _m: &mut Metrics, _prefix: &str) {}
}

/// Writes and deletes buffered until `commit`, for the engines whose unit of
/// work is a transaction.
#[derive(Default)]
struct Pending {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Pending {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.ops.push((k.to_vec(), Some(v.to_vec())));
    }
    fn delete(&mut self, k: &[u8]) {
        self.ops.push((k.to_vec(), None));
    }
}

struct SfsKv(sfs::Store);

impl Kv for SfsKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.0.put(k, v).expect("put");
    }
    fn delete(&mut self, k: &[u8]) {
        self.0.delete(k).expect("delete");
    }
    fn commit(&mut self) {
        self.0.sync().expect("sync");
    }
    fn report(&self, m: &mut Metrics, prefix: &str) {
        sfs_stats(&self.0, m, prefix);
    }
}

struct RedbKv(redb::Database, Pending);

impl Kv for RedbKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.1.put(k, v);
    }
    fn delete(&mut self, k: &[u8]) {
        self.1.delete(k);
    }
    fn commit(&mut self) {
        let w = self.0.begin_write().expect("begin_write");
        {
            let mut t = w.open_table(REDB_TABLE).expect("open_table");
            for (k, v) in self.1.ops.drain(..) {
                match v {
                    Some(v) => {
                        t.insert(&k[..], &v[..]).expect("insert");
                    }
                    None => {
                        t.remove(&k[..]).expect("remove");
                    }
                }
            }
        }
        w.commit().expect("commit");
    }
}

struct HeedKv(heed::Env, HeedDb, Pending);

impl Kv for HeedKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.2.put(k, v);
    }
    fn delete(&mut self, k: &[u8]) {
        self.2.delete(k);
    }
    fn commit(&mut self) {
        let mut w = self.0.write_txn().expect("write_txn");
        for (k, v) in self.2.ops.drain(..) {
            match v {
                Some(v) => self.1.put(&mut w, &k, &v).expect("put"),
                None => {
                    self.1.delete(&mut w, &k).expect("delete");
                }
            }
        }
        w.commit().expect("commit");
    }
}

struct FjallKv(fjall::Database, fjall::Keyspace);

impl Kv for FjallKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.1.insert(k, v).expect("insert");
    }
    fn delete(&mut self, k: &[u8]) {
        self.1.remove(k).expect("remove");
    }
    fn commit(&mut self) {
        self.0
            .persist(fjall::PersistMode::SyncData)
            .expect("persist");
    }
}

struct SledKv(sled::Db);

impl Kv for SledKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.0.insert(k, v).expect("insert");
    }
    fn delete(&mut self, k: &[u8]) {
        self.0.remove(k).expect("remove");
    }
    fn commit(&mut self) {
        self.0.flush().expect("flush");
    }
}

struct SqliteKv(rusqlite::Connection, Pending);

impl Kv for SqliteKv {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.1.put(k, v);
    }
    fn delete(&mut self, k: &[u8]) {
        self.1.delete(k);
    }
    fn commit(&mut self) {
        let tx = self.0.transaction().expect("begin");
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO kv (k, v) VALUES (?1, ?2) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                )
                .expect("prepare");
            let mut del = tx
                .prepare_cached("DELETE FROM kv WHERE k = ?1")
                .expect("prepare");
            for (k, v) in self.1.ops.drain(..) {
                match v {
                    Some(v) => put.execute((&k[..], &v[..])).expect("upsert"),
                    None => del.execute([&k[..]]).expect("delete"),
                };
            }
        }
        tx.commit().expect("commit");
    }
}

/// sfs as shipped, except the write path: `SyncPolicy::Never` with a
/// `sync()` per batch (the default `Always` syncs every put). Automatic
/// compaction stays on with its default thresholds, except for `sfs-noauto`.
fn sfs_options_for(engine: &str) -> sfs::Options {
    let o = sfs::Options::new().sync(sfs::SyncPolicy::Never);
    if engine == "sfs-noauto" {
        o.auto_compact(None)
    } else {
        o
    }
}

fn sfs_options() -> sfs::Options {
    sfs_options_for("sfs")
}

/// Opens (creating) `engine`'s store under `dir`.
fn open(engine: &str, dir: &Path) -> Box<dyn Kv> {
    match engine {
        "sfs" | "sfs-noauto" => Box::new(SfsKv(
            sfs_options_for(engine)
                .open(sfs_path(dir))
                .expect("open sfs"),
        )),
        "redb" => Box::new(RedbKv(
            redb::Database::create(dir.join("data.redb")).expect("create redb"),
            Pending::default(),
        )),
        "heed" => {
            let env = heed_env(dir);
            let mut w = env.write_txn().expect("write_txn");
            let db: HeedDb = env.create_database(&mut w, None).expect("create_database");
            w.commit().expect("commit");
            Box::new(HeedKv(env, db, Pending::default()))
        }
        "fjall" => {
            let (db, ks) = fjall_open_db(dir);
            Box::new(FjallKv(db, ks))
        }
        "sled" => Box::new(SledKv(sled_open_db(dir))),
        "sqlite" => {
            let c = sqlite_conn(dir);
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
            )
            .expect("create");
            Box::new(SqliteKv(c, Pending::default()))
        }
        _ => panic!("unknown engine {engine}"),
    }
}

/// Closes an engine: every handle dropped, LMDB's environment closed and
/// waited for.
fn close(kv: Box<dyn Kv>) {
    drop(kv);
}

/// Reopens `engine`'s store and compacts it its own way; returns false for
/// an engine without a compaction call.
fn compact(engine: &str, dir: &Path, m: &mut Metrics, prefix: &str) -> bool {
    // The time of the compaction call alone (not of the open around it).
    let mut secs = 0.0;
    let mut timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        secs = t.elapsed().as_secs_f64();
    };
    let has = match engine {
        "sfs" | "sfs-noauto" => {
            let s = sfs_options()
                .auto_compact(None)
                .open(sfs_path(dir))
                .expect("open sfs");
            m.insert(
                format!("{prefix}sfs_reopened_file_len"),
                s.stats().file_len as f64,
            );
            let mut c = None;
            timed(&mut || c = Some(s.compact().expect("compact")));
            let c = c.expect("compacted");
            m.insert(format!("{prefix}sfs_moved_entries"), c.moved_entries as f64);
            m.insert(format!("{prefix}sfs_moved_bytes"), c.moved_bytes as f64);
            sfs_stats(&s, m, &format!("{prefix}compacted_"));
            s.close().expect("close");
            true
        }
        "redb" => {
            let mut db = redb::Database::open(dir.join("data.redb")).expect("open redb");
            let mut rounds = 0;
            timed(&mut || {
                while db.compact().expect("compact") {
                    rounds += 1;
                }
            });
            m.insert(format!("{prefix}redb_compact_rounds"), f64::from(rounds));
            true
        }
        "heed" => {
            let env = heed_env(dir);
            let out = dir.join("lmdb-compact");
            std::fs::create_dir_all(&out).expect("mkdir");
            timed(&mut || {
                let f = env
                    .copy_to_path(out.join("data.mdb"), heed::CompactionOption::Enabled)
                    .expect("mdb_env_copy2");
                f.sync_all().expect("fsync");
            });
            env.prepare_for_closing().wait();
            std::fs::remove_dir_all(dir.join("lmdb")).expect("remove old");
            std::fs::rename(&out, dir.join("lmdb")).expect("rename");
            true
        }
        "fjall" => {
            let (db, ks) = fjall_open_db(dir);
            timed(&mut || {
                ks.major_compact().expect("major_compact");
                db.persist(fjall::PersistMode::SyncAll).expect("persist");
            });
            drop(ks);
            drop(db);
            true
        }
        "sled" => {
            // No compaction call: open and close, so that what it does on
            // its own at open and close is counted.
            drop(sled_open_db(dir));
            false
        }
        "sqlite" => {
            let c = sqlite_conn(dir);
            timed(&mut || {
                c.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                    .expect("vacuum")
            });
            drop(c);
            true
        }
        _ => panic!("unknown engine {engine}"),
    };
    if has {
        m.insert(format!("{prefix}compact_s"), secs);
    }
    has
}

/// sfs's own account of its file (`Stats`), under `prefix`.
fn sfs_stats(s: &sfs::Store, m: &mut Metrics, prefix: &str) {
    let st = s.stats();
    for (k, v) in [
        ("file_len", st.file_len as f64),
        ("block_bytes", st.live_bytes as f64),
        ("free_bytes", st.free_bytes as f64),
        ("free_blocks", st.free_blocks as f64),
        ("largest_free", st.largest_free_block as f64),
        ("pending_bytes", st.pending_free_bytes as f64),
        ("compactable_bytes", st.compactable_bytes as f64),
        ("fragmentation", st.fragmentation()),
        ("entries", st.entries as f64),
    ] {
        m.insert(format!("{prefix}sfs_{k}"), v);
    }
}

/// Allocated bytes (blocks on disk) of the files under `path`.
fn alloc_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| alloc_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn record_size(dir: &Path, m: &mut Metrics, name: &str, live: u64) {
    let b = disk_bytes(dir);
    m.insert(format!("{name}_bytes"), b as f64);
    m.insert(format!("{name}_alloc_bytes"), alloc_bytes(dir) as f64);
    m.insert(format!("{name}_amp"), b as f64 / live as f64);
}

/// Dispatches one space phase.
pub fn run(engine: &str, phase: &str, dir: &Path, n: usize, count: usize, m: &mut Metrics) {
    match phase {
        "churn" => churn(engine, dir, n, count, m),
        "delete" => delete(engine, dir, n, m),
        "latency" => {
            assert_eq!(engine, "sfs", "the latency phase is sfs's alone");
            latency(dir, n, m)
        }
        _ => panic!("unknown space phase {phase}"),
    }
}

fn churn(engine: &str, dir: &Path, keys: usize, overwrites: usize, m: &mut Metrics) {
    let pool = pool();
    let mut rng = SmallRng::seed_from_u64(0xc4_0125);
    let mut lens = vec![0u32; keys];
    let draw = |rng: &mut SmallRng| {
        let len = rng.random_range(MIN_VALUE..=MAX_VALUE);
        let at = rng.random_range(0..POOL);
        (len, at)
    };
    let mut kv = open(engine, dir);
    let t = Instant::now();
    for (i, l) in lens.iter_mut().enumerate() {
        let (len, at) = draw(&mut rng);
        kv.put(&key(i as u64), &pool[at..at + len]);
        *l = len as u32;
        if (i + 1) % BATCH == 0 {
            kv.commit();
        }
    }
    kv.commit();
    m.insert(
        "churn_load_ns".into(),
        t.elapsed().as_nanos() as f64 / keys as f64,
    );
    let live_loaded: u64 = lens.iter().map(|&l| u64::from(l) + KEY_LEN as u64).sum();
    m.insert(
        "churn_loaded_amp".into(),
        disk_bytes(dir) as f64 / live_loaded as f64,
    );
    // Peak: the files' size after every tenth commit.
    let mut peak = 0u64;
    let mut written = 0u64;
    let t = Instant::now();
    for i in 0..overwrites {
        let k = rng.random_range(0..keys);
        let (len, at) = draw(&mut rng);
        kv.put(&key(k as u64), &pool[at..at + len]);
        lens[k] = len as u32;
        written += (len + KEY_LEN) as u64;
        if (i + 1) % BATCH == 0 {
            kv.commit();
            if (i + 1) % (10 * BATCH) == 0 {
                peak = peak.max(disk_bytes(dir));
            }
        }
    }
    kv.commit();
    let churn_s = t.elapsed().as_secs_f64();
    m.insert("churn_ns".into(), churn_s * 1e9 / overwrites.max(1) as f64);
    m.insert("churn_written_bytes".into(), written as f64);
    let live: u64 = lens.iter().map(|&l| u64::from(l) + KEY_LEN as u64).sum();
    m.insert("churn_live_bytes".into(), live as f64);
    peak = peak.max(disk_bytes(dir));
    m.insert("churn_peak_amp".into(), peak as f64 / live as f64);
    kv.report(m, "churn_open_");
    close(kv);
    sizes_and_compaction(engine, dir, m, "churn_", live);
}

fn delete(engine: &str, dir: &Path, n: usize, m: &mut Metrics) {
    let pool = pool();
    let mut rng = SmallRng::seed_from_u64(0xde1_e7e);
    let mut kv = open(engine, dir);
    // The load: one transaction or batch, one commit at its end.
    for i in 0..n {
        let at = rng.random_range(0..POOL);
        kv.put(&key(i as u64), &pool[at..at + DEL_VALUE]);
    }
    kv.commit();
    let live_loaded = (n * (KEY_LEN + DEL_VALUE)) as u64;
    m.insert(
        "del_loaded_amp".into(),
        disk_bytes(dir) as f64 / live_loaded as f64,
    );
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    let gone = n * DELETE_TENTHS / 10;
    let t = Instant::now();
    for (j, &i) in order[..gone].iter().enumerate() {
        kv.delete(&key(u64::from(i)));
        if (j + 1) % BATCH == 0 {
            kv.commit();
        }
    }
    kv.commit();
    kv.report(m, "del_open_");
    m.insert(
        "del_ns".into(),
        t.elapsed().as_nanos() as f64 / gone.max(1) as f64,
    );
    close(kv);
    let live = ((n - gone) * (KEY_LEN + DEL_VALUE)) as u64;
    m.insert("del_live_bytes".into(), live as f64);
    sizes_and_compaction(engine, dir, m, "del_", live);
}

/// After a workload, with the engine closed: the file sizes (metrics
/// `{prefix}after_*`), sfs's own breakdown of its file, then the engine's
/// compaction and the sizes after it (`{prefix}compacted_*`).
fn sizes_and_compaction(engine: &str, dir: &Path, m: &mut Metrics, prefix: &str, live: u64) {
    record_size(dir, m, &format!("{prefix}after"), live);
    if engine.starts_with("sfs") {
        let s = sfs_options()
            .auto_compact(None)
            .read_only(true)
            .open(sfs_path(dir))
            .expect("open sfs");
        sfs_stats(&s, m, prefix);
        drop(s);
    }
    if compact(engine, dir, m, prefix) {
        record_size(dir, m, &format!("{prefix}compacted"), live);
    }
}

/// Sorted latencies (ns) → percentile `p` (0..=100).
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64
}

fn summarise(mut samples: Vec<u64>, m: &mut Metrics, name: &str) {
    samples.sort_unstable();
    m.insert(format!("{name}_count"), samples.len() as f64);
    for (label, limit) in [("over_100us", 100_000), ("over_1ms", 1_000_000)] {
        let over = samples.len() - samples.partition_point(|&ns| ns <= limit);
        m.insert(format!("{name}_{label}"), over as f64);
    }
    for (label, p) in [
        ("p50", 50.0),
        ("p90", 90.0),
        ("p99", 99.0),
        ("p999", 99.9),
        ("max", 100.0),
    ] {
        m.insert(format!("{name}_{label}_ns"), pct(&samples, p));
    }
}

/// Get latency of sfs, idle and while `compact()` runs in another thread.
///
/// The store: `n` 16-byte keys with 100-byte values, then every other key (in
/// a random order) deleted, so compaction has half the file to close up.
/// Idle: gets of random live keys, each timed on its own, for as long as
/// the compaction later takes (at least 200,000 gets). During: the same gets
/// from the main thread while another thread runs `compact()`. After: idle
/// again, on the compacted file. One get in flight at a time; the 2-core
/// machine runs the compaction on the other core.
fn latency(dir: &Path, n: usize, m: &mut Metrics) {
    let pool = pool();
    let mut rng = SmallRng::seed_from_u64(0x1a7_e11c);
    let store = sfs_options()
        .auto_compact(None)
        .open(sfs_path(dir))
        .expect("open sfs");
    for i in 0..n {
        let at = rng.random_range(0..POOL);
        store
            .put(key(i as u64), &pool[at..at + DEL_VALUE])
            .expect("put");
    }
    let mut gone: Vec<u32> = (0..n as u32).filter(|i| i % 2 == 1).collect();
    gone.shuffle(&mut rng);
    for &i in &gone {
        store.delete(key(u64::from(i))).expect("delete");
    }
    store.sync().expect("sync");
    let live: Vec<[u8; KEY_LEN]> = (0..n as u64).step_by(2).map(key).collect();
    let mut pick = SmallRng::seed_from_u64(7);
    let mut one_get = |store: &sfs::Store| {
        let k = &live[pick.random_range(0..live.len())];
        let t = Instant::now();
        let v = store.get(k).expect("get");
        let ns = t.elapsed().as_nanos() as u64;
        black_box(v.expect("a live key"));
        ns
    };
    // Warm the page cache and the index.
    for _ in 0..100_000 {
        one_get(&store);
    }
    let idle_for =
        |store: &sfs::Store, at_least: Duration, f: &mut dyn FnMut(&sfs::Store) -> u64| {
            let mut v = Vec::with_capacity(1 << 20);
            let t = Instant::now();
            while v.len() < 200_000 || t.elapsed() < at_least {
                v.push(f(store));
            }
            v
        };
    // A first idle window of fixed length; the compaction's own length is
    // not known yet.
    let cs0 = thread_switches();
    let tlb0 = tlb_shootdowns();
    let idle = idle_for(&store, Duration::from_secs(2), &mut one_get);
    let cs1 = thread_switches();
    let tlb1 = tlb_shootdowns();
    let before = store.stats();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut during = Vec::with_capacity(1 << 22);
    // When (seconds into the compaction) the slow gets happened.
    let mut slow: Vec<(f64, u64)> = Vec::new();
    let t = Instant::now();
    let c = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let c = store.compact().expect("compact");
            done.store(true, std::sync::atomic::Ordering::Release);
            c
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let ns = one_get(&store);
            if ns > 1_000_000 {
                slow.push((t.elapsed().as_secs_f64(), ns));
            }
            during.push(ns);
        }
        h.join().expect("compaction thread")
    });
    let compact_s = t.elapsed().as_secs_f64();
    let cs2 = thread_switches();
    let tlb2 = tlb_shootdowns();
    // TLB shootdowns, machine-wide (other tenants' too): a sync of pages
    // written through the map write-protects them again, which interrupts
    // every core the process runs on.
    m.insert("lat_idle_tlb".into(), (tlb1 - tlb0) as f64);
    m.insert("lat_during_tlb".into(), (tlb2 - tlb1) as f64);
    // Voluntary switches of the reading thread: it slept (a lock it waited
    // for, a page it faulted in); involuntary: another thread took its core.
    m.insert("lat_idle_vcsw".into(), (cs1.0 - cs0.0) as f64);
    m.insert("lat_idle_ivcsw".into(), (cs1.1 - cs0.1) as f64);
    m.insert("lat_during_vcsw".into(), (cs2.0 - cs1.0) as f64);
    m.insert("lat_during_ivcsw".into(), (cs2.1 - cs1.1) as f64);
    slow.sort_by_key(|p| std::cmp::Reverse(p.1));
    if let Some(&(at, _)) = slow.first() {
        m.insert("lat_during_max_at_s".into(), at);
        eprintln!(
            "{} gets over 1 ms during compaction ({compact_s:.2} s), the slowest: {}",
            slow.len(),
            slow.iter()
                .take(10)
                .map(|(at, ns)| format!("{:.1} ms at {at:.2} s", *ns as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let after = idle_for(&store, Duration::from_secs(2), &mut one_get);
    // Control: the same gets while another thread only burns CPU (no store
    // access, no I/O) for as long as the compaction took, to tell what
    // sharing the two cores costs from what the compaction itself does.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut busy = Vec::with_capacity(1 << 22);
    let cs3 = thread_switches();
    let tlb3 = tlb_shootdowns();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..1000 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                }
                black_box(x);
            }
        });
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < compact_s.max(1.0) {
            busy.push(one_get(&store));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let cs4 = thread_switches();
    m.insert("lat_busy_tlb".into(), (tlb_shootdowns() - tlb3) as f64);
    m.insert("lat_busy_vcsw".into(), (cs4.0 - cs3.0) as f64);
    m.insert("lat_busy_ivcsw".into(), (cs4.1 - cs3.1) as f64);
    summarise(busy, m, "lat_busy");
    m.insert("lat_n".into(), n as f64);
    m.insert("lat_compact_s".into(), compact_s);
    m.insert("lat_moved_entries".into(), c.moved_entries as f64);
    m.insert("lat_file_before".into(), before.file_len as f64);
    m.insert("lat_file_after".into(), c.file_len_after as f64);
    summarise(idle, m, "lat_idle");
    summarise(during, m, "lat_during");
    summarise(after, m, "lat_after");
    store.close().expect("close");
}

/// (voluntary, involuntary) context switches of the calling thread so far.
fn thread_switches() -> (i64, i64) {
    // SAFETY: getrusage writes one `rusage` it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    (u.ru_nvcsw, u.ru_nivcsw)
}

/// TLB shootdown interrupts so far, all cores (`/proc/interrupts`).
fn tlb_shootdowns() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.trim_start().starts_with("TLB:"))
        .map_or(0, |l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
                .sum()
        })
}
