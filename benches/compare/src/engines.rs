//! The engines: sfs and its peers, each driven the fastest way it offers.
//!
//! `work`: load every key (no sync per write; one transaction or batch where
//! the engine has them; one sync at the end, counted in the load), read every
//! key back in random order (as an owned copy, then borrowed where the engine
//! can lend its bytes), then reopen in the engine's durable mode and do
//! `durable` writes one at a time, each durable before the next, then the same
//! number from `WRITERS` threads. `open`: open the file `work` left behind
//! and read one key.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use crate::{Data, KEY_LEN, Metrics, WRITERS, disk_bytes, proc_status_bytes, time_per_op};

/// Dispatches to one engine's phase.
pub fn run(engine: &str, phase: &str, dir: &Path, data: &Data, m: &mut Metrics) {
    match (engine, phase) {
        ("sfs", "work") => sfs_work(dir, data, m),
        ("sfs", "open") => sfs_open(dir, data, m),
        ("redb", "work") => redb_work(dir, data, m),
        ("redb", "open") => redb_open(dir, data, m),
        ("heed", "work") => heed_work(dir, data, m),
        ("heed", "open") => heed_open(dir, data, m),
        ("fjall", "work") => fjall_work(dir, data, m),
        ("fjall", "open") => fjall_open(dir, data, m),
        ("sled", "work") => sled_work(dir, data, m),
        ("sled", "open") => sled_open(dir, data, m),
        ("sqlite", "work") => sqlite_work(dir, data, m),
        ("sqlite", "open") => sqlite_open(dir, data, m),
        _ => panic!("unknown engine/phase {engine}/{phase}"),
    }
}

/// Consumes a borrowed value the way a caller would: looks at its bytes.
#[inline]
pub fn touch(v: &[u8]) -> usize {
    black_box(v.len() + usize::from(v[0]) + usize::from(v[v.len() - 1]))
}

/// A borrowed read: looks up a key and consumes its bytes in place.
pub type BorrowedRead<'a> = &'a dyn Fn(&[u8]) -> usize;

/// Reads every key in random order: owned copies, then borrowed values.
/// Each is done twice and the faster pass counts: the machine is shared, and
/// the slower pass is the one another tenant disturbed more.
pub fn reads(
    data: &Data,
    m: &mut Metrics,
    owned: impl Fn(&[u8]) -> Option<Vec<u8>>,
    borrowed: Option<BorrowedRead<'_>>,
) {
    let n = data.read_order.len();
    let pass = || {
        time_per_op(n, || {
            for &i in &data.read_order {
                let v = owned(&data.keys[i as usize]).expect("a loaded key");
                assert_eq!(v.len(), crate::VALUE_LEN);
                black_box(v);
            }
        })
    };
    m.insert("get_ns".into(), pass().min(pass()));
    if let Some(b) = borrowed {
        let pass = || {
            time_per_op(n, || {
                for &i in &data.read_order {
                    assert!(b(&data.keys[i as usize]) > 0);
                }
            })
        };
        m.insert("getref_ns".into(), pass().min(pass()));
    }
}

/// Durable writes: `durable` one after the other, then as many again from
/// `WRITERS` threads. `writer` makes one writer (a closure that writes one
/// key durably) per thread.
pub fn durables<W: FnMut(&[u8], &[u8])>(
    data: &Data,
    m: &mut Metrics,
    writer: impl Fn() -> W + Sync,
) {
    durables_as(data, m, "durable", writer)
}

/// [`durables`], reporting `{name}_ns` and `{name}4_ns`.
pub fn durables_as<W: FnMut(&[u8], &[u8])>(
    data: &Data,
    m: &mut Metrics,
    name: &str,
    writer: impl Fn() -> W + Sync,
) {
    let d = data.durable_keys.len() / 2;
    let mut w = writer();
    let ns = time_per_op(d, || {
        for i in 0..d {
            w(&data.durable_keys[i], data.durable_value(i));
        }
    });
    drop(w);
    m.insert(format!("{name}_ns"), ns);
    let per = d / WRITERS;
    let ns = time_per_op(per * WRITERS, || {
        std::thread::scope(|s| {
            for t in 0..WRITERS {
                let writer = &writer;
                s.spawn(move || {
                    let mut w = writer();
                    for i in d + t * per..d + (t + 1) * per {
                        w(&data.durable_keys[i], data.durable_value(i));
                    }
                });
            }
        });
    });
    m.insert(format!("{name}4_ns"), ns);
}

