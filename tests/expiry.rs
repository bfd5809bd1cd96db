//! Active expiry and events (issue 12): expired entries leave the index and
//! the file by themselves within the delay, their space is reclaimed as a
//! delete would, each is reported once; subscribers never stall or deadlock
//! the store, and a full queue reports its lag.
//!
//! The sweep is driven deterministically with `Store::sweep_expired_now`
//! (the background thread's pass, run at the manual clock's time); the
//! background thread itself is tested on a manual clock and in real time.
//! `SFS_LEASES` sets the scale of the real-time lease test (default 100,000).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::TempStore;
use sfs::testing::{Call, FaultError, FaultStorage, Storage};
use sfs::{Error, Event, ManualClock, Options, Store, SyncPolicy};

const T0: i64 = 1_000_000;

fn manual() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// Options with the background sweep off: the test drives each pass.
fn driven(clock: &Arc<ManualClock>) -> Options {
    Options::new()
        .sync(SyncPolicy::Never)
        .clock(clock.clone())
        .active_expiry(None)
        .auto_compact(None)
}

fn key(i: u32) -> Vec<u8> {
    format!("lease-{i:05}").into_bytes()
}

/// Every event queued now.
fn drain(s: &sfs::Subscriber) -> Vec<Event> {
    std::iter::from_fn(|| s.try_recv()).collect()
}

fn expired_keys(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Expired { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

/// The file as the store's stats describe it: what the space accounting of
/// two stores must agree on.
fn space(s: &Store) -> (u64, u64, usize, u64, usize) {
    let st = s.stats();
    (
        st.file_len,
        st.live_bytes,
        st.free_blocks,
        st.free_bytes,
        st.entries,
    )
}

#[test]
fn a_sweep_removes_exactly_the_expired_entries_reclaims_their_space_and_reports_each_once() {
    let clock = manual();
    let t = TempStore::new();
    let s = driven(&clock).open(&t.path).unwrap();
    // The same writes into a twin store, where deletes stand for the expiries.
    let twin_dir = TempStore::new();
    let twin = driven(&clock).open(&twin_dir.path).unwrap();
    let events = s.subscribe_with_capacity(1000);
    for i in 0..300u32 {
        let value = vec![i as u8; 50 + (i as usize % 7) * 40];
        let ttl = match i % 3 {
            0 => None,
            1 => Some(Duration::from_secs(10)),
            _ => Some(Duration::from_secs(20)),
        };
        for store in [&s, &twin] {
            match ttl {
                None => store.put(key(i), &value).unwrap(),
                Some(ttl) => store.put_with_ttl(key(i), &value, ttl).unwrap(),
            }
        }
    }
    // Nothing has expired: a sweep does nothing.
    assert_eq!(s.sweep_expired_now().unwrap(), 0);
    // Half of the 10 s leases are renewed at 5 s, to 15 s.
    clock.advance(Duration::from_secs(5));
    let renewed: BTreeSet<u32> = (0..300).filter(|i| i % 3 == 1 && i % 2 == 0).collect();
    for &i in &renewed {
        assert!(s.touch(key(i), Duration::from_secs(10)).unwrap());
        assert!(twin.touch(key(i), Duration::from_secs(10)).unwrap());
    }
    clock.advance(Duration::from_millis(4999));
    assert_eq!(s.sweep_expired_now().unwrap(), 0, "1 ms before the expiry");

    clock.advance(Duration::from_millis(1));
    let first: BTreeSet<Vec<u8>> = (0..300u32)
        .filter(|i| i % 3 == 1 && !renewed.contains(i))
        .map(key)
        .collect();
    assert_eq!(s.sweep_expired_now().unwrap(), first.len());
    for k in &first {
        assert!(twin.delete(k).is_ok());
    }
    let got = expired_keys(&drain(&events));
    assert_eq!(got.len(), first.len(), "one event per removed entry");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), first);
    s.check_invariants().unwrap();
    twin.check_invariants().unwrap();
    assert_eq!(space(&s), space(&twin), "file and free list as if deleted");
    for i in 0..300u32 {
        let gone = first.contains(&key(i));
        assert_eq!(s.contains(key(i)), !gone, "key {i}");
    }
    let st = s.stats();
    assert_eq!(st.expired_purged, first.len() as u64);
    assert_eq!(st.expiry_delay_max, Some(Duration::ZERO));
    assert_eq!(st.events_delivered, first.len() as u64);
    assert_eq!(st.events_dropped, 0);

    // A second sweep at the same time finds nothing more.
    assert_eq!(s.sweep_expired_now().unwrap(), 0);
    assert!(drain(&events).is_empty());

    // At 20 s: the renewed leases (15 s, 5 s late) and the 20 s ones go.
    clock.advance(Duration::from_secs(10));
    let second: BTreeSet<Vec<u8>> = (0..300u32)
        .filter(|i| i % 3 == 2 || renewed.contains(i))
        .map(key)
        .collect();
    assert_eq!(s.sweep_expired_now().unwrap(), second.len());
    for k in &second {
        twin.delete(k).unwrap();
    }
    let ev = drain(&events);
    assert_eq!(
        expired_keys(&ev).into_iter().collect::<BTreeSet<_>>(),
        second
    );
    assert_eq!(ev.len(), second.len());
    // Each event carries the expiry the entry had.
    for e in &ev {
        let Event::Expired { key, expired_at } = e else {
            panic!("{e:?}")
        };
        let i: u32 = String::from_utf8_lossy(&key[6..]).parse().unwrap();
        let want = if renewed.contains(&i) { 15 } else { 20 };
        let ms = expired_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(ms, T0 + want * 1000, "key {i}");
    }
    s.check_invariants().unwrap();
    assert_eq!(space(&s), space(&twin));
    assert_eq!(s.len(), 100);
    assert_eq!(s.stats().entries, 100);
    let st = s.stats();
    assert_eq!(st.expiry_delay_max, Some(Duration::from_secs(5)));
    // The latest 256 removals: 50 + 100 on time, 50 (renewed) 5 s late.
    assert_eq!(st.expiry_delay_p50, Some(Duration::ZERO));

    // Reopened, the file holds the 100 entries without expiry, nothing else.
    drop(events);
    s.close().unwrap();
    let s = driven(&clock).open(&t.path).unwrap();
    assert_eq!(s.stats().expired_purged, 0, "nothing left for the open");
    assert_eq!(s.len(), 100);
    s.check_invariants().unwrap();
}

