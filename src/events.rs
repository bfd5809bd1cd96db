//! Events: what happened to keys ([`Event`]), handed to each [`Subscriber`]
//! through a bounded queue of its own.
//!
//! The store collects the events of an operation while it holds its locks
//! and hands them over once it has released them all; handing over never
//! waits for a subscriber: a full queue drops the event, counts it, and
//! tells the subscriber how many it missed ([`Event::Lagged`]) where the gap
//! is. This module never calls into the store and runs no user code.
//!
//! # What is promised
//! - Every entry that the store removes at run time because it expired (the
//!   background sweep, [`Store::purge_expired`](crate::Store::purge_expired),
//!   an insert at the entry cap making room, a `delete` of a key that had
//!   expired) is reported once as [`Event::Expired`] to every subscriber that
//!   existed at the time and had room; an expired entry overwritten by a put
//!   before its removal is not reported (it was replaced).
//! - Every entry the entry cap evicts is reported once as [`Event::Evicted`];
//!   every `delete` that removed a live key as [`Event::Deleted`]; every
//!   `clear` as [`Event::Cleared`] (the keys it removed are not listed).
//! - Events of one thread's operations arrive in the order they happened;
//!   events of different threads in the order they were handed over, which
//!   may differ slightly from the order of the removals.
//! - Nothing is reported for what happens while nobody subscribes, nor for
//!   what an open removes (expired entries, the entry cap, damage): after a
//!   crash and reopen, entries that expired while the store was down, or
//!   whose removal the crash cut short, leave silently; `Stats::expired_purged`
//!   counts them. A crash may also lose events still queued.
//! - A subscriber that is dropped costs nothing: the store stops collecting
//!   events when the last one goes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

/// Something that happened to the store's keys (see [`Store::subscribe`]).
///
/// Keys are given as bytes; for a [`TypedStore`](crate::TypedStore), decode
/// them with [`TypedStore::decode_key`](crate::TypedStore::decode_key).
/// Values are not given: the value of an expired or evicted entry is gone
/// from the file by the time the event is read, and copying every value out
/// on its way would cost every removal a read.
///
/// [`Store::subscribe`]: crate::Store::subscribe
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The entry expired and was removed.
    Expired {
        /// Its key.
        key: Vec<u8>,
        /// The expiry it had.
        expired_at: SystemTime,
    },
    /// The entry was evicted by the entry cap (least recently used).
    Evicted {
        /// Its key.
        key: Vec<u8>,
    },
    /// A `delete` removed the live entry.
    Deleted {
        /// Its key.
        key: Vec<u8>,
    },
    /// `clear` removed every entry.
    Cleared,
    /// The queue was full: this many events were dropped here, between the
    /// event before this one and the event after it.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// What the store reports about its events (for [`Stats`](crate::Stats)).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EventCounts {
    pub delivered: u64,
    pub dropped: u64,
    pub subscribers: usize,
}

/// One subscriber's queue.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
}

struct QueueState {
    /// Events and lag markers; at most `capacity` of them.
    items: VecDeque<Event>,
    /// Events dropped since the last marker.
    lag: u64,
    /// Events dropped in all.
    dropped: u64,
    /// The store is gone: no more events will come.
    closed: bool,
}

impl Queue {
    /// Adds `event`, or drops it if the queue is full. Returns whether it
    /// was queued. Never waits for the subscriber: its lock is held only
    /// around a push or a pop.
    fn push(&self, event: Event) -> bool {
        let mut st = self.state.lock();
        if st.items.len() >= self.capacity {
            st.lag += 1;
            st.dropped += 1;
            return false;
        }
        if st.lag > 0 {
            let missed = std::mem::take(&mut st.lag);
            st.items.push_back(Event::Lagged { missed });
            if st.items.len() >= self.capacity {
                st.lag = 1;
                st.dropped += 1;
                drop(st);
                self.ready.notify_one();
                return false;
            }
        }
        st.items.push_back(event);
        drop(st);
        self.ready.notify_one();
        true
    }

    fn pop(st: &mut QueueState) -> Option<Event> {
        st.items.pop_front().or_else(|| {
            (st.lag > 0).then(|| Event::Lagged {
                missed: std::mem::take(&mut st.lag),
            })
        })
    }
}

