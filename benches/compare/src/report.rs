//! The table and the targets of issue 6, from the medians of the runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{ENGINES, KEY_LEN, Metrics, PEERS, WRITERS};

/// What the run was.
pub struct Context {
    pub runs: usize,
    pub n: usize,
    pub durable: usize,
    pub load_before: String,
    pub load_after: String,
    pub wall_s: f64,
    pub dir: PathBuf,
}

const BEGIN: &str = "<!-- compare:begin (written by benches/compare; do not edit by hand) -->";
const END: &str = "<!-- compare:end -->";

/// One row of the table: a metric, its unit, how to read it off an engine's
/// medians, and which floor it is compared with.
struct Row {
    label: &'static str,
    get: fn(&Metrics) -> Option<f64>,
    /// (floor engine, how to read the floor off it)
    floor: Option<(&'static str, fn(&Metrics) -> Option<f64>)>,
    decimals: usize,
}

fn key(k: &'static str) -> impl Fn(&Metrics) -> Option<f64> {
    move |m| m.get(k).copied()
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            label: "load, no per-write sync (ns/put)",
            get: |m| key("load_ns")(m),
            floor: Some(("index+pwrite", |m| key("load_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "get, owned copy (ns/get)",
            get: |m| key("get_ns")(m),
            floor: Some(("hashmap", |m| key("get_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "get, borrowed (ns/get)",
            get: |m| key("getref_ns")(m),
            floor: Some(("hashmap", |m| key("getref_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "durable put, 1 writer (ns/put)",
            get: |m| key("durable_ns")(m),
            floor: Some(("pwrite", |m| key("durable_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "durable put, 1 writer, vs in-place floor (ns/put)",
            get: |m| key("durable_ns")(m),
            floor: Some(("pwrite", |m| key("durable_inplace_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "durable put, 4 writers (ns/put)",
            get: |m| key("durable4_ns")(m),
            floor: Some(("pwrite", |m| key("durable4_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "durable put, 4 writers, vs in-place floor (ns/put)",
            get: |m| key("durable4_ns")(m),
            floor: Some(("pwrite", |m| key("durable_inplace4_ns")(m))),
            decimals: 0,
        },
        Row {
            label: "open of the loaded file (ms)",
            get: |m| key("open_ms")(m),
            floor: Some(("sfs", |m| key("readonce_ms")(m))),
            decimals: 1,
        },
        Row {
            label: "file size (MB)",
            get: |m| key("file_bytes")(m).map(|b| b / 1e6),
            floor: Some(("pwrite", |m| key("file_bytes")(m).map(|b| b / 1e6))),
            decimals: 1,
        },
        Row {
            label: "peak memory of work process beyond the data (MB)",
            get: |m| Some((key("vm_hwm")(m)? - key("data_rss")(m)?) / 1e6),
            floor: Some(("hashmap", |m| {
                Some((key("vm_hwm")(m)? - key("data_rss")(m)?) / 1e6)
            })),
            decimals: 0,
        },
        Row {
            label: "anonymous memory after open (B/entry)",
            get: |m| key("open_rss_anon_per_entry")(m),
            floor: Some(("index+pwrite", |m| key("open_rss_anon_per_entry")(m))),
            decimals: 1,
        },
    ]
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fastest_peer(med: &BTreeMap<String, Metrics>, get: fn(&Metrics) -> Option<f64>) -> Option<(&'static str, f64)> {
    PEERS
        .iter()
        .filter_map(|p| Some((*p, get(med.get(*p)?)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

fn shell(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / (1 << 20) as f64);
    format!(
        "{cpu}, {cores} cores, {mem:.0} GiB RAM; {}",
        shell("uname", &["-srm"])
    )
}

/// The whole report, as Markdown.
pub fn render(ctx: &Context, med: &BTreeMap<String, Metrics>) -> String {
    let mut s = String::new();
    let fs = shell("sh", &["-c", &format!("df -T {} | tail -1 | awk '{{print $2}}'", ctx.dir.display())]);
    let _ = writeln!(s, "## Comparison (benches/compare)\n");
    let _ = writeln!(s, "- date: {}", shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(s, "- machine: {} ({} file system under `{}`)", machine(), fs, ctx.dir.display());
    let _ = writeln!(
        s,
        "- command: `cd benches/compare && cargo run --release -- --runs {} --n {} --durable {} --dir {}`",
        ctx.runs,
        ctx.n,
        ctx.durable,
        ctx.dir.display()
    );
    let _ = writeln!(
        s,
        "- workload: {} random {KEY_LEN}-byte keys, {}-byte values; every number is the median of {} runs, one process per engine and run; {} durable puts of new keys, then {} more from {WRITERS} threads; open = a new process opening the file the work process left (page cache warm) and reading one key",
        ctx.n,
        crate::VALUE_LEN,
        ctx.runs,
        ctx.durable,
        ctx.durable
    );
    let _ = writeln!(
        s,
        "- load average (1/5/15 min, runnable/total) before: `{}`, after: `{}`; the machine is shared with other engineers' builds, so absolute numbers are noisy and the targets are ratios within this run; wall time {:.0} s",
        ctx.load_before, ctx.load_after, ctx.wall_s
    );
    let _ = writeln!(s);

    let engines: Vec<&str> = ENGINES.iter().copied().filter(|e| med.contains_key(*e)).collect();
    let _ = write!(s, "| metric |");
    for e in &engines {
        let _ = write!(s, " {e} |");
    }
    let _ = writeln!(s, " fastest peer | sfs ÷ fastest peer | floor | sfs ÷ floor |");
    let _ = write!(s, "|---|");
    for _ in &engines {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---|---:|---|---:|");
    for r in rows() {
        let _ = write!(s, "| {} |", r.label);
        for e in &engines {
            let _ = write!(s, " {} |", fmt((r.get)(&med[*e]), r.decimals));
        }
        let sfs = med.get("sfs").and_then(|m| (r.get)(m));
        match fastest_peer(med, r.get) {
            Some((p, v)) => {
                let _ = write!(
                    s,
                    " {p} {} | {} |",
                    fmt(Some(v), r.decimals),
                    fmt(ratio(sfs, Some(v)), 2)
                );
            }
            None => {
                let _ = write!(s, " — | — |");
            }
        }
        match r.floor {
            Some((fe, fget)) => {
                let fv = med.get(fe).and_then(|m| fget(m));
                let what = if fe == "sfs" { "read file once" } else { fe };
                let _ = writeln!(
                    s,
                    " {what} {} | {} |",
                    fmt(fv, r.decimals),
                    fmt(ratio(sfs, fv), 2)
                );
            }
            None => {
                let _ = writeln!(s, " — | — |");
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Notes: \"fastest peer\" is the best of redb, heed (LMDB), fjall, sled and SQLite. A load includes one sync at its end (one transaction/batch where the engine has them; sled and sfs put key by key). \"Owned\" gets return a `Vec<u8>` per key; \"borrowed\" gets use each engine's zero-copy path where it has one (sfs `get_ref`, LMDB and redb slices, fjall/sled refcounted slices, rusqlite `get_ref`) and look at the first and last byte. sled's durable mode is `flush()`, which on Linux ends in `sync_file_range`, **not** an fsync: its durable numbers do not include a disk cache flush. SQLite runs in WAL mode with `synchronous=FULL`, a 256 MiB page cache and a 1 GiB mmap. `hashmap` is std's `HashMap<Vec<u8>, Vec<u8>>` (SipHash); `hashmap-fold` the same with foldhash, sfs's hasher. `pwrite` reads at known offsets without any lookup. `index+pwrite` open reads the record file once and rebuilds a foldhash index of it. The sfs work process reopens its file with `SyncPolicy::Always` for the durable phases, which adds an open to its peak memory."
    );
    let _ = writeln!(s);
    s.push_str(&targets(med));
    s
}

fn targets(med: &BTreeMap<String, Metrics>) -> String {
    let mut s = String::new();
    let get = |e: &str, k: &str| med.get(e).and_then(|m| m.get(k).copied());
    let peer = |k: &'static str| -> Option<(&'static str, f64)> {
        PEERS
            .iter()
            .filter_map(|p| Some((*p, get(p, k)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let _ = writeln!(s, "### Targets (issue 6), from the medians above\n");
    let _ = writeln!(s, "| target | figures | ratio | limit | verdict |");
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    let mut line = |name: &str, figs: String, r: Option<f64>, limit: f64| {
        let verdict = match r {
            Some(r) if r <= limit => "**met**".to_owned(),
            Some(r) => format!("**missed** by {:.0}%", (r / limit - 1.0) * 100.0),
            None => "not measured".into(),
        };
        let _ = writeln!(s, "| {name} | {figs} | {} | ≤ {limit} | {verdict} |", fmt(r, 2));
    };
    let sfs_get = get("sfs", "get_ns");
    if let Some((p, v)) = peer("get_ns") {
        line(
            "get ≤ 0.5 × fastest peer (owned)",
            format!("sfs {} ns, {p} {v:.0} ns", fmt(sfs_get, 0)),
            ratio(sfs_get, Some(v)),
            0.5,
        );
    }
    let sfs_ref = get("sfs", "getref_ns");
    if let Some((p, v)) = peer("getref_ns") {
        line(
            "get ≤ 0.5 × fastest peer (borrowed)",
            format!("sfs get_ref {} ns, {p} {v:.0} ns", fmt(sfs_ref, 0)),
            ratio(sfs_ref, Some(v)),
            0.5,
        );
    }
    let hm = get("hashmap", "get_ns");
    line(
        "get ≤ 1.5 × HashMap get (std hasher)",
        format!("sfs {} ns, HashMap {} ns", fmt(sfs_get, 0), fmt(hm, 0)),
        ratio(sfs_get, hm),
        1.5,
    );
    let hmf = get("hashmap-fold", "get_ns");
    line(
        "get ≤ 1.5 × HashMap get (foldhash, stricter)",
        format!("sfs {} ns, HashMap+foldhash {} ns", fmt(sfs_get, 0), fmt(hmf, 0)),
        ratio(sfs_get, hmf),
        1.5,
    );
    let sfs_load = get("sfs", "load_ns");
    if let Some((p, v)) = peer("load_ns") {
        line(
            "put without sync ≤ 0.5 × fastest peer's load",
            format!("sfs {} ns, {p} {v:.0} ns", fmt(sfs_load, 0)),
            ratio(sfs_load, Some(v)),
            0.5,
        );
    }
    let ip = get("index+pwrite", "load_ns");
    line(
        "put without sync ≤ 1.5 × index+pwrite",
        format!("sfs {} ns, index+pwrite {} ns", fmt(sfs_load, 0), fmt(ip, 0)),
        ratio(sfs_load, ip),
        1.5,
    );
    let sd = get("sfs", "durable_ns");
    let pd = get("pwrite", "durable_ns");
    let pi = get("pwrite", "durable_inplace_ns");
    let us = |v: Option<f64>| fmt(v.map(|v| v / 1e3), 1);
    let (ps, pa, pp, ps4) = (
        get("sfs", "paired_sfs_ns"),
        get("sfs", "paired_append_ns"),
        get("sfs", "paired_inplace_ns"),
        get("sfs", "paired_sfs4_ns"),
    );
    line(
        "durable put ≤ 1.1 × pwrite+fdatasync (appending), interleaved in one process",
        format!("sfs {} µs, pwrite+fdatasync {} µs", us(ps), us(pa)),
        ratio(ps, pa),
        1.1,
    );
    line(
        "durable put ≤ 1.1 × pwrite+fdatasync (in place, stricter), interleaved",
        format!("sfs {} µs, in-place pwrite+fdatasync {} µs", us(ps), us(pp)),
        ratio(ps, pp),
        1.1,
    );
    line(
        "durable put ≤ 1.1 × pwrite+fdatasync (appending), separate processes",
        format!("sfs {} µs, pwrite+fdatasync {} µs", us(sd), us(pd)),
        ratio(sd, pd),
        1.1,
    );
    line(
        "durable put ≤ 1.1 × pwrite+fdatasync (in place), separate processes",
        format!("sfs {} µs, in-place pwrite+fdatasync {} µs", us(sd), us(pi)),
        ratio(sd, pi),
        1.1,
    );
    line(
        "durable put, 4 writers ≤ 0.4 × 1 writer (per put), interleaved",
        format!("sfs {} µs vs {} µs", us(ps4), us(ps)),
        ratio(ps4, ps),
        0.4,
    );
    let sd4 = get("sfs", "durable4_ns");
    line(
        "durable put, 4 writers ≤ 0.4 × 1 writer (per put), consecutive phases",
        format!("sfs {} µs vs {} µs", us(sd4), us(sd)),
        ratio(sd4, sd),
        0.4,
    );
    let so = get("sfs", "open_ms");
    let ro = get("sfs", "readonce_ms");
    line(
        "open ≤ 3 × reading the file once",
        format!("sfs open {} ms, read once {} ms, {} entries", fmt(so, 1), fmt(ro, 1), fmt(get("sfs", "open_entries"), 0)),
        ratio(so, ro),
        3.0,
    );
    let ib = get("sfs", "open_index_bytes_per_entry");
    let _ = writeln!(
        s,
        "| index ≤ 48 B per live entry beyond the key | `Stats::index_bytes` after open: {} B/entry beyond the {KEY_LEN}-byte key; RSS (anonymous) delta of the open: {} B/entry in all (key included) | {} | ≤ 48 | {} |",
        fmt(ib, 1),
        fmt(get("sfs", "open_rss_anon_per_entry"), 1),
        fmt(ib, 1),
        match ib {
            Some(b) if b <= 48.0 => "**met**".to_owned(),
            Some(b) => format!("**missed** by {:.0}%", (b / 48.0 - 1.0) * 100.0),
            None => "not measured".into(),
        }
    );
    let _ = writeln!(
        s,
        "| zero-copy read API | `Store::get_ref` returns a `ValueRef` borrowing the mapped bytes under a reader lock; see `get_ref` vs `get` at 64 KiB in the criterion benches | — | — | present |"
    );
    s
}

/// Replaces the harness's section of `path` (between the markers), or
/// creates the file.
pub fn write_section(path: &Path, text: &str) -> std::io::Result<()> {
    let section = format!("{BEGIN}\n{text}{END}\n");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &old[..a], &old[b + END.len()..].trim_start_matches('\n'))
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{section}"),
        _ => format!("{old}\n{section}"),
    };
    std::fs::write(path, new)
}
