//! Raw floors: what the same workload costs with nothing but a hash map, or
//! nothing but system calls on one file. A record is the key followed by the
//! value (116 bytes), record `i` at offset `i * 116`.
//!
//! - `hashmap`: `std::collections::HashMap<Vec<u8>, Vec<u8>>` (SipHash-1-3,
//!   the standard library's default hasher).
//! - `hashmap-fold`: the same map with foldhash (the hasher sfs uses).
//! - `pwrite`: one `pwrite` per record, then one `fdatasync`; reads are one
//!   `pread` at the record's known offset (no lookup). Durable: one `pwrite`
//!   and one `fdatasync` per record, from 1 and from 4 threads, appending
//!   (the file grows: fdatasync commits its new length too) and in place
//!   (over records already written and synced: data only, the strictest).
//! - `mmap`: the records copied into a shared map of the file, then `msync`;
//!   reads copy from the map.
//! - `index+pwrite`: a foldhash `HashMap<Vec<u8>, u64>` of offsets plus
//!   `pwrite` (load) and `pread` (get; borrowed: a slice of a map). Open:
//!   read the file once and rebuild the index.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::engines::{durables, durables_as, measure_open, read_once, reads, touch};
use crate::{Data, KEY_LEN, Metrics, VALUE_LEN, disk_bytes, time_per_op};

const REC: usize = KEY_LEN + VALUE_LEN;

type Fold = foldhash::fast::RandomState;

/// Dispatches to one floor's phase.
pub fn run(engine: &str, phase: &str, dir: &Path, data: &Data, m: &mut Metrics) {
    match (engine, phase) {
        ("hashmap", "work") => hashmap_work::<std::hash::RandomState>(data, m),
        ("hashmap-fold", "work") => hashmap_work::<Fold>(data, m),
        ("pwrite", "work") => pwrite_work(dir, data, m),
        ("pwrite", "open") => {
            m.insert("readonce_ms".into(), read_once(&dir.join("records")));
        }
        ("mmap", "work") => mmap_work(dir, data, m),
        ("index+pwrite", "work") => index_work(dir, data, m),
        ("index+pwrite", "open") => index_open(dir, data, m),
        (_, "open") => {}
        _ => panic!("unknown floor/phase {engine}/{phase}"),
    }
}

fn record(data: &Data, i: usize) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..KEY_LEN].copy_from_slice(&data.keys[i]);
    r[KEY_LEN..].copy_from_slice(data.value(i));
    r
}

fn hashmap_work<S: std::hash::BuildHasher + Default>(data: &Data, m: &mut Metrics) {
    let mut map: HashMap<Vec<u8>, Vec<u8>, S> = HashMap::default();
    let ns = time_per_op(data.keys.len(), || {
        for (i, k) in data.keys.iter().enumerate() {
            map.insert(k.to_vec(), data.value(i).to_vec());
        }
    });
    m.insert("load_ns".into(), ns);
    reads(
        data,
        m,
        |k| map.get(k).cloned(),
        Some(&|k: &[u8]| touch(map.get(k).expect("present"))),
    );
    black_box(&map);
}

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create")
}

fn pwrite_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let path = dir.join("records");
    let f = create(&path);
    let n = data.keys.len();
    let ns = time_per_op(n, || {
        for i in 0..n {
            f.write_all_at(&record(data, i), (i * REC) as u64)
                .expect("pwrite");
        }
        f.sync_data().expect("fdatasync");
    });
    m.insert("load_ns".into(), ns);
    // Reads at known offsets, in the same random order as everyone else.
    let pass = || {
        time_per_op(n, || {
            for &i in &data.read_order {
                let mut v = vec![0u8; VALUE_LEN];
                f.read_exact_at(&mut v, (i as usize * REC + KEY_LEN) as u64)
                    .expect("pread");
                black_box(v);
            }
        })
    };
    m.insert("get_ns".into(), pass().min(pass()));
    let pass = || {
        time_per_op(n, || {
            let mut v = [0u8; VALUE_LEN];
            for &i in &data.read_order {
                f.read_exact_at(&mut v, (i as usize * REC + KEY_LEN) as u64)
                    .expect("pread");
                touch(&v);
            }
        })
    };
    m.insert("getref_ns".into(), pass().min(pass()));
    // Durable appends: each record written and fdatasync'ed before the next.
    let next = std::sync::atomic::AtomicU64::new((n * REC) as u64);
    let f = &f;
    let next = &next;
    durables(data, m, || {
        move |k: &[u8], v: &[u8]| {
            let mut r = [0u8; REC];
            r[..KEY_LEN].copy_from_slice(k);
            r[KEY_LEN..].copy_from_slice(v);
            let at = next.fetch_add(REC as u64, std::sync::atomic::Ordering::Relaxed);
            f.write_all_at(&r, at).expect("pwrite");
            f.sync_data().expect("fdatasync");
        }
    });
    m.insert("file_bytes".into(), disk_bytes(&path) as f64);
    // The strictest floor: overwrite records in place (space written and
    // synced before), so fdatasync has no metadata to commit.
    let slot = std::sync::atomic::AtomicU64::new(0);
    let slot = &slot;
    durables_as(data, m, "durable_inplace", || {
        move |k: &[u8], v: &[u8]| {
            let mut r = [0u8; REC];
            r[..KEY_LEN].copy_from_slice(k);
            r[KEY_LEN..].copy_from_slice(v);
            let i = slot.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f.write_all_at(&r, i * REC as u64).expect("pwrite");
            f.sync_data().expect("fdatasync");
        }
    });
}