/// A receiver of the store's [`Event`]s, from
/// [`Store::subscribe`](crate::Store::subscribe).
///
/// Its queue holds at most its capacity of items; when the store has an
/// event for a full queue, it drops the event and counts it
/// ([`dropped`](Self::dropped)), and the subscriber reads an
/// [`Event::Lagged`] where the events are missing. The store never waits for
/// a subscriber, and calls no code of it: read the events on a thread of
/// your own, which may call back into the store. Dropping the subscriber
/// unsubscribes.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use sfs::{Event, ManualClock, Options};
///
/// let dir = tempfile::tempdir()?;
/// let clock = Arc::new(ManualClock::new(0));
/// let store = Options::new().clock(clock.clone()).open(dir.path().join("e.sfs"))?;
/// let events = store.subscribe();
/// store.put_with_ttl(b"lease", b"node-7", Duration::from_secs(10))?;
/// clock.advance(Duration::from_secs(11));
/// store.purge_expired()?; // or wait for the background sweep
/// match events.recv_timeout(Duration::from_secs(5)) {
///     Some(Event::Expired { key, .. }) => assert_eq!(key, b"lease"),
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscriber {
    queue: Arc<Queue>,
    live: Arc<AtomicUsize>,
}

impl Subscriber {
    /// The next event, waiting for one; `None` once the store is closed
    /// (dropped, [`close`](crate::Store::close)d or
    /// [`shutdown`](crate::Store::shutdown)) and every event is read.
    pub fn recv(&self) -> Option<Event> {
        let mut st = self.queue.state.lock();
        loop {
            if let Some(e) = Queue::pop(&mut st) {
                return Some(e);
            }
            if st.closed {
                return None;
            }
            self.queue.ready.wait(&mut st);
        }
    }

    /// The next event, waiting at most `timeout`; `None` if none came (or
    /// the store is closed and every event is read).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.queue.state.lock();
        loop {
            if let Some(e) = Queue::pop(&mut st) {
                return Some(e);
            }
            if st.closed {
                return None;
            }
            match deadline {
                Some(d) => {
                    if self.queue.ready.wait_until(&mut st, d).timed_out() {
                        return Queue::pop(&mut st);
                    }
                }
                None => self.queue.ready.wait(&mut st),
            }
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        Queue::pop(&mut self.queue.state.lock())
    }

    /// A blocking iterator over the events, ending when the store closes.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.recv())
    }

    /// How many events were dropped because the queue was full, since this
    /// subscriber subscribed.
    pub fn dropped(&self) -> u64 {
        self.queue.state.lock().dropped
    }

    /// How many items (events and lag markers) are waiting to be read.
    pub fn len(&self) -> usize {
        self.queue.state.lock().items.len()
    }

    /// Whether no item is waiting to be read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity
    }

    /// Whether the store is closed: no more events will come.
    pub fn is_closed(&self) -> bool {
        self.queue.state.lock().closed
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("queued", &self.len())
            .field("capacity", &self.capacity())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// The store's side: the subscribers' queues and the counts.
pub(crate) struct Hub {
    queues: Mutex<Vec<Weak<Queue>>>,
    /// Subscribers alive; the store collects events only while it is not 0.
    live: Arc<AtomicUsize>,
    delivered: AtomicU64,
    dropped: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            queues: Mutex::new(Vec::new()),
            live: Arc::new(AtomicUsize::new(0)),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether anybody listens: one atomic load.
    pub fn active(&self) -> bool {
        self.live.load(Ordering::Acquire) > 0
    }

    pub fn subscribe(&self, capacity: usize) -> Subscriber {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                lag: 0,
                dropped: 0,
                closed: self.closed.load(Ordering::Acquire),
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        let mut queues = self.queues.lock();
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(&queue));
        self.live.fetch_add(1, Ordering::AcqRel);
        Subscriber {
            queue,
            live: Arc::clone(&self.live),
        }
    }

    /// Hands `events` to every subscriber. Call it with no store lock held.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let queues: Vec<Arc<Queue>> = {
            let mut qs = self.queues.lock();
            qs.retain(|q| q.strong_count() > 0);
            qs.iter().filter_map(Weak::upgrade).collect()
        };
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for q in &queues {
            for e in &events {
                if q.push(e.clone()) {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// No more events will come: wakes every waiting subscriber.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let queues: Vec<Arc<Queue>> = self
            .queues
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for q in queues {
            q.state.lock().closed = true;
            q.ready.notify_all();
        }
    }

    pub fn counts(&self) -> EventCounts {
        EventCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            subscribers: self.live.load(Ordering::Acquire),
        }
    }
}

