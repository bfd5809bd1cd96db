//! The space table, the targets of issue 7 and the latency histogram, from
//! every run's numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{Runs, fmt, median, preamble, present, table_head};
use crate::space::{BATCH, DEL_VALUE, DELETE_TENTHS, MAX_VALUE, MIN_VALUE, SPACE_ENGINES};
use crate::{KEY_LEN, PEERS};

/// What the run was.
pub struct Context {
    pub runs: usize,
    pub churn_keys: usize,
    pub churn: usize,
    pub del_n: usize,
    pub lat_n: usize,
    pub only: Vec<String>,
    pub load_before: String,
    pub load_after: String,
    pub wall_s: f64,
    pub dir: PathBuf,
}

const BEGIN: &str =
    "<!-- space:begin (written by benches/compare --workload space; do not edit by hand) -->";
const END: &str = "<!-- space:end -->";

/// The median over the runs of one metric of one engine.
fn med(runs: &Runs, e: &str, k: &str) -> Option<f64> {
    median(runs.get(e)?.get(k)?.clone())
}

/// One metric of one engine in run `i`.
fn at(runs: &Runs, i: usize, e: &str, k: &str) -> Option<f64> {
    runs.get(e)?.get(k)?.get(i).copied()
}

struct Row {
    label: &'static str,
    key: &'static str,
    scale: f64,
    decimals: usize,
    /// Lower is better and the "best peer" columns apply.
    compare: bool,
}

const fn row(label: &'static str, key: &'static str, scale: f64, decimals: usize) -> Row {
    Row {
        label,
        key,
        scale,
        decimals,
        compare: true,
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            compare: false,
            ..row(
                "churn: live data, keys + values (MB)",
                "churn_live_bytes",
                1e-6,
                1,
            )
        },
        row("churn: after the load (× live)", "churn_loaded_amp", 1.0, 2),
        row(
            "churn: peak during the churn (× live)",
            "churn_peak_amp",
            1.0,
            2,
        ),
        row(
            "**churn: after the churn, no explicit compaction (× live)**",
            "churn_after_amp",
            1.0,
            2,
        ),
        row(
            "**churn: after the engine's compaction (× live)**",
            "churn_compacted_amp",
            1.0,
            2,
        ),
        row("churn: compaction (s)", "churn_compact_s", 1.0, 2),
        row(
            "churn: overwrite, commit every 1000 (µs/op)",
            "churn_ns",
            1e-3,
            1,
        ),
        Row {
            compare: false,
            ..row(
                "delete: live data, keys + values (MB)",
                "del_live_bytes",
                1e-6,
                1,
            )
        },
        row("delete: after the load (× live)", "del_loaded_amp", 1.0, 2),
        row(
            "**delete: after deleting 90%, no explicit compaction (× live)**",
            "del_after_amp",
            1.0,
            2,
        ),
        row(
            "**delete: after the engine's compaction (× live)**",
            "del_compacted_amp",
            1.0,
            2,
        ),
        row("delete: compaction (s)", "del_compact_s", 1.0, 2),
        row(
            "delete: delete, commit every 1000 (µs/op)",
            "del_ns",
            1e-3,
            2,
        ),
    ]
}

fn scaled(v: Option<f64>, s: f64) -> Option<f64> {
    v.map(|v| v * s)
}

