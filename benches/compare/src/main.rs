//! Comparison harness: the same workload on sfs, its peers and raw floors,
//! one process per engine and run, summarised in one table.
//!
//! ```text
//! cargo run --release -- [--runs 3] [--n 1000000] [--durable 10000]
//!                        [--dir /work/tmp] [--out ../../BENCHMARKS.md] [--only sfs,redb]
//! cargo run --release -- --workload space [--runs 3] [--churn-keys 100000]
//!                        [--churn 1000000] [--del-n 1000000] [--lat-n 1000000] [--dir ..]
//! ```
//!
//! `--workload space` runs the space workloads of issue 7 instead (see
//! `space.rs`) and writes its own section of BENCHMARKS.md, between the
//! `space` markers.
//!
//! The parent process re-invokes its own binary for every (run, engine,
//! phase): `work` loads the keys, reads them back and does the durable writes;
//! `open` opens the file that `work` left and reports what that cost. A child
//! prints `name=value` lines; the parent keeps the median over the runs of
//! every number and writes the table (and the targets of issue 6) to stdout
//! and between the markers of BENCHMARKS.md.

mod engines;
mod floors;
mod report;
mod space;
mod space_report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};

/// Key length of the workload.
pub const KEY_LEN: usize = 16;
/// Value length of the workload.
pub const VALUE_LEN: usize = 100;
/// Writer threads of the concurrent durable phase.
pub const WRITERS: usize = 4;

/// Every engine and floor, in table order.
pub const ENGINES: &[&str] = &[
    "sfs",
    "redb",
    "heed",
    "fjall",
    "sled",
    "sqlite",
    "hashmap",
    "hashmap-fold",
    "pwrite",
    "mmap",
    "index+pwrite",
];

/// The peers sfs is compared with.
pub const PEERS: &[&str] = &["redb", "heed", "fjall", "sled", "sqlite"];

/// The workload's data, generated the same way (fixed seed) in every process.
pub struct Data {
    /// Keys to load, `n` of them.
    pub keys: Vec<[u8; KEY_LEN]>,
    /// Values, `VALUE_LEN` bytes per key, back to back.
    pub values: Vec<u8>,
    /// A random permutation of `0..n`: the read order.
    pub read_order: Vec<u32>,
    /// Keys (not among `keys`) for the durable writes.
    pub durable_keys: Vec<[u8; KEY_LEN]>,
}

impl Data {
    fn new(n: usize, durable: usize) -> Data {
        let mut rng = SmallRng::seed_from_u64(0x5f5_2024);
        let mut gen_keys = |count: usize| {
            (0..count)
                .map(|_| {
                    let mut k = [0u8; KEY_LEN];
                    rng.fill_bytes(&mut k);
                    k
                })
                .collect::<Vec<_>>()
        };
        let keys = gen_keys(n);
        // Random 16-byte keys do not collide in practice; the durable keys are
        // a separate draw, so they are new keys.
        let durable_keys = gen_keys(durable * 2);
        let mut values = vec![0u8; n * VALUE_LEN];
        rng.fill_bytes(&mut values);
        let mut read_order: Vec<u32> = (0..n as u32).collect();
        read_order.shuffle(&mut rng);
        Data {
            keys,
            values,
            read_order,
            durable_keys,
        }
    }

    /// The value of key `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * VALUE_LEN..(i + 1) * VALUE_LEN]
    }

    /// The value written with durable key `i` (any fixed 100 bytes will do).
    pub fn durable_value(&self, i: usize) -> &[u8] {
        self.value(i % self.keys.len())
    }
}

/// Numbers a child reports: name → value.
pub type Metrics = BTreeMap<String, f64>;

/// A line of `/proc/self/status`, in bytes.
pub fn proc_status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Total bytes of the files under `path` (or of the file itself).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Runs `f` once and returns nanoseconds per operation over `ops` operations.
pub fn time_per_op(ops: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / ops as f64
}