/// The events of one operation, collected under the store's locks and
/// handed to the subscribers when dropped: declare it before the lock
/// guards, so that it is dropped after them.
pub(crate) struct Notes<'a> {
    hub: &'a Hub,
    events: Option<Vec<Event>>,
}

impl<'a> Notes<'a> {
    pub fn new(hub: &'a Hub) -> Notes<'a> {
        Notes {
            hub,
            events: hub.active().then(Vec::new),
        }
    }

    /// Whether events are being collected.
    pub fn on(&self) -> bool {
        self.events.is_some()
    }

    /// Records the event `make` builds, if anybody listens.
    pub fn add(&mut self, make: impl FnOnce() -> Event) {
        if let Some(v) = &mut self.events {
            v.push(make());
        }
    }

    /// Hands the events over now (with no store lock held).
    pub fn flush(&mut self) {
        if let Some(v) = &mut self.events
            && !v.is_empty()
        {
            self.hub.publish(std::mem::take(v));
        }
    }
}

impl Drop for Notes<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Event {
        Event::Deleted { key: vec![i] }
    }

    #[test]
    fn a_full_queue_drops_counts_and_marks_the_gap() {
        let hub = Hub::new();
        let s = hub.subscribe(3);
        hub.publish((0..10).map(key).collect());
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped(), 7);
        assert_eq!(s.try_recv(), Some(key(0)));
        assert_eq!(s.try_recv(), Some(key(1)));
        // Room again: the marker goes where the events were dropped.
        hub.publish(vec![key(20)]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.try_recv(), Some(key(2)));
        assert_eq!(s.try_recv(), Some(Event::Lagged { missed: 7 }));
        assert_eq!(s.try_recv(), Some(key(20)));
        assert_eq!(s.try_recv(), None);
        // A gap with no event after it is reported when the queue empties.
        hub.publish((0..5).map(key).collect());
        let got: Vec<Event> = std::iter::from_fn(|| s.try_recv()).collect();
        assert_eq!(
            got,
            vec![key(0), key(1), key(2), Event::Lagged { missed: 2 }]
        );
        // A marker never pushes the queue past its capacity: with one free
        // place, the marker takes it and the event is dropped (and counted).
        hub.publish((0..3).map(key).collect());
        hub.publish(vec![key(9)]);
        let got: Vec<Event> = std::iter::from_fn(|| s.try_recv()).collect();
        assert_eq!(
            got,
            vec![key(0), key(1), key(2), Event::Lagged { missed: 1 }]
        );
        let c = hub.counts();
        assert_eq!((c.delivered, c.dropped, c.subscribers), (10, 10, 1));
    }

    #[test]
    fn dropped_subscribers_stop_the_collection() {
        let hub = Hub::new();
        let a = hub.subscribe(8);
        let b = hub.subscribe(8);
        assert!(Notes::new(&hub).on());
        drop(a);
        hub.publish(vec![key(1)]);
        assert_eq!(b.try_recv(), Some(key(1)));
        drop(b);
        assert!(!hub.active());
        assert!(!Notes::new(&hub).on());
        hub.publish(vec![key(2)]);
        assert!(hub.queues.lock().is_empty());
    }

    #[test]
    fn closing_ends_the_iteration() {
        let hub = Hub::new();
        let s = hub.subscribe(8);
        hub.publish(vec![key(1)]);
        hub.close();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![key(1)]);
        assert!(s.is_closed());
        assert_eq!(s.recv_timeout(Duration::from_secs(60)), None);
    }
}
