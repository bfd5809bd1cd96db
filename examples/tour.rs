//! A tour of sfs: create a store, write, read, overwrite, expire, evict,
//! reopen, and leave the file behind for `sfs-dump` to inspect.
//!
//! ```text
//! cargo run --example tour [PATH]      (default PATH: target/tour.sfs)
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use sfs::{Options, PutOptions, Store, SyncPolicy};

fn show(store: &Store, what: &str) {
    let st = store.stats();
    println!(
        "  [{what}] {} entries, file {} bytes ({} live, {} free in {} blocks)",
        st.entries, st.file_len, st.live_bytes, st.free_bytes, st.free_blocks
    );
}

fn text(v: Option<Vec<u8>>) -> String {
    match v {
        Some(v) => format!("{:?}", String::from_utf8_lossy(&v)),
        None => "(none)".into(),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "target/tour.sfs".into());
    let _ = std::fs::remove_file(&path);

    println!(
        "1. Create {} with a cap of 8 entries (least recently used goes first)",
        path.display()
    );
    let store = Options::new()
        .max_entries(8)
        .sync(SyncPolicy::Always)
        .open(&path)?;

    println!("2. Write and read");
    for (name, city) in [
        ("ada", "London"),
        ("grace", "Arlington"),
        ("linus", "Helsinki"),
        ("barbara", "Boston"),
    ] {
        store.put(format!("user:{name}"), city)?;
    }
    println!("  user:grace -> {}", text(store.get("user:grace")?));
    show(&store, "after 4 puts");

    println!("3. Overwrite with a longer value, then delete");
    store.put("user:ada", "London, then the Analytical Engine")?;
    println!("  user:ada -> {}", text(store.get("user:ada")?));
    println!("  delete user:linus -> {}", store.delete("user:linus")?);
    show(
        &store,
        "the old copy and the deleted entry became free space",
    );

    println!("4. Expiry: a session that lives 300 ms, with metadata");
    store.put_with(
        "session:42",
        "token-abc",
        &PutOptions::new()
            .ttl(Duration::from_millis(300))
            .metadata(b"ip=10.0.0.7"),
    )?;
    let e = store.get_entry("session:42")?.expect("just written");
    println!(
        "  session:42 -> {:?}, metadata {:?}",
        String::from_utf8_lossy(&e.value),
        String::from_utf8_lossy(&e.metadata)
    );
    std::thread::sleep(Duration::from_millis(400));
    println!(
        "  after 400 ms: contains(session:42) = {}",
        store.contains("session:42")
    );
    println!("  purge_expired() removed {}", store.purge_expired()?);

    println!("5. Eviction: fill past the cap of 8");
    store.get("user:grace")?; // a use: grace is now the most recently used
    for i in 0..7 {
        store.put(format!("cache:{i}"), vec![b'x'; 200 + 100 * i])?;
    }
    let mut keys: Vec<String> = store
        .keys()
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    keys.sort();
    println!("  keys now: {keys:?}");
    let gone: Vec<&str> = ["user:ada", "user:grace", "user:barbara"]
        .into_iter()
        .filter(|k| !store.contains(k))
        .collect();
    println!(
        "  evicted: {} entries, {gone:?} (grace was read, so she stayed)",
        store.stats().evictions
    );

    println!("6. Zero-copy read: the value stays valid while the key is deleted");
    let v = store.get_ref("cache:6")?.expect("present");
    store.delete("cache:6")?;
    println!(
        "  held {} bytes, all 'x': {}",
        v.len(),
        v.iter().all(|&b| b == b'x')
    );
    drop(v);

    println!("7. Make holes, close, reopen: everything is still there");
    store.delete("cache:1")?;
    store.delete("cache:3")?;
    store.close()?;
    let store = Store::open(&path)?;
    println!("  user:grace -> {}", text(store.get("user:grace")?));
    println!(
        "  cache:4 is {} bytes",
        store.get("cache:4")?.map_or(0, |v| v.len())
    );
    show(&store, "after reopen");
    store.close()?;

    println!(
        "\nThe file is left at {} — look inside with:",
        path.display()
    );
    println!("  cargo run -q --bin sfs-dump -- {}", path.display());
    println!("  cargo run -q --bin sfs-dump -- {} --map", path.display());
    Ok(())
}