struct Args {
    runs: usize,
    n: usize,
    durable: usize,
    dir: PathBuf,
    out: Option<PathBuf>,
    only: Vec<String>,
    /// `speed` (issue 6, the default) or `space` (issue 7).
    workload: String,
    /// Space workload: keys of the churn, overwrites, keys of the delete
    /// workload, keys of the latency store.
    churn_keys: usize,
    churn: usize,
    del_n: usize,
    lat_n: usize,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        runs: 3,
        n: 1_000_000,
        durable: 10_000,
        dir: std::env::temp_dir(),
        out: Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../BENCHMARKS.md"
        ))),
        only: Vec::new(),
        workload: "speed".into(),
        churn_keys: 100_000,
        churn: 1_000_000,
        del_n: 1_000_000,
        lat_n: 1_000_000,
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = val().parse().expect("--runs N"),
            "--n" => a.n = val().parse().expect("--n N"),
            "--durable" => a.durable = val().parse().expect("--durable N"),
            "--dir" => a.dir = PathBuf::from(val()),
            "--out" => a.out = Some(PathBuf::from(val())),
            "--no-out" => a.out = None,
            "--only" => a.only = val().split(',').map(str::to_owned).collect(),
            "--workload" => a.workload = val(),
            "--churn" => a.churn = val().parse().expect("--churn N"),
            "--churn-keys" => a.churn_keys = val().parse().expect("--churn-keys N"),
            "--del-n" => a.del_n = val().parse().expect("--del-n N"),
            "--lat-n" => a.lat_n = val().parse().expect("--lat-n N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--child") {
        args.next();
        let engine = args.next().expect("engine");
        let phase = args.next().expect("phase");
        let dir = PathBuf::from(args.next().expect("dir"));
        let n: usize = args.next().expect("n").parse().expect("n");
        let durable: usize = args.next().expect("durable").parse().expect("durable");
        if ["churn", "delete", "latency"].contains(&phase.as_str()) {
            let mut m = Metrics::new();
            space::run(&engine, &phase, &dir, n, durable, &mut m);
            m.insert("vm_hwm".into(), proc_status_bytes("VmHWM") as f64);
            for (k, v) in &m {
                println!("{k}={v}");
            }
            return;
        }
        child(&engine, &phase, &dir, n, durable);
        return;
    }
    let a = parse_args(args);
    match a.workload.as_str() {
        "speed" => parent(a),
        "space" => space_parent(a),
        w => panic!("unknown workload {w} (speed or space)"),
    }
}

fn child(engine: &str, phase: &str, dir: &Path, n: usize, durable: usize) {
    let data = Data::new(n, durable);
    let mut m = Metrics::new();
    // Memory held by the workload's own data, subtracted from the peak.
    m.insert("data_rss".into(), proc_status_bytes("VmRSS") as f64);
    let known = ["sfs", "redb", "heed", "fjall", "sled", "sqlite"];
    if known.contains(&engine) {
        engines::run(engine, phase, dir, &data, &mut m);
    } else {
        floors::run(engine, phase, dir, &data, &mut m);
    }
    m.insert("vm_hwm".into(), proc_status_bytes("VmHWM") as f64);
    for (k, v) in &m {
        println!("{k}={v}");
    }
}

/// A child's metrics as `name=value` pairs with `decimals` digits.
fn show(m: &Metrics, decimals: usize) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Adds one run's metrics of engine `e` to the runs so far.
fn collect(all: &mut report::Runs, e: &str, m: Metrics) {
    let slot = all.entry(e.to_owned()).or_default();
    for (k, v) in m {
        slot.entry(k).or_default().push(v);
    }
}

fn run_child(exe: &Path, engine: &str, phase: &str, dir: &Path, a: &Args) -> Metrics {
    run_child_with(exe, engine, phase, dir, a.n, a.durable)
}

