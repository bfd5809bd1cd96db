//! A tiny service registry: instances register with a TTL and renew it with
//! heartbeats (`touch`); a watcher learns, from the store's events, when one
//! expires because its heartbeats stopped. Nobody calls `purge_expired`:
//! active expiry removes the lapsed lease (from the index and the file)
//! about `active_expiry` after its TTL.
//!
//! ```text
//! cargo run --example registry [PATH]      (default PATH: target/registry.sfs)
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sfs::{Event, Options, Store, SyncPolicy};

const TTL: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(300);

/// One instance: registers, then renews its lease every heartbeat until
/// `beating` turns false (it "crashes") or the registry closes.
fn run_instance(
    registry: Arc<Store>,
    name: &'static str,
    addr: &'static str,
    beating: Arc<AtomicBool>,
) {
    let key = format!("instance/{name}");
    if let Err(e) = registry.put_with_ttl(&key, addr, TTL) {
        eprintln!("{name}: cannot register: {e}");
        return;
    }
    println!("  {name} registered at {addr} (TTL {TTL:?}, heartbeat every {HEARTBEAT:?})");
    while beating.load(Ordering::Acquire) {
        std::thread::sleep(HEARTBEAT);
        match registry.touch(&key, TTL) {
            Ok(true) => {}
            Ok(false) => {
                println!("  {name}: my lease had lapsed; registering again");
                if registry.put_with_ttl(&key, addr, TTL).is_err() {
                    return;
                }
            }
            Err(_) => return, // the registry is closing
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "target/registry.sfs".into());
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    // Renewals are frequent: a periodic sync keeps each one cheap (a lost
    // renewal only shortens a lease). Lapsed leases are removed within
    // 200 ms of their expiry.
    let registry = Arc::new(
        Options::new()
            .sync(SyncPolicy::Periodic(Duration::from_secs(1)))
            .active_expiry(Some(Duration::from_millis(200)))
            .open(&path)?,
    );
    println!("1. A watcher subscribes to the registry's events");
    let events = registry.subscribe();
    let started = Instant::now();
    let watcher = std::thread::spawn(move || {
        let mut lapsed = Vec::new();
        for event in events.iter() {
            match event {
                Event::Expired { key, .. } => {
                    let name = String::from_utf8_lossy(&key).into_owned();
                    println!(
                        "  watcher: {name} expired after {:.1?}: its heartbeats stopped",
                        started.elapsed()
                    );
                    lapsed.push(name);
                }
                Event::Lagged { missed } => println!("  watcher: missed {missed} events"),
                _ => {}
            }
        }
        lapsed
    });

    println!("2. Three instances register and heartbeat");
    let instances = [
        ("alpha", "10.0.0.1:8080"),
        ("beta", "10.0.0.2:8080"),
        ("gamma", "10.0.0.3:8080"),
    ];
    let mut beats = Vec::new();
    let mut threads = Vec::new();
    for (name, addr) in instances {
        let beating = Arc::new(AtomicBool::new(true));
        beats.push(Arc::clone(&beating));
        let r = Arc::clone(&registry);
        threads.push(std::thread::spawn(move || {
            run_instance(r, name, addr, beating)
        }));
    }
    std::thread::sleep(Duration::from_millis(1200));
    println!("3. beta stops heartbeating (as a crashed instance would)");
    beats[1].store(false, Ordering::Release);
    // Its lease lapses one TTL after its last heartbeat, and is removed
    // about 200 ms later: wait for that, no longer than 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.contains("instance/beta") || registry.stats().expired_purged == 0 {
        if Instant::now() > deadline {
            return Err("beta's lease was not removed within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut live: Vec<String> = registry
        .keys()
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    live.sort();
    println!("4. Registered now: {live:?}");
    let st = registry.stats();
    println!(
        "   {} entries in the index, {} expired and removed; delay from expiry to removal: max {:?}",
        st.entries, st.expired_purged, st.expiry_delay_max
    );

    for b in &beats {
        b.store(false, Ordering::Release);
    }
    for t in threads {
        t.join().map_err(|_| "an instance thread panicked")?;
    }
    registry.shutdown()?; // ends the watcher's loop
    let lapsed = watcher.join().map_err(|_| "the watcher panicked")?;
    println!("5. The watcher saw {lapsed:?} expire");
    if lapsed != ["instance/beta"] {
        return Err(format!("expected only beta to lapse, saw {lapsed:?}").into());
    }
    Ok(())
}
