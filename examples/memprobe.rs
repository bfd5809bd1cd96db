fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kb();
    let s = sfs::Options::new()
        .sync(sfs::SyncPolicy::Never)
        .open(dir.path().join("m.sfs"))
        .unwrap();
    let t = std::time::Instant::now();
    for i in 0..n {
        let k = (i.wrapping_mul(0x9E3779B97F4A7C15)).to_le_bytes();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&k);
        key[8..].copy_from_slice(&k);
        s.put(key, [7u8; 100]).unwrap();
    }
    let load = t.elapsed();
    let st = s.stats();
    // RSS includes mapped file pages touched; subtract file size estimate.
    let after = rss_kb();
    println!(
        "load {:?} ({:.0} ns/put), index_bytes {} = {:.1} B/entry ({:.1} beyond 16-byte keys), rss delta {} MiB, file {} MiB",
        load,
        load.as_nanos() as f64 / n as f64,
        st.index_bytes,
        st.index_bytes as f64 / n as f64,
        st.index_bytes as f64 / n as f64 - 16.0,
        (after - before) / 1024,
        st.file_len >> 20
    );
    let t = std::time::Instant::now();
    let mut found = 0;
    for i in 0..n {
        let j = (i * 7919) % n;
        let k = (j.wrapping_mul(0x9E3779B97F4A7C15)).to_le_bytes();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&k);
        key[8..].copy_from_slice(&k);
        if s.get(key).unwrap().is_some() {
            found += 1;
        }
    }
    println!(
        "get {:.0} ns/op ({found})",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    drop(s);
    let t = std::time::Instant::now();
    let s = sfs::Options::new()
        .sync(sfs::SyncPolicy::Never)
        .open(dir.path().join("m.sfs"))
        .unwrap();
    println!("open {:?} for {} entries", t.elapsed(), s.len());
}