fn run_child_with(
    exe: &Path,
    engine: &str,
    phase: &str,
    dir: &Path,
    n: usize,
    count: usize,
) -> Metrics {
    let out = Command::new(exe)
        .args(["--child", engine, phase])
        .arg(dir)
        .args([n.to_string(), count.to_string()])
        .output()
        .expect("start a child");
    if out.status.success() && !out.stderr.is_empty() {
        eprint!("{engine} {phase}: {}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        panic!(
            "{engine} {phase} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

fn parent(a: Args) {
    let exe = std::env::current_exe().expect("own path");
    let engines = report::present(ENGINES, |e| {
        a.only.is_empty() || a.only.iter().any(|o| o == e)
    });
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    // engine → metric → values over the runs
    let mut all: report::Runs = BTreeMap::new();
    for run in 1..=a.runs {
        for &e in &engines {
            let dir = tempfile::Builder::new()
                .prefix(&format!("sfs-compare-{}-", e.replace('+', "-")))
                .tempdir_in(&a.dir)
                .expect("a scratch directory");
            let t = Instant::now();
            let mut m = run_child(&exe, e, "work", dir.path(), &a);
            let open = run_child(&exe, e, "open", dir.path(), &a);
            for (k, v) in open {
                let k = match k.as_str() {
                    "vm_hwm" | "data_rss" => format!("open_{k}"),
                    _ => k,
                };
                m.insert(k, v);
            }
            eprintln!(
                "run {run}/{} {e}: {:.1}s  {}",
                a.runs,
                t.elapsed().as_secs_f64(),
                show(&m, 0)
            );
            collect(&mut all, e, m);
            drop(dir);
        }
    }
    let medians: BTreeMap<String, Metrics> = all
        .clone()
        .into_iter()
        .map(|(e, ms)| {
            let med = ms
                .into_iter()
                .map(|(k, mut vs)| {
                    vs.sort_by(f64::total_cmp);
                    (k, vs[vs.len() / 2])
                })
                .collect();
            (e, med)
        })
        .collect();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ctx = report::Context {
        runs: a.runs,
        n: a.n,
        durable: a.durable,
        load_before: load_before.trim().to_owned(),
        load_after: load_after.trim().to_owned(),
        wall_s: started.elapsed().as_secs_f64(),
        dir: a.dir.clone(),
    };
    let text = report::render(&ctx, &medians, &all);
    println!("{text}");
    if let Some(out) = a.out {
        report::write_section(&out, &text).expect("write BENCHMARKS.md");
        eprintln!("wrote {}", out.display());
    }
}

/// The space workloads (issue 7): per run, per engine, `churn` then
/// `delete` in fresh directories; sfs's `latency` after them.
fn space_parent(a: Args) {
    let exe = std::env::current_exe().expect("own path");
    let engines = report::present(space::SPACE_ENGINES, |e| {
        a.only.is_empty() || a.only.iter().any(|o| o == e)
    });
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let mut all: report::Runs = BTreeMap::new();
    for run in 1..=a.runs {
        for &e in &engines {
            let mut phases = vec![("churn", a.churn_keys, a.churn), ("delete", a.del_n, 0)];
            if e == "sfs" {
                phases.push(("latency", a.lat_n, 0));
            }
            for (phase, n, count) in phases {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("sfs-space-{e}-{phase}-"))
                    .tempdir_in(&a.dir)
                    .expect("a scratch directory");
                let t = Instant::now();
                let m = run_child_with(&exe, e, phase, dir.path(), n, count);
                let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                eprintln!(
                    "run {run}/{} {e} {phase}: {:.1}s  load {}  {}",
                    a.runs,
                    t.elapsed().as_secs_f64(),
                    load.trim(),
                    show(&m, 3)
                );
                collect(&mut all, e, m);
                drop(dir);
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ctx = space_report::Context {
        runs: a.runs,
        churn_keys: a.churn_keys,
        churn: a.churn,
        del_n: a.del_n,
        lat_n: a.lat_n,
        only: a.only.clone(),
        load_before: load_before.trim().to_owned(),
        load_after: load_after.trim().to_owned(),
        wall_s: started.elapsed().as_secs_f64(),
        dir: a.dir.clone(),
    };
    let text = space_report::render(&ctx, &all);
    println!("{text}");
    if let Some(out) = a.out {
        space_report::write_section(&out, &text).expect("write BENCHMARKS.md");
        eprintln!("wrote {}", out.display());
    }
}
