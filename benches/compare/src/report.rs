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

/// Reads one figure off an engine's medians.
type Reader = fn(&Metrics) -> Option<f64>;

/// One row of the table: a metric, its unit, how to read it off an engine's
/// medians, and which floor it is compared with.
struct Row {
    label: &'static str,
    get: fn(&Metrics) -> Option<f64>,
    /// (floor engine, how to read the floor off it)
    floor: Option<(&'static str, Reader)>,
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

pub(crate) fn fmt(v: Option<f64>, decimals: usize) -> String {
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

fn fastest_peer(
    med: &BTreeMap<String, Metrics>,
    get: fn(&Metrics) -> Option<f64>,
) -> Option<(&'static str, f64)> {
    PEERS
        .iter()
        .filter_map(|p| Some((*p, get(med.get(*p)?)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

pub(crate) fn shell(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn machine() -> String {
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

/// The engines of `all`, in its order, for which `has` holds.
pub fn present<'a>(all: &[&'a str], has: impl Fn(&str) -> bool) -> Vec<&'a str> {
    all.iter().copied().filter(|e| has(e)).collect()
}

/// A table's head: a `metric` column, one right-aligned column per engine,
/// then the columns `tail` names, aligned as `tail_align` says.
pub fn table_head(s: &mut String, engines: &[&str], tail: &str, tail_align: &str) {
    let _ = write!(s, "| metric |");
    for e in engines {
        let _ = write!(s, " {e} |");
    }
    let _ = writeln!(s, "{tail}");
    let _ = write!(s, "|---|");
    for _ in engines {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "{tail_align}");
}

/// A section's title, then its date and machine lines (with the file system
/// under `dir`, where the engines' files go).
pub fn preamble(s: &mut String, title: &str, dir: &Path) {
    let fs = shell(
        "sh",
        &[
            "-c",
            &format!("df -T {} | tail -1 | awk '{{print $2}}'", dir.display()),
        ],
    );
    let _ = writeln!(s, "## {title}\n");
    let _ = writeln!(
        s,
        "- date: {}",
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        s,
        "- machine: {} ({} file system under `{}`)",
        machine(),
        fs,
        dir.display()
    );
}

/// The whole report, as Markdown.
pub fn render(ctx: &Context, med: &BTreeMap<String, Metrics>, runs: &Runs) -> String {
    let mut s = String::new();
    preamble(&mut s, "Comparison (benches/compare)", &ctx.dir);
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

    let engines = present(ENGINES, |e| med.contains_key(e));
    table_head(
        &mut s,
        &engines,
        " fastest peer | sfs ÷ fastest peer | floor | sfs ÷ floor |",
        "---|---:|---|---:|",
    );
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
                let fv = med.get(fe).and_then(fget);
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
    s.push_str(&targets(med, runs, ctx.runs));
    s
}

/// Every run's numbers: engine → metric → one value per run.
pub type Runs = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// A getter of one metric of one engine.
type Get<'a> = &'a dyn Fn(&str, &str) -> Option<f64>;

fn fastest(get: Get<'_>, k: &str) -> Option<(&'static str, f64)> {
    PEERS
        .iter()
        .filter_map(|p| Some((*p, get(p, k)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

struct Target {
    name: &'static str,
    figures: fn(Get<'_>) -> String,
    ratio: fn(Get<'_>) -> Option<f64>,
    limit: f64,
}

fn us(v: Option<f64>) -> String {
    fmt(v.map(|v| v / 1e3), 1)
}

fn target_list() -> Vec<Target> {
    vec![
        Target {
            name: "get ≤ 0.5 × fastest peer (owned copies)",
            figures: |g| {
                let p = fastest(g, "get_ns");
                format!(
                    "sfs {} ns, {} {} ns",
                    fmt(g("sfs", "get_ns"), 0),
                    p.map_or("—", |p| p.0),
                    fmt(p.map(|p| p.1), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "get_ns"), fastest(g, "get_ns").map(|p| p.1)),
            limit: 0.5,
        },
        Target {
            name: "get ≤ 0.5 × fastest peer (borrowed: sfs get_ref)",
            figures: |g| {
                let p = fastest(g, "getref_ns");
                format!(
                    "sfs {} ns, {} {} ns",
                    fmt(g("sfs", "getref_ns"), 0),
                    p.map_or("—", |p| p.0),
                    fmt(p.map(|p| p.1), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "getref_ns"), fastest(g, "getref_ns").map(|p| p.1)),
            limit: 0.5,
        },
        Target {
            name: "get ≤ 1.5 × HashMap get (std hasher, as in the issue)",
            figures: |g| {
                format!(
                    "sfs {} ns, HashMap {} ns",
                    fmt(g("sfs", "get_ns"), 0),
                    fmt(g("hashmap", "get_ns"), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "get_ns"), g("hashmap", "get_ns")),
            limit: 1.5,
        },
        Target {
            name: "get ≤ 1.5 × HashMap get (foldhash: stricter)",
            figures: |g| {
                format!(
                    "sfs {} ns, HashMap+foldhash {} ns",
                    fmt(g("sfs", "get_ns"), 0),
                    fmt(g("hashmap-fold", "get_ns"), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "get_ns"), g("hashmap-fold", "get_ns")),
            limit: 1.5,
        },
        Target {
            name: "put without sync ≤ 0.5 × fastest peer's load",
            figures: |g| {
                let p = fastest(g, "load_ns");
                format!(
                    "sfs {} ns, {} {} ns",
                    fmt(g("sfs", "load_ns"), 0),
                    p.map_or("—", |p| p.0),
                    fmt(p.map(|p| p.1), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "load_ns"), fastest(g, "load_ns").map(|p| p.1)),
            limit: 0.5,
        },
        Target {
            name: "put without sync ≤ 1.5 × index+pwrite",
            figures: |g| {
                format!(
                    "sfs {} ns, index+pwrite {} ns",
                    fmt(g("sfs", "load_ns"), 0),
                    fmt(g("index+pwrite", "load_ns"), 0)
                )
            },
            ratio: |g| ratio(g("sfs", "load_ns"), g("index+pwrite", "load_ns")),
            limit: 1.5,
        },
        Target {
            name: "durable put ≤ 1.1 × pwrite+fdatasync (appending), interleaved in one process",
            figures: |g| {
                format!(
                    "sfs {} µs, pwrite+fdatasync {} µs",
                    us(g("sfs", "paired_sfs_ns")),
                    us(g("sfs", "paired_append_ns"))
                )
            },
            ratio: |g| ratio(g("sfs", "paired_sfs_ns"), g("sfs", "paired_append_ns")),
            limit: 1.1,
        },
        Target {
            name: "durable put ≤ 1.1 × pwrite+fdatasync (in place: stricter), interleaved",
            figures: |g| {
                format!(
                    "sfs {} µs, in-place pwrite+fdatasync {} µs",
                    us(g("sfs", "paired_sfs_ns")),
                    us(g("sfs", "paired_inplace_ns"))
                )
            },
            ratio: |g| ratio(g("sfs", "paired_sfs_ns"), g("sfs", "paired_inplace_ns")),
            limit: 1.1,
        },
        Target {
            name: "durable put ≤ 1.1 × pwrite+fdatasync (appending), separate processes",
            figures: |g| {
                format!(
                    "sfs {} µs, pwrite+fdatasync {} µs",
                    us(g("sfs", "durable_ns")),
                    us(g("pwrite", "durable_ns"))
                )
            },
            ratio: |g| ratio(g("sfs", "durable_ns"), g("pwrite", "durable_ns")),
            limit: 1.1,
        },
        Target {
            name: "durable put, 4 writers ≤ 0.4 × 1 writer (per put), interleaved",
            figures: |g| {
                format!(
                    "sfs {} µs vs {} µs",
                    us(g("sfs", "paired_sfs4_ns")),
                    us(g("sfs", "paired_sfs_ns"))
                )
            },
            ratio: |g| ratio(g("sfs", "paired_sfs4_ns"), g("sfs", "paired_sfs_ns")),
            limit: 0.4,
        },
        Target {
            name: "durable put, 4 writers ≤ 0.4 × 1 writer (per put), consecutive phases",
            figures: |g| {
                format!(
                    "sfs {} µs vs {} µs",
                    us(g("sfs", "durable4_ns")),
                    us(g("sfs", "durable_ns"))
                )
            },
            ratio: |g| ratio(g("sfs", "durable4_ns"), g("sfs", "durable_ns")),
            limit: 0.4,
        },
        Target {
            name: "open ≤ 3 × reading the file once",
            figures: |g| {
                format!(
                    "sfs open {} ms, read once {} ms, {} entries (index+pwrite floor: read + rebuild a hash index {} ms)",
                    fmt(g("sfs", "open_ms"), 1),
                    fmt(g("sfs", "readonce_ms"), 1),
                    fmt(g("sfs", "open_entries"), 0),
                    fmt(g("index+pwrite", "open_ms"), 1)
                )
            },
            ratio: |g| ratio(g("sfs", "open_ms"), g("sfs", "readonce_ms")),
            limit: 3.0,
        },
        Target {
            name: "index ≤ 48 B per live entry beyond the key",
            figures: |g| {
                format!(
                    "`Stats::index_bytes` after open: {} B/entry beyond the {KEY_LEN}-byte key; anonymous RSS growth of the open: {} B/entry, key and transient buffers included",
                    fmt(g("sfs", "open_index_bytes_per_entry"), 1),
                    fmt(g("sfs", "open_rss_anon_per_entry"), 1)
                )
            },
            ratio: |g| g("sfs", "open_index_bytes_per_entry"),
            limit: 48.0,
        },
    ]
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn targets(med: &BTreeMap<String, Metrics>, runs: &Runs, n_runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Targets (issue 6)\n\nEach ratio is computed within each run and the median of the {n_runs} runs is shown (each run's ratio in brackets); the figures are the medians of the table above. The index figure is bytes, not a ratio.\n"
    );
    let _ = writeln!(
        s,
        "| target | figures (medians) | ratio: median [per run] | limit | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---|");
    let med_get = |e: &str, k: &str| med.get(e).and_then(|m| m.get(k).copied());
    for t in target_list() {
        let per_run: Vec<Option<f64>> = (0..n_runs)
            .map(|i| {
                let g = |e: &str, k: &str| runs.get(e)?.get(k)?.get(i).copied();
                (t.ratio)(&g)
            })
            .collect();
        let r = median(per_run.iter().flatten().copied().collect());
        let verdict = match r {
            Some(r) if r <= t.limit => "**met**".to_owned(),
            Some(r) => format!("**missed** by {:.0}%", (r / t.limit - 1.0) * 100.0),
            None => "not measured".into(),
        };
        let each = per_run
            .iter()
            .map(|r| fmt(*r, 2))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| {} | {} | {} [{each}] | ≤ {} | {verdict} |",
            t.name,
            (t.figures)(&med_get),
            fmt(r, 2),
            t.limit
        );
    }
    let _ = writeln!(
        s,
        "| zero-copy read API | `Store::get_ref` returns a `ValueRef` borrowing the mapped bytes under a reader lock; see `get/hit_ref` vs `get/hit` at 64 KiB in the criterion benches | — | — | present |"
    );
    s
}

/// Replaces the harness's section of `path` (between the markers), or
/// creates the file.
pub fn write_section(path: &Path, text: &str) -> std::io::Result<()> {
    write_between(path, BEGIN, END, text)
}

/// Replaces what lies between the markers `begin` and `end` of `path` (or
/// appends a marked section, or creates the file).
pub fn write_between(path: &Path, begin: &str, end: &str, text: &str) -> std::io::Result<()> {
    let section = format!("{begin}\n{text}{end}\n");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(a), Some(b)) if a < b => {
            format!(
                "{}{section}{}",
                &old[..a],
                &old[b + end.len()..].trim_start_matches('\n')
            )
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{section}"),
        _ => format!("{old}\n{section}"),
    };
    std::fs::write(path, new)
}