#[test]
fn every_runtime_removal_of_an_expired_entry_is_reported_once_whatever_removes_it() {
    let clock = manual();
    let t = TempStore::new();
    let s = driven(&clock).max_entries(3).open(&t.path).unwrap();
    let ev = s.subscribe();
    s.put_with_ttl(b"a", b"1", Duration::from_secs(1)).unwrap();
    s.put_with_ttl(b"b", b"2", Duration::from_secs(1)).unwrap();
    s.put(b"c", b"3").unwrap();
    clock.advance(Duration::from_secs(2));
    // A delete of an expired key: reported as expired (not as deleted).
    assert!(!s.delete(b"a").unwrap());
    // An insert at the cap removes the expired `b` first (no eviction).
    s.put(b"d", b"4").unwrap();
    s.put(b"e", b"5").unwrap();
    // Now the cap evicts the least recently used, `c`.
    s.put(b"f", b"6").unwrap();
    assert!(s.delete(b"d").unwrap());
    s.clear().unwrap();
    let ms = |t: i64| UNIX_EPOCH + Duration::from_millis(t as u64);
    assert_eq!(
        drain(&ev),
        vec![
            Event::Expired {
                key: b"a".to_vec(),
                expired_at: ms(T0 + 1000)
            },
            Event::Expired {
                key: b"b".to_vec(),
                expired_at: ms(T0 + 1000)
            },
            Event::Evicted { key: b"c".to_vec() },
            Event::Deleted { key: b"d".to_vec() },
            Event::Cleared,
        ]
    );
    // Nothing more from sweeps or purges: each was reported once.
    assert_eq!(s.sweep_expired_now().unwrap(), 0);
    assert_eq!(s.purge_expired().unwrap(), 0);
    assert!(ev.try_recv().is_none());
    let st = s.stats();
    assert_eq!((st.expired_purged, st.evictions), (1, 1));
}