/// Times `f` (an open and one read) and the anonymous memory it leaves.
pub fn measure_open<T>(data: &Data, m: &mut Metrics, f: impl FnOnce() -> T) -> T {
    let before = proc_status_bytes("RssAnon");
    let t = Instant::now();
    let h = f();
    m.insert("open_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    let after = proc_status_bytes("RssAnon");
    m.insert(
        "open_rss_anon_per_entry".into(),
        after.saturating_sub(before) as f64 / data.keys.len() as f64,
    );
    h
}

/// Reads a file once, sequentially, in 1 MiB reads: the open floor.
pub fn read_once(path: &Path) -> f64 {
    use std::io::Read;
    let t = Instant::now();
    let mut f = std::fs::File::open(path).expect("open for read");
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = 0usize;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(usize::from(buf[n - 1]));
    }
    black_box(sum);
    t.elapsed().as_secs_f64() * 1e3
}

// ---- sfs --------------------------------------------------------------------

pub(crate) fn sfs_path(dir: &Path) -> std::path::PathBuf {
    dir.join("data.sfs")
}

fn sfs_work(dir: &Path, data: &Data, m: &mut Metrics) {
    use sfs::{Options, SyncPolicy};
    let path = sfs_path(dir);
    let store = Options::new()
        .sync(SyncPolicy::Never)
        .open(&path)
        .expect("open sfs");
    let ns = time_per_op(data.keys.len(), || {
        for (i, k) in data.keys.iter().enumerate() {
            store.put(k, data.value(i)).expect("put");
        }
        store.sync().expect("sync");
    });
    m.insert("load_ns".into(), ns);
    let st = store.stats();
    m.insert("index_bytes".into(), st.index_bytes as f64);
    m.insert(
        "index_bytes_per_entry".into(),
        st.index_bytes as f64 / st.entries as f64 - KEY_LEN as f64,
    );
    reads(
        data,
        m,
        |k| store.get(k).expect("get"),
        Some(&|k: &[u8]| touch(&store.get_ref(k).expect("get_ref").expect("present"))),
    );
    store.close().expect("close");
    let store = Options::new()
        .sync(SyncPolicy::Always)
        .open(&path)
        .expect("reopen sfs");
    durables(data, m, || {
        |k: &[u8], v: &[u8]| store.put(k, v).expect("put")
    });
    sfs_paired_durable(&store, dir, data, m);
    store.close().expect("close");
    std::fs::remove_file(dir.join("floor.records")).expect("remove floor file");
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

/// Durable puts of sfs and the pwrite+fdatasync floors, interleaved in
/// fifty blocks (half the durable count in all, per kind), so that all of them see the same
/// disk: this disk's fdatasync latency drifts severalfold within minutes, which
/// makes ratios between separate processes unreliable. Blocks, in turn: sfs
/// from 1 writer, pwrite+fdatasync appending, pwrite+fdatasync in place (over
/// records written and synced before), sfs from `WRITERS` writers.
fn sfs_paired_durable(store: &sfs::Store, dir: &Path, data: &Data, m: &mut Metrics) {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    const REC: usize = KEY_LEN + crate::VALUE_LEN;
    let d = data.durable_keys.len() / 2;
    let blocks = 50usize;
    let per = (d / 2 / blocks).max(WRITERS);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("floor.records"))
        .expect("floor file");
    let record = |i: usize| {
        let mut r = [0u8; REC];
        r[..KEY_LEN].copy_from_slice(&data.durable_keys[i % data.durable_keys.len()]);
        r[KEY_LEN..].copy_from_slice(data.durable_value(i));
        r
    };
    for i in 0..per {
        f.write_all_at(&record(i), (i * REC) as u64)
            .expect("pwrite");
    }
    f.sync_all().expect("fsync");
    // New keys: the durable keys with their last byte flipped.
    let key = |i: usize| {
        let mut k = data.durable_keys[i % data.durable_keys.len()];
        k[KEY_LEN - 1] ^= 0x5a;
        k[0] ^= (i / data.durable_keys.len()) as u8;
        k
    };
    let mut times = [0f64; 4];
    let append_at = AtomicU64::new((per * REC) as u64);
    let mut next_key = 0usize;
    for _ in 0..blocks {
        let t = Instant::now();
        for _ in 0..per {
            store
                .put(key(next_key), data.durable_value(next_key))
                .expect("put");
            next_key += 1;
        }
        times[0] += t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        for i in 0..per {
            let at = append_at.fetch_add(REC as u64, Ordering::Relaxed);
            f.write_all_at(&record(i), at).expect("pwrite");
            f.sync_data().expect("fdatasync");
        }
        times[1] += t.elapsed().as_nanos() as f64;
        let t = Instant::now();
        for i in 0..per {
            f.write_all_at(&record(i + 1), (i * REC) as u64)
                .expect("pwrite");
            f.sync_data().expect("fdatasync");
        }
        times[2] += t.elapsed().as_nanos() as f64;
        let base = next_key;
        let t = Instant::now();
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let key = &key;
                s.spawn(move || {
                    for i in (base + w..base + per).step_by(WRITERS) {
                        store.put(key(i), data.durable_value(i)).expect("put");
                    }
                });
            }
        });
        times[3] += t.elapsed().as_nanos() as f64;
        next_key += per;
    }
    let ops = (blocks * per) as f64;
    for (name, t) in [
        "paired_sfs_ns",
        "paired_append_ns",
        "paired_inplace_ns",
        "paired_sfs4_ns",
    ]
    .iter()
    .zip(times)
    {
        m.insert((*name).into(), t / ops);
    }
}