fn mmap_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let path = dir.join("records");
    let f = create(&path);
    let n = data.keys.len();
    let ns = time_per_op(n, || {
        f.set_len((n * REC) as u64).expect("set_len");
        // SAFETY: this process alone uses the file, and does not truncate it
        // while the map lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.expect("mmap");
        for i in 0..n {
            map[i * REC..(i + 1) * REC].copy_from_slice(&record(data, i));
        }
        map.flush().expect("msync");
    });
    m.insert("load_ns".into(), ns);
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
    let pass = || {
        time_per_op(n, || {
            for &i in &data.read_order {
                let at = i as usize * REC + KEY_LEN;
                black_box(map[at..at + VALUE_LEN].to_vec());
            }
        })
    };
    m.insert("get_ns".into(), pass().min(pass()));
    let pass = || {
        time_per_op(n, || {
            for &i in &data.read_order {
                let at = i as usize * REC + KEY_LEN;
                touch(&map[at..at + VALUE_LEN]);
            }
        })
    };
    m.insert("getref_ns".into(), pass().min(pass()));
    m.insert("file_bytes".into(), disk_bytes(&path) as f64);
}

fn index_work(dir: &Path, data: &Data, m: &mut Metrics) {
    let path = dir.join("records");
    let f = create(&path);
    let n = data.keys.len();
    let mut index: HashMap<Vec<u8>, u64, Fold> = HashMap::default();
    let ns = time_per_op(n, || {
        for (i, k) in data.keys.iter().enumerate() {
            let at = (i * REC) as u64;
            f.write_all_at(&record(data, i), at).expect("pwrite");
            index.insert(k.to_vec(), at);
        }
        f.sync_data().expect("fdatasync");
    });
    m.insert("load_ns".into(), ns);
    // SAFETY: this process alone uses the file and does not truncate it.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
    reads(
        data,
        m,
        |k| {
            let at = *index.get(k)?;
            let mut v = vec![0u8; VALUE_LEN];
            f.read_exact_at(&mut v, at + KEY_LEN as u64).expect("pread");
            Some(v)
        },
        Some(&|k: &[u8]| {
            let at = index[k] as usize + KEY_LEN;
            touch(&map[at..at + VALUE_LEN])
        }),
    );
    m.insert("file_bytes".into(), disk_bytes(&path) as f64);
}

/// Open floor: read the file once in 1 MiB reads and rebuild the index.
fn index_open(dir: &Path, data: &Data, m: &mut Metrics) {
    let path = dir.join("records");
    m.insert("readonce_ms".into(), read_once(&path));
    let index = measure_open(data, m, || {
        let t = Instant::now();
        let mut f = File::open(&path).expect("open");
        let mut index: HashMap<Vec<u8>, u64, Fold> = HashMap::default();
        let mut buf = vec![0u8; (1 << 20) / REC * REC];
        let mut at = 0u64;
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let r = f.read(&mut buf[filled..]).expect("read");
                if r == 0 {
                    break;
                }
                filled += r;
            }
            if filled == 0 {
                break;
            }
            for rec in buf[..filled].chunks_exact(REC) {
                index.insert(rec[..KEY_LEN].to_vec(), at);
                at += REC as u64;
            }
        }
        black_box(t);
        index
    });
    black_box(index.len());
}
