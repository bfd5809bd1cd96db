//! Active expiry (issue 12): what it costs and what it achieves. A plain
//! program (no criterion: the figures are ratios within one run and the
//! latencies of one mass expiry), run with
//! `cargo bench --bench expiry` (`SFS_EXPIRY_N`: entries, default 1,000,000;
//! files under `SFS_BENCH_DIR`, default the system temp dir).
//!
//! 1. Put and get with active expiry on (the default, 1 s) versus off, every
//!    entry with a TTL of an hour (so nothing expires, and both modes keep
//!    the expiry heap): three rounds each, alternating off/on, medians and their ratio.
//! 2. N entries expiring in the same second, beside 100,000 entries without
//!    expiry that a reader thread gets at random all along: how long the
//!    background thread takes to remove them all, and the get latency (p50,
//!    p99, p99.9) while it does, against the second before the expiry.
//! 3. Index memory per entry (`Stats::index_bytes`, beyond the 16-byte key)
//!    with and without expiries, in the store that wrote them and after a
//!    reopen.
//!
//! `SyncPolicy::Never`, automatic compaction off, 16-byte keys and 100-byte
//! values throughout.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sfs::{Options, Store, SyncPolicy};
use support::{KEY_LEN, Lcg, key, value};

fn dir() -> tempfile::TempDir {
    match std::env::var_os("SFS_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("SFS_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

fn opts(active: bool) -> Options {
    Options::new()
        .sync(SyncPolicy::Never)
        .auto_compact(None)
        .active_expiry(active.then_some(Duration::from_secs(1)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// (ns per put, ns per get) of one round.
fn put_get_round(n: u64, active: bool) -> (f64, f64) {
    let d = dir();
    let s = opts(active).open(d.path().join("pg.sfs")).unwrap();
    let v = value(100);
    let ttl = Duration::from_secs(3600);
    let t = Instant::now();
    for i in 0..n {
        s.put_with_ttl(key(i), &v, ttl).unwrap();
    }
    let put = t.elapsed().as_nanos() as f64 / n as f64;
    let mut rng = Lcg::new(7);
    let t = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..n {
        bytes += s.get(key(rng.below(n))).unwrap().map_or(0, |v| v.len());
    }
    let get = t.elapsed().as_nanos() as f64 / n as f64;
    assert_eq!(bytes, 100 * n as usize);
    (put, get)
}

fn put_get(n: u64) {
    let (mut off, mut on) = ((vec![], vec![]), (vec![], vec![]));
    for round in 0..6 {
        let active = round % 2 == 1;
        let (p, g) = put_get_round(n, active);
        let acc = if active { &mut on } else { &mut off };
        acc.0.push(p);
        acc.1.push(g);
    }
    let (p_off, g_off, p_on, g_on) = (median(off.0), median(off.1), median(on.0), median(on.1));
    println!(
        "## 1. put and get, active expiry on vs off ({n} entries, TTL 1 h, 3 rounds each, alternating)"
    );
    println!("| | off | on | on ÷ off |");
    println!("|---|---:|---:|---:|");
    println!(
        "| put_with_ttl (ns) | {p_off:.0} | {p_on:.0} | {:.3} |",
        p_on / p_off
    );
    println!(
        "| get (ns) | {g_off:.0} | {g_on:.0} | {:.3} |",
        g_on / g_off
    );
}

fn mass_expiry(n: u64) {
    const KEEP: u64 = 100_000;
    let d = dir();
    let s = Arc::new(opts(true).open(d.path().join("mass.sfs")).unwrap());
    let v = value(100);
    for i in 0..KEEP {
        s.put(key(1 << 40 | i), &v).unwrap();
    }
    // Every entry expires at the same moment, some seconds after the load.
    let load_start = Instant::now();
    let at = SystemTime::now() + Duration::from_secs(4) + Duration::from_nanos(n * 1500);
    let at_instant = load_start + Duration::from_secs(4) + Duration::from_nanos(n * 1500);
    for i in 0..n {
        s.put_with_expiry(key(i), &v, at).unwrap();
    }
    let loaded = load_start.elapsed();
    assert!(
        Instant::now() + Duration::from_millis(1100) < at_instant,
        "load too slow"
    );
    // phase: 0 before the last second, 1 the second before the expiry,
    // 2 while the removal runs, 3 after.
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, phase, stop) = (Arc::clone(&s), Arc::clone(&phase), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut lat: [Vec<u32>; 4] = Default::default();
            let mut rng = Lcg::new(11);
            while !stop.load(Ordering::Relaxed) {
                let k = key(1 << 40 | rng.below(KEEP));
                let p = phase.load(Ordering::Relaxed) as usize;
                let t = Instant::now();
                let got = s.get(k).unwrap();
                let ns = t.elapsed().as_nanos();
                assert!(got.is_some());
                lat[p].push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            lat
        })
    };
    std::thread::sleep(
        at_instant.saturating_duration_since(Instant::now() + Duration::from_secs(1)),
    );
    phase.store(1, Ordering::Relaxed);
    let total = KEEP as usize + n as usize;
    while s.stats().entries == total {
        std::thread::sleep(Duration::from_micros(500));
    }
    let first = Instant::now();
    phase.store(2, Ordering::Relaxed);
    while s.stats().entries > KEEP as usize {
        std::thread::sleep(Duration::from_micros(500));
    }
    let done = Instant::now();
    phase.store(3, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut lat = reader.join().unwrap();
    for l in &mut lat {
        l.sort_unstable();
    }
    let st = s.stats();
    println!();
    println!(
        "## 2. {n} entries expiring in the same second, beside {KEEP} without expiry (loaded in {loaded:.1?})"
    );
    println!(
        "- removal: first removal {:.0?} after the expiry, all removed {:.2?} later ({:.0} ns per entry); \
         Stats: expired_purged {}, expiry delay p50 {:?}, max {:?}",
        first.saturating_duration_since(at_instant),
        done - first,
        (done - first).as_nanos() as f64 / n as f64,
        st.expired_purged,
        st.expiry_delay_p50,
        st.expiry_delay_max
    );
    println!("| get latency (µs) | gets | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, l) in [
        ("the second before the expiry (idle)", &lat[1]),
        ("during the removal", &lat[2]),
        ("after it", &lat[3]),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
            l.len(),
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 0.999),
            pct(l, 1.0)
        );
    }
    println!(
        "- p99 during the removal ÷ idle: {:.2}",
        pct(&lat[2], 0.99) / pct(&lat[1], 0.99)
    );
    assert_eq!(st.entries, KEEP as usize);
}

fn memory(n: u64) {
    println!();
    println!("## 3. index memory per entry beyond the {KEY_LEN}-byte key ({n} entries)");
    println!("| entries | written | after a reopen |");
    println!("|---|---:|---:|");
    for with_ttl in [false, true] {
        let d = dir();
        let path = d.path().join("mem.sfs");
        let s = opts(false).open(&path).unwrap();
        let v = value(100);
        for i in 0..n {
            if with_ttl {
                s.put_with_ttl(key(i), &v, Duration::from_secs(3600))
                    .unwrap();
            } else {
                s.put(key(i), &v).unwrap();
            }
        }
        let per = |s: &Store| {
            let st = s.stats();
            st.index_bytes as f64 / st.entries as f64 - KEY_LEN as f64
        };
        let written = per(&s);
        s.close().unwrap();
        let s = opts(false).open(&path).unwrap();
        let reopened = per(&s);
        println!(
            "| {} | {written:.1} B | {reopened:.1} B |",
            if with_ttl {
                "each with a TTL"
            } else {
                "without expiry"
            }
        );
    }
}

fn main() {
    let n: u64 = std::env::var("SFS_EXPIRY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    put_get(n / 2);
    mass_expiry(n);
    memory(n);
}