#[test]
fn expiries_removed_by_an_open_are_counted_not_reported() {
    let clock = manual();
    let t = TempStore::new();
    let s = driven(&clock).open(&t.path).unwrap();
    for i in 0..10 {
        s.put_with_ttl(key(i), b"v", Duration::from_secs(1))
            .unwrap();
    }
    s.close().unwrap();
    clock.advance(Duration::from_secs(5));
    let s = driven(&clock).open(&t.path).unwrap();
    let ev = s.subscribe();
    assert_eq!(s.stats().expired_purged, 10);
    assert_eq!(s.sweep_expired_now().unwrap(), 0);
    assert!(ev.try_recv().is_none(), "an open's removals are not events");
}

#[test]
fn the_background_thread_sweeps_on_a_manual_clock() {
    let clock = manual();
    let t = TempStore::new();
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .clock(clock.clone())
        .active_expiry(Some(Duration::from_millis(20)))
        .open(&t.path)
        .unwrap();
    let ev = s.subscribe();
    for i in 0..200 {
        let ttl = Duration::from_secs(if i < 100 { 10 } else { 60 });
        s.put_with_ttl(key(i), b"value", ttl).unwrap();
    }
    clock.advance(Duration::from_secs(5));
    for i in 0..50 {
        assert!(s.touch(key(i), Duration::from_secs(30)).unwrap());
    }
    // Past the 10 s leases, but not the renewed (35 s) or 60 s ones.
    clock.advance(Duration::from_secs(6));
    let mut got = BTreeSet::new();
    while got.len() < 50 {
        match ev.recv_timeout(Duration::from_secs(20)) {
            Some(Event::Expired { key, .. }) => assert!(got.insert(key), "reported twice"),
            other => panic!("after {} expiries: {other:?}", got.len()),
        }
    }
    assert_eq!(got, (50..100).map(key).collect());
    // It is the thread's work: no call from the test removed anything.
    let st = s.stats();
    assert_eq!(st.entries, 150);
    assert_eq!(st.expired_purged, 50);
    s.check_invariants().unwrap();
    // And it goes on: the rest expire after another advance.
    clock.advance(Duration::from_secs(60));
    let mut n = 0;
    while n < 150 {
        match ev.recv_timeout(Duration::from_secs(20)) {
            Some(Event::Expired { .. }) => n += 1,
            other => panic!("after {n} more: {other:?}"),
        }
    }
    assert_eq!(s.stats().entries, 0);
    s.check_invariants().unwrap();
    s.close().unwrap();
    assert_eq!(ev.recv(), None, "closing ends the subscription");
}

#[test]
fn a_write_of_an_expiry_wakes_an_idle_thread() {
    // The system clock, and no entry with an expiry: the thread sleeps
    // until a write gives it one (it does not poll). The put must wake it.
    let t = TempStore::new();
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .active_expiry(Some(Duration::from_millis(50)))
        .open(&t.path)
        .unwrap();
    s.put(b"forever", b"v").unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the thread is asleep by now
    let ev = s.subscribe();
    s.put_with_ttl(b"soon", b"v", Duration::from_millis(30))
        .unwrap();
    match ev.recv_timeout(Duration::from_secs(30)) {
        Some(Event::Expired { key, .. }) => assert_eq!(key, b"soon"),
        other => panic!("{other:?}"),
    }
    let st = s.stats();
    assert_eq!(st.entries, 1);
    // Removed by the thread 50 ms after the expiry, give or take the
    // machine's scheduling: well under a second.
    let late = st.expiry_delay_max.unwrap();
    assert!(late < Duration::from_secs(2), "{late:?}");
    s.close().unwrap();
}