fn sfs_open(dir: &Path, data: &Data, m: &mut Metrics) {
    use sfs::{Options, SyncPolicy};
    let path = sfs_path(dir);
    m.insert("readonce_ms".into(), read_once(&path));
    let store = measure_open(data, m, || {
        let s = Options::new()
            .sync(SyncPolicy::Never)
            .open(&path)
            .expect("open sfs");
        assert!(s.get(data.keys[0]).expect("get").is_some());
        s
    });
    let st = store.stats();
    m.insert(
        "open_index_bytes_per_entry".into(),
        st.index_bytes as f64 / st.entries as f64 - KEY_LEN as f64,
    );
    m.insert("open_entries".into(), st.entries as f64);
    store.close().expect("close");
}

// ---- redb -------------------------------------------------------------------

pub(crate) const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

fn redb_work(dir: &Path, data: &Data, m: &mut Metrics) {
    use redb::{Database, ReadableDatabase};
    let db = Database::create(dir.join("data.redb")).expect("create redb");
    // One write transaction, committed with the default (immediate)
    // durability: one sync at the end.
    let ns = time_per_op(data.keys.len(), || {
        let w = db.begin_write().expect("begin_write");
        {
            let mut t = w.open_table(REDB_TABLE).expect("open_table");
            for (i, k) in data.keys.iter().enumerate() {
                t.insert(&k[..], data.value(i)).expect("insert");
            }
        }
        w.commit().expect("commit");
    });
    m.insert("load_ns".into(), ns);
    {
        let r = db.begin_read().expect("begin_read");
        let t = r.open_table(REDB_TABLE).expect("open_table");
        reads(
            data,
            m,
            |k| t.get(k).expect("get").map(|g| g.value().to_vec()),
            Some(&|k: &[u8]| touch(t.get(k).expect("get").expect("present").value())),
        );
    }
    durables(data, m, || {
        |k: &[u8], v: &[u8]| {
            let w = db.begin_write().expect("begin_write");
            w.open_table(REDB_TABLE)
                .expect("open_table")
                .insert(k, v)
                .expect("insert");
            w.commit().expect("commit");
        }
    });
    drop(db);
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

fn redb_open(dir: &Path, data: &Data, m: &mut Metrics) {
    use redb::{Database, ReadableDatabase};
    let db = measure_open(data, m, || {
        let db = Database::open(dir.join("data.redb")).expect("open redb");
        {
            let r = db.begin_read().expect("begin_read");
            let t = r.open_table(REDB_TABLE).expect("open_table");
            assert!(t.get(&data.keys[0][..]).expect("get").is_some());
        }
        db
    });
    drop(db);
}

// ---- heed (LMDB) ------------------------------------------------------------

pub(crate) type HeedDb = heed::Database<heed::types::Bytes, heed::types::Bytes>;

pub(crate) fn heed_env(dir: &Path) -> heed::Env {
    let p = dir.join("lmdb");
    std::fs::create_dir_all(&p).expect("mkdir");
    // SAFETY: LMDB requires that the file is not opened twice
    // in one process; this process opens it once.
    unsafe {
        heed::EnvOpenOptions::new()
            .map_size(16 << 30)
            .max_dbs(1)
            .open(p)
            .expect("open lmdb")
    }
}

fn heed_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let env = heed_env(dir);
    let mut db: Option<HeedDb> = None;
    let ns = time_per_op(data.keys.len(), || {
        let mut w = env.write_txn().expect("write_txn");
        let d: HeedDb = env.create_database(&mut w, None).expect("create_database");
        for (i, k) in data.keys.iter().enumerate() {
            d.put(&mut w, k, data.value(i)).expect("put");
        }
        w.commit().expect("commit");
        db = Some(d);
    });
    let db = db.expect("db");
    m.insert("load_ns".into(), ns);
    {
        let r = env.read_txn().expect("read_txn");
        reads(
            data,
            m,
            |k| db.get(&r, k).expect("get").map(<[u8]>::to_vec),
            Some(&|k: &[u8]| touch(db.get(&r, k).expect("get").expect("present"))),
        );
    }
    durables(data, m, || {
        |k: &[u8], v: &[u8]| {
            let mut w = env.write_txn().expect("write_txn");
            db.put(&mut w, k, v).expect("put");
            w.commit().expect("commit");
        }
    });
    env.prepare_for_closing().wait();
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

fn heed_open(dir: &Path, data: &Data, m: &mut Metrics) {
    let env = measure_open(data, m, || {
        let env = heed_env(dir);
        {
            let r = env.read_txn().expect("read_txn");
            let db: HeedDb = env.open_database(&r, None).expect("open").expect("db");
            assert!(db.get(&r, &data.keys[0]).expect("get").is_some());
        }
        env
    });
    env.prepare_for_closing().wait();
}

// ---- fjall ------------------------------------------------------------------

pub(crate) fn fjall_open_db(dir: &Path) -> (fjall::Database, fjall::Keyspace) {
    let db = fjall::Database::builder(dir.join("fjall"))
        .open()
        .expect("open fjall");
    let ks = db
        .keyspace("kv", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    (db, ks)
}

fn fjall_work(dir: &Path, data: &Data, m: &mut Metrics) {
    use fjall::PersistMode;
    let (db, ks) = fjall_open_db(dir);
    // One write batch (fjall's atomic unit), then one fdatasync of the journal.
    let ns = time_per_op(data.keys.len(), || {
        let mut b = db.batch();
        for (i, k) in data.keys.iter().enumerate() {
            b.insert(&ks, &k[..], data.value(i));
        }
        b.commit().expect("commit");
        db.persist(PersistMode::SyncData).expect("persist");
    });
    m.insert("load_ns".into(), ns);
    reads(
        data,
        m,
        |k| ks.get(k).expect("get").map(|v| v.to_vec()),
        Some(&|k: &[u8]| touch(&ks.get(k).expect("get").expect("present"))),
    );
    durables(data, m, || {
        |k: &[u8], v: &[u8]| {
            ks.insert(k, v).expect("insert");
            db.persist(PersistMode::SyncData).expect("persist");
        }
    });
    drop(ks);
    drop(db);
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

fn fjall_open(dir: &Path, data: &Data, m: &mut Metrics) {
    let h = measure_open(data, m, || {
        let (db, ks) = fjall_open_db(dir);
        assert!(ks.get(data.keys[0]).expect("get").is_some());
        (db, ks)
    });
    drop(h);
}

// ---- sled -------------------------------------------------------------------

pub(crate) fn sled_open_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir.join("sled"))
        .open()
        .expect("open sled")
}

fn sled_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let db = sled_open_db(dir);
    // Plain inserts: sled's batches and transactions are slower for a bulk
    // load of this size. One flush at the end.
    let ns = time_per_op(data.keys.len(), || {
        for (i, k) in data.keys.iter().enumerate() {
            db.insert(k, data.value(i)).expect("insert");
        }
        db.flush().expect("flush");
    });
    m.insert("load_ns".into(), ns);
    reads(
        data,
        m,
        |k| db.get(k).expect("get").map(|v| v.to_vec()),
        Some(&|k: &[u8]| touch(&db.get(k).expect("get").expect("present"))),
    );
    // sled 0.34's flush ends in sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER),
    // not fsync/fdatasync: it neither flushes the drive's cache nor the file's
    // metadata. Its "durable" numbers are therefore not a real durable mode.
    durables(data, m, || {
        |k: &[u8], v: &[u8]| {
            db.insert(k, v).expect("insert");
            db.flush().expect("flush");
        }
    });
    drop(db);
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

fn sled_open(dir: &Path, data: &Data, m: &mut Metrics) {
    let db = measure_open(data, m, || {
        let db = sled_open_db(dir);
        assert!(db.get(data.keys[0]).expect("get").is_some());
        db
    });
    drop(db);
}

// ---- SQLite -----------------------------------------------------------------

pub(crate) fn sqlite_conn(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("data.sqlite")).expect("open sqlite");
    // WAL with synchronous=FULL: every commit fsyncs the WAL (durable).
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         PRAGMA cache_size=-262144; PRAGMA mmap_size=1073741824;",
    )
    .expect("pragmas");
    c.busy_timeout(std::time::Duration::from_secs(60))
        .expect("busy_timeout");
    c
}