/// The whole section, as Markdown.
pub fn render(ctx: &Context, runs: &Runs) -> String {
    let mut s = String::new();
    preamble(&mut s, "Space (benches/compare --workload space)", &ctx.dir);
    let only = if ctx.only.is_empty() {
        String::new()
    } else {
        format!(" --only {}", ctx.only.join(","))
    };
    let _ = writeln!(
        s,
        "- command: `cd benches/compare && cargo run --release -- --workload space --runs {} --churn-keys {} --churn {} --del-n {} --lat-n {} --dir {}{only}`",
        ctx.runs,
        ctx.churn_keys,
        ctx.churn,
        ctx.del_n,
        ctx.lat_n,
        ctx.dir.display()
    );
    let _ = writeln!(
        s,
        "- churn: {} {KEY_LEN}-byte keys loaded with values of uniformly random length in {MIN_VALUE}..={MAX_VALUE} bytes, then {} random overwrites with new lengths drawn the same way ({:.1} GB of keys and values written); delete: {} {KEY_LEN}-byte keys with {DEL_VALUE}-byte values loaded in one transaction, then {}% of them deleted in random order; every engine commits every {BATCH} writes or deletes (sfs: `SyncPolicy::Never` and `sync()`, automatic compaction on with its defaults; redb, LMDB, SQLite: one write transaction; fjall: `persist(SyncData)`; sled: `flush()`)",
        ctx.churn_keys,
        ctx.churn,
        med(runs, "sfs", "churn_written_bytes")
            .or_else(|| SPACE_ENGINES
                .iter()
                .find_map(|e| med(runs, e, "churn_written_bytes")))
            .unwrap_or(0.0)
            / 1e9,
        ctx.del_n,
        DELETE_TENTHS * 10
    );
    let _ = writeln!(
        s,
        "- space amplification = size of all the engine's files ÷ live bytes (the sum of key and value lengths of the live entries), measured with the engine closed; median of {} runs, one process per engine, workload and run",
        ctx.runs
    );
    let _ = writeln!(
        s,
        "- load average (1/5/15 min, runnable/total) before: `{}`, after: `{}`; wall time {:.0} s",
        ctx.load_before, ctx.load_after, ctx.wall_s
    );
    let _ = writeln!(s);

    let engines = present(SPACE_ENGINES, |e| runs.contains_key(e));
    table_head(
        &mut s,
        &engines,
        " best peer | sfs ÷ best peer |",
        "---|---:|",
    );
    for r in rows() {
        let _ = write!(s, "| {} |", r.label);
        for e in &engines {
            let _ = write!(
                s,
                " {} |",
                fmt(scaled(med(runs, e, r.key), r.scale), r.decimals)
            );
        }
        let best = PEERS
            .iter()
            .filter_map(|p| Some((*p, med(runs, p, r.key)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match (r.compare, best, med(runs, "sfs", r.key)) {
            (true, Some((p, v)), sfs) => {
                let _ = writeln!(
                    s,
                    " {p} {} | {} |",
                    fmt(Some(v * r.scale), r.decimals),
                    fmt(sfs.map(|x| x / v), 2)
                );
            }
            _ => {
                let _ = writeln!(s, " — | — |");
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Compaction: sfs `Store::compact()`; redb `Database::compact()` until it returns false; LMDB (heed) has no in-place compaction: `mdb_env_copy2` with `MDB_CP_COMPACT` writes a compacted copy, which replaces the file; fjall `Keyspace::major_compact()` (public, doc-hidden in fjall 3); SQLite `VACUUM` then `wal_checkpoint(TRUNCATE)`; sled 0.34 has no compaction call (\"—\"), its segment cleaner runs on its own during the workload. Each compaction runs in a fresh open of the closed store; its time is that of the compaction call alone (for LMDB the copy and its fsync). A read-write open of sfs cuts the free run at the end of the file (the growth reserve) before `compact()` runs. Sizes are file lengths; allocated blocks (`st_blocks`) are in the child's output."
    );
    let _ = writeln!(s);
    s.push_str(&sfs_breakdown(runs));
    s.push_str(&latency(runs));
    s.push_str(&targets(runs, ctx.runs));
    s
}

fn mb(v: Option<f64>) -> String {
    fmt(v.map(|v| v / 1e6), 1)
}

/// What sfs's file holds at each measuring point, from its `Stats`.
fn sfs_breakdown(runs: &Runs) -> String {
    let mut s = String::new();
    if !runs.contains_key("sfs") {
        return s;
    }
    let _ = writeln!(
        s,
        "### What the sfs file holds (medians, MB; `Stats` of a read-only open of the closed file, and of the store that ran `compact()`)\n"
    );
    let _ = writeln!(
        s,
        "| when | file | keys + values | block headers, padding, unsplit slack | free blocks | free run at the end (growth reserve) | largest free block | free blocks (count) | fragmentation |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let points = [
        ("churn: after the churn", "churn_", "churn_live_bytes"),
        (
            "churn: after `compact()`",
            "churn_compacted_",
            "churn_live_bytes",
        ),
        ("delete: after the deletes", "del_", "del_live_bytes"),
        (
            "delete: after `compact()`",
            "del_compacted_",
            "del_live_bytes",
        ),
    ];
    let engines = ["sfs", "sfs-noauto"]
        .into_iter()
        .filter(|e| runs.contains_key(*e));
    for (e, (label, p, live)) in engines.flat_map(|e| points.map(|pt| (e, pt))) {
        let label = format!("{e}, {label}");
        let g = |k: &str| med(runs, e, &format!("{p}sfs_{k}"));
        let live = med(runs, e, live);
        let overhead = match (g("block_bytes"), live) {
            (Some(b), Some(l)) => Some(b - l),
            _ => None,
        };
        // A read-only open leaves the free run at the end of the file out
        // of its free list (a read-write open cuts it off).
        let tail = (|| {
            Some(g("file_len")? - 64.0 - g("block_bytes")? - g("free_bytes")? - g("pending_bytes")?)
        })();
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mb(g("file_len")),
            mb(live),
            mb(overhead),
            mb(g("free_bytes")),
            mb(tail),
            mb(g("largest_free")),
            fmt(g("free_blocks"), 0),
            fmt(g("fragmentation"), 2)
        );
    }
    let _ = writeln!(s);
    s
}

fn latency(runs: &Runs) -> String {
    let mut s = String::new();
    if med(runs, "sfs", "lat_idle_p99_ns").is_none() {
        return s;
    }
    let _ = writeln!(
        s,
        "### sfs get latency while `compact()` runs (medians over the runs, µs)\n"
    );
    let _ = writeln!(
        s,
        "A store of {} 16-byte keys with 100-byte values, every other key then deleted in random order; gets of random live keys from one thread, each timed on its own (`Instant` around `get`), sorted into percentiles: idle before (at least 2 s), while another thread runs `compact()`, idle after on the compacted file (at least 2 s), and a control while another thread only burns CPU (no store access, no I/O) for as long as the compaction took: on 2 cores shared with other work, part of any slowdown is only the sharing of the cores. Compaction took {} s and moved {} entries; the file went from {} MB to {} MB.\n",
        fmt(med(runs, "sfs", "lat_n"), 0),
        fmt(med(runs, "sfs", "lat_compact_s"), 2),
        fmt(med(runs, "sfs", "lat_moved_entries"), 0),
        mb(med(runs, "sfs", "lat_file_before")),
        mb(med(runs, "sfs", "lat_file_after")),
    );
    let _ = writeln!(
        s,
        "| gets | count | p50 | p90 | p99 | p99.9 | max | over 100 µs | over 1 ms | reader's context switches: voluntary / involuntary | TLB shootdowns (machine) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, p) in [
        ("idle, before", "lat_idle"),
        ("**during `compact()`**", "lat_during"),
        ("idle, after", "lat_after"),
        (
            "control: while another thread only burns CPU, as long as the compaction took",
            "lat_busy",
        ),
    ] {
        let g = |k: &str| med(runs, "sfs", &format!("{p}_{k}"));
        let us = |k: &str| fmt(g(k).map(|v| v / 1e3), 2);
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            fmt(g("count"), 0),
            us("p50_ns"),
            us("p90_ns"),
            us("p99_ns"),
            us("p999_ns"),
            us("max_ns"),
            fmt(g("over_100us"), 0),
            fmt(g("over_1ms"), 0),
            fmt(g("vcsw"), 0),
            fmt(g("ivcsw"), 0),
            fmt(g("tlb"), 0)
        );
    }
    let _ = writeln!(s);
    s
}

struct Target {
    name: &'static str,
    figures: String,
    ratio: Box<dyn Fn(usize) -> Option<f64>>,
    limit: f64,
}

fn targets(runs: &Runs, n_runs: usize) -> String {
    let r = runs.clone();
    let amp_of = move |e: &'static str, k: &'static str| {
        let r = r.clone();
        Box::new(move |i: usize| at(&r, i, e, k)) as Box<dyn Fn(usize) -> Option<f64>>
    };
    let amp = |k: &'static str| amp_of("sfs", k);
    let blocks = |when: &'static str| {
        let r = runs.clone();
        Box::new(move |i: usize| {
            let f = at(&r, i, "sfs", &format!("{when}sfs_file_len"))?;
            let b = at(&r, i, "sfs", &format!("{when}sfs_block_bytes"))?;
            Some(f / b)
        }) as Box<dyn Fn(usize) -> Option<f64>>
    };
    let fig_of = |e: &str, k: &str, live: &str| {
        format!(
            "file {} MB, live {} MB",
            mb(scaled(med(runs, e, k), med(runs, e, live).unwrap_or(0.0))),
            mb(med(runs, e, live))
        )
    };
    let fig = |k: &str, live: &str| fig_of("sfs", k, live);
    let lr = runs.clone();
    let list = vec![
        Target {
            name: "after churn ≤ 1.3 × live bytes",
            figures: fig("churn_after_amp", "churn_live_bytes"),
            ratio: amp("churn_after_amp"),
            limit: 1.3,
        },
        Target {
            name: "after `compact()` ≤ 1.1 × live bytes (churn)",
            figures: fig("churn_compacted_amp", "churn_live_bytes"),
            ratio: amp("churn_compacted_amp"),
            limit: 1.1,
        },
        Target {
            name: "after `compact()` ≤ 1.1 × live bytes (90% deleted, 100-byte values)",
            figures: fig("del_compacted_amp", "del_live_bytes"),
            ratio: amp("del_compacted_amp"),
            limit: 1.1,
        },
        Target {
            name: "the same with automatic compaction off (`sfs-noauto`: all the work is the explicit `compact()`)",
            figures: fig_of("sfs-noauto", "del_compacted_amp", "del_live_bytes"),
            ratio: amp_of("sfs-noauto", "del_compacted_amp"),
            limit: 1.1,
        },
        Target {
            name: "the same (sfs), against sfs's own live blocks (48-byte headers and padding counted as live)",
            figures: format!(
                "file {} MB, live blocks {} MB",
                mb(med(runs, "sfs", "del_compacted_sfs_file_len")),
                mb(med(runs, "sfs", "del_compacted_sfs_block_bytes"))
            ),
            ratio: blocks("del_compacted_"),
            limit: 1.1,
        },
        Target {
            name: "get p99 during `compact()` ≤ 2 × idle p99",
            figures: format!(
                "p99 {} µs during, {} µs idle",
                fmt(med(runs, "sfs", "lat_during_p99_ns").map(|v| v / 1e3), 2),
                fmt(med(runs, "sfs", "lat_idle_p99_ns").map(|v| v / 1e3), 2)
            ),
            ratio: Box::new(move |i| {
                Some(
                    at(&lr, i, "sfs", "lat_during_p99_ns")? / at(&lr, i, "sfs", "lat_idle_p99_ns")?,
                )
            }),
            limit: 2.0,
        },
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Targets (issue 7)\n\nEach ratio is computed within each run; the median of the {n_runs} runs is shown, each run's ratio in brackets.\n"
    );
    let _ = writeln!(
        s,
        "| target | figures (medians) | ratio: median [per run] | limit | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---|");
    for t in list {
        let per: Vec<Option<f64>> = (0..n_runs).map(|i| (t.ratio)(i)).collect();
        let r = median(per.iter().flatten().copied().collect());
        let verdict = match r {
            Some(r) if r <= t.limit => "**met**".to_owned(),
            Some(r) => format!("**missed** by {:.0}%", (r / t.limit - 1.0) * 100.0),
            None => "not measured".into(),
        };
        let each = per
            .iter()
            .map(|r| fmt(*r, 2))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| {} | {} | {} [{each}] | ≤ {} | {verdict} |",
            t.name,
            t.figures,
            fmt(r, 2),
            t.limit
        );
    }
    s
}

/// Replaces the space section of `path` (between its markers).
pub fn write_section(path: &Path, text: &str) -> std::io::Result<()> {
    crate::report::write_between(path, BEGIN, END, text)
}