#[test]
fn renewed_leases_stay_and_the_others_go_by_themselves_in_real_time() {
    let n: u32 = std::env::var("SFS_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ttl = Duration::from_secs(2);
    let delay = Duration::from_secs(1);
    let t = TempStore::new();
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Never)
            .active_expiry(Some(delay))
            .event_capacity(2 * n as usize)
            .open(&t.path)
            .unwrap(),
    );
    let ev = s.subscribe();
    let started = Instant::now();
    for i in 0..n {
        s.put_with_ttl(key(i), [7u8; 64], ttl).unwrap();
    }
    let loaded = started.elapsed();
    // The heartbeat: renews the even leases every 300 ms until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let heart = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Acquire) {
                for i in (0..n).step_by(2) {
                    assert!(s.touch(key(i), ttl).unwrap(), "lease {i} lapsed");
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            rounds
        })
    };
    // Wait for the odd ones to be reported, each once.
    let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
    let deadline = Instant::now() + ttl + delay + Duration::from_secs(60);
    while seen.len() < (n / 2) as usize && Instant::now() < deadline {
        if let Some(Event::Expired { key, .. }) = ev.recv_timeout(Duration::from_millis(200)) {
            *seen.entry(key).or_default() += 1;
        }
    }
    let gone_after = started.elapsed();
    let st = s.stats();
    // Checked while the heartbeat still runs.
    let still_there = (0..n).step_by(2).all(|i| s.contains(key(i)));
    stop.store(true, Ordering::Release);
    let rounds = heart.join().unwrap();
    eprintln!(
        "{n} leases: loaded in {loaded:?}, odd ones gone after {gone_after:?} \
         ({rounds} heartbeat rounds); delay p50 {:?}, max {:?}",
        st.expiry_delay_p50, st.expiry_delay_max
    );
    assert_eq!(seen.len(), (n / 2) as usize, "every lapsed lease reported");
    assert!(seen.values().all(|&c| c == 1), "each exactly once");
    assert!(
        seen.keys()
            .all(|k| String::from_utf8_lossy(&k[6..]).parse::<u32>().unwrap() % 2 == 1),
        "only lapsed leases"
    );
    assert!(still_there, "a renewed lease was removed");
    assert_eq!(st.entries, (n / 2) as usize);
    assert_eq!(st.events_dropped, 0);
    // Within the delay of their expiry, give or take a loaded machine.
    let late = st.expiry_delay_max.unwrap();
    assert!(late <= delay + Duration::from_millis(1500), "{late:?}");
    // The file holds the renewed leases and free space the free list
    // accounts for, nothing else.
    s.check_invariants().unwrap();
    let st = s.stats();
    assert_eq!(
        st.file_len,
        64 + st.live_bytes + st.free_bytes + st.pending_free_bytes,
        "{st:?}"
    );
    // A fresh open of the file, at the time of the check, finds the
    // renewed leases and nothing else.
    let now_ms = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    s.shutdown().unwrap();
    drop(s);
    let ro = Options::new()
        .read_only(true)
        .clock(Arc::new(ManualClock::new(now_ms)))
        .open(&t.path)
        .unwrap();
    assert_eq!(ro.stats().entries, (n / 2) as usize);
    assert_eq!(ro.stats().expired_purged, 0);
    assert!((0..n).all(|i| ro.contains(key(i)) == (i % 2 == 0)));
}

#[test]
fn a_subscriber_that_never_reads_costs_writers_nothing_and_is_told_it_lagged() {
    let clock = manual();
    let t = TempStore::new();
    let s = driven(&clock).open(&t.path).unwrap();
    let sleeper = s.subscribe_with_capacity(16);
    for i in 0..5000u32 {
        s.put(key(i), b"v").unwrap();
        assert!(s.delete(key(i)).unwrap());
        assert!(sleeper.len() <= 16);
    }
    assert_eq!(sleeper.len(), 16, "bounded");
    assert_eq!(sleeper.dropped(), 5000 - 16);
    let st = s.stats();
    assert_eq!((st.events_delivered, st.events_dropped), (16, 5000 - 16));
    let got = drain(&sleeper);
    assert_eq!(got.len(), 17);
    assert_eq!(got[0], Event::Deleted { key: key(0) });
    assert_eq!(got[16], Event::Lagged { missed: 5000 - 16 });
    // Dropped, it costs nothing: the store stops collecting events.
    drop(sleeper);
    s.put(b"x", b"v").unwrap();
    s.delete(b"x").unwrap();
    let st2 = s.stats();
    assert_eq!(st2.subscribers, 0);
    assert_eq!(
        (st2.events_delivered, st2.events_dropped),
        (st.events_delivered, st.events_dropped)
    );
}