fn sqlite_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let mut c = sqlite_conn(dir);
    c.execute_batch("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        .expect("create");
    let ns = time_per_op(data.keys.len(), || {
        let tx = c.transaction().expect("begin");
        {
            let mut st = tx
                .prepare("INSERT INTO kv (k, v) VALUES (?1, ?2)")
                .expect("prepare");
            for (i, k) in data.keys.iter().enumerate() {
                st.execute((&k[..], data.value(i))).expect("insert");
            }
        }
        tx.commit().expect("commit");
    });
    m.insert("load_ns".into(), ns);
    {
        let q = "SELECT v FROM kv WHERE k = ?1";
        reads(
            data,
            m,
            |k| {
                let mut st = c.prepare_cached(q).expect("prepare");
                st.query_row([k], |r| r.get::<_, Vec<u8>>(0)).ok()
            },
            Some(&|k: &[u8]| {
                let mut st = c.prepare_cached(q).expect("prepare");
                st.query_row([k], |r| Ok(touch(r.get_ref(0)?.as_blob()?)))
                    .expect("present")
            }),
        );
    }
    drop(c);
    durables(data, m, || {
        let c = sqlite_conn(dir);
        move |k: &[u8], v: &[u8]| {
            let mut st = c
                .prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")
                .expect("prepare");
            st.execute((k, v)).expect("insert");
        }
    });
    // Checkpoint the WAL into the database file before measuring its size.
    let c = sqlite_conn(dir);
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(c);
    m.insert("file_bytes".into(), disk_bytes(dir) as f64);
}

fn sqlite_open(dir: &Path, data: &Data, m: &mut Metrics) {
    let c = measure_open(data, m, || {
        let c = sqlite_conn(dir);
        let v: Vec<u8> = c
            .query_row("SELECT v FROM kv WHERE k = ?1", [&data.keys[0][..]], |r| {
                r.get(0)
            })
            .expect("get");
        assert_eq!(v.len(), crate::VALUE_LEN);
        c
    });
    drop(c);
}