#[test]
fn several_subscribers_each_get_every_event() {
    let clock = manual();
    let t = TempStore::new();
    let s = driven(&clock).open(&t.path).unwrap();
    let a = s.subscribe();
    let b = s.subscribe();
    s.put(b"k", b"v").unwrap();
    s.delete(b"k").unwrap();
    assert_eq!(s.stats().subscribers, 2);
    for sub in [&a, &b] {
        assert_eq!(drain(sub), vec![Event::Deleted { key: b"k".to_vec() }]);
    }
}

#[test]
fn a_subscriber_that_calls_back_into_the_store_does_not_deadlock() {
    let clock = manual();
    let t = TempStore::new();
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Always)
            .clock(clock.clone())
            .max_entries(50)
            .active_expiry(Some(Duration::from_millis(5)))
            .event_capacity(8)
            .open(&t.path)
            .unwrap(),
    );
    let ev = s.subscribe();
    // The subscriber's loop writes and reads the store for every event.
    let listener = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let mut n = 0u64;
            for e in ev.iter() {
                n += 1;
                let k = match e {
                    Event::Expired { key, .. }
                    | Event::Evicted { key }
                    | Event::Deleted { key } => key,
                    Event::Cleared | Event::Lagged { .. } => b"marker".to_vec(),
                    _ => continue,
                };
                let mut tomb = b"seen:".to_vec();
                tomb.extend_from_slice(&k);
                let wrote = s
                    .put_with_ttl(&tomb, b"1", Duration::from_millis(1))
                    .and_then(|()| s.get(&k))
                    .and_then(|_| s.delete(&tomb));
                match wrote {
                    Ok(_) => {}
                    Err(Error::Closed { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            n
        })
    };
    // Meanwhile: expiries (swept by the thread and by purge), evictions,
    // deletes and clears.
    for round in 0..20u32 {
        for i in 0..60 {
            s.put_with_ttl(key(round * 100 + i), b"v", Duration::from_millis(10))
                .unwrap();
        }
        s.delete(key(round * 100)).unwrap();
        clock.advance(Duration::from_millis(20));
        if round % 3 == 0 {
            s.purge_expired().unwrap();
        }
        if round % 7 == 0 {
            s.clear().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    s.shutdown().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(listener.join()));
    let n = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the subscriber's loop is stuck")
        .unwrap();
    assert!(n > 20, "{n} events");
}

#[test]
fn a_failed_sweep_is_reported_as_a_background_error_and_retried() {
    let clock = manual();
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .clock(clock.clone())
        .auto_compact(None)
        .active_expiry(Some(Duration::from_millis(10)))
        .open_on("sweep.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put_with_ttl(b"k", b"v", Duration::from_secs(1)).unwrap();
    fs.fail_next(Call::Write, FaultError::Io);
    clock.advance(Duration::from_secs(2));
    let started = Instant::now();
    while s.stats().background_errors == 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = s.stats();
    assert_eq!(st.background_errors, 1, "{st:?}");
    assert!(
        st.last_background_error
            .as_deref()
            .is_some_and(|e| e.starts_with("removing expired entries")),
        "{st:?}"
    );
    let e = s.sync().unwrap_err();
    assert!(matches!(e, Error::Background { .. }), "{e}");
    // The entry stayed, valid; the next sweep (a delay later) removes it.
    while s.stats().entries > 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.stats().entries, 0);
    assert_eq!(s.stats().background_errors, 1);
    s.check_invariants().unwrap();
}

#[test]
fn bad_expiry_and_event_options_are_refused() {
    let t = TempStore::new();
    for o in [
        Options::new().active_expiry(Some(Duration::ZERO)),
        Options::new().event_capacity(0),
    ] {
        let e = o.open(&t.path).unwrap_err();
        assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    }
    assert!(!t.path.exists());
}
