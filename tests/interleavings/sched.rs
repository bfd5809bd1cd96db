//! A deterministic scheduler over the storage seam.
//!
//! Each operation of a schedule runs on a thread of its own. Before every
//! call that changes the file (a write, a length change, a sync) the thread
//! stops at a *yield point* and waits until the scheduler lets it through, so
//! the order in which the threads' storage calls reach the file is the
//! scheduler's choice; operations also stop once before they start (so that
//! operations without storage calls, like moving the clock, interleave too)
//! and wherever the test says (a reader holding a `ValueRef`).
//!
//! Between two yield points a thread runs freely, and it may block on one of
//! the store's locks held by a thread stopped at its yield point. The
//! scheduler tells such a thread from one that is still computing by asking
//! Linux: a thread asleep (`S` in `/proc/self/task/TID/stat`) whose count of
//! voluntary context switches stays the same over several looks waits on a
//! lock or condition variable. A decision is taken only when every thread is
//! stopped at a yield point, finished, or so blocked; the threads that may go
//! on are those at a yield point. When none may and some are blocked, that is
//! a deadlock.
//!
//! [`Explorer`] enumerates every sequence of decisions depth-first (each run
//! replays a prefix and takes the first choice after it), or draws them at
//! random for larger sets of operations.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sfs::testing::{Storage, TestRng};

thread_local! {
    /// The scheduler slot of an operation thread (`None` elsewhere: such
    /// threads pass yield points without stopping).
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

#[derive(Clone, Debug, PartialEq)]
enum Status {
    /// Not yet registered.
    Starting,
    /// Between yield points.
    Running,
    /// Stopped at a yield point, waiting for the scheduler.
    Paused(&'static str),
    Done,
}

struct Thread {
    status: Status,
    /// The kernel's id of the thread, for `/proc`.
    tid: Option<u64>,
}

struct State {
    threads: Vec<Thread>,
    /// The thread allowed past its yield point.
    granted: Option<usize>,
    /// A logical clock: ticks at every decision, start and end.
    tick: u64,
}

/// One schedule's scheduler, shared by its operation threads and storage.
pub struct Sched {
    st: Mutex<State>,
    cv: Condvar,
}

/// The times (in [`Sched`] ticks) an operation started and ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Sched {
    pub fn new(threads: usize) -> Arc<Sched> {
        Arc::new(Sched {
            st: Mutex::new(State {
                threads: (0..threads)
                    .map(|_| Thread {
                        status: Status::Starting,
                        tid: None,
                    })
                    .collect(),
                granted: None,
                tick: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// Called first on an operation thread: registers it, then waits for
    /// the scheduler to let the operation start. Returns the start tick.
    pub fn enter(&self, slot: usize) -> u64 {
        SLOT.with(|s| s.set(Some(slot)));
        let tid = current_tid();
        {
            let mut st = self.st.lock().unwrap();
            st.threads[slot].tid = tid;
            st.threads[slot].status = Status::Running;
        }
        self.yield_point("start");
        self.st.lock().unwrap().tick
    }

    /// The logical clock now. Exact on an operation thread: no other
    /// thread is let through a yield point while it runs.
    pub fn tick(&self) -> u64 {
        self.st.lock().unwrap().tick
    }

    /// Called last on an operation thread. Returns the end tick.
    pub fn leave(&self) -> u64 {
        let slot = SLOT.with(|s| s.take()).expect("an operation thread");
        let mut st = self.st.lock().unwrap();
        st.tick += 1;
        st.threads[slot].status = Status::Done;
        self.cv.notify_all();
        st.tick
    }

    /// Stops the calling operation thread until the scheduler picks it.
    pub fn yield_point(&self, what: &'static str) {
        let Some(slot) = SLOT.with(|s| s.get()) else {
            return;
        };
        let mut st = self.st.lock().unwrap();
        st.threads[slot].status = Status::Paused(what);
        self.cv.notify_all();
        while st.granted != Some(slot) {
            st = self.cv.wait(st).unwrap();
        }
        st.granted = None;
        st.tick += 1;
        st.threads[slot].status = Status::Running;
        self.cv.notify_all();
    }

    /// Waits until every thread is paused, done, or blocked; returns the
    /// paused ones (with what they wait for), or `Err` on a deadlock.
    fn settle(&self) -> Result<Vec<(usize, &'static str)>, String> {
        let started = Instant::now();
        loop {
            let (paused, running) = {
                let st = self.st.lock().unwrap();
                let mut paused = Vec::new();
                let mut running = Vec::new();
                let mut starting = false;
                for (i, t) in st.threads.iter().enumerate() {
                    match &t.status {
                        Status::Paused(w) => paused.push((i, *w)),
                        Status::Running => running.push(t.tid),
                        Status::Starting => starting = true,
                        Status::Done => {}
                    }
                }
                if starting {
                    (None, Vec::new())
                } else {
                    (Some(paused), running)
                }
            };
            if let Some(paused) = paused
                && running.iter().all(|tid| tid.is_some_and(blocked))
            {
                if !paused.is_empty() || running.is_empty() {
                    return Ok(paused);
                }
                // Everyone left is blocked: a deadlock, unless a thread was
                // only about to be woken. Look again for a while.
                if started.elapsed() > Duration::from_secs(2) {
                    return Err(format!(
                        "deadlock: {} threads blocked, none can go on",
                        running.len()
                    ));
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("a thread neither stopped nor blocked for 60 s".into());
            }
            std::thread::sleep(Duration::from_micros(30));
        }
    }

    /// Lets thread `slot` past its yield point and waits until it has gone.
    fn grant(&self, slot: usize) {
        let mut st = self.st.lock().unwrap();
        st.granted = Some(slot);
        self.cv.notify_all();
        while st.granted == Some(slot) {
            st = self.cv.wait(st).unwrap();
        }
    }
}

/// The calling thread's kernel id, from `/proc/thread-self` ("PID/task/TID").
fn current_tid() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// (state letter, voluntary context switches) of a thread of this process.
fn thread_state(tid: u64) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let switches = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()?;
    Some((state, switches))
}

/// Whether a thread is asleep in the kernel and stays so: it waits on a lock
/// or a condition variable.
fn blocked(tid: u64) -> bool {
    let Some(first) = thread_state(tid) else {
        return false;
    };
    if first.0 != 'S' {
        return false;
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_micros(100));
        if thread_state(tid) != Some(first) {
            return false;
        }
    }
    true
}

/// A storage whose changing calls are yield points of a [`Sched`].
pub struct Gated {
    pub inner: Arc<dyn Storage>,
    pub sched: Arc<Sched>,
    /// The store's named points (`Storage::point`) that are yield points
    /// too; the others are passed through.
    pub points: &'static [&'static str],
    /// The tick at which a backup last paused the writers (its final
    /// round, where it takes effect: see `Op::Backup`).
    pub backup_paused_at: Mutex<Option<u64>>,
}

impl Storage for Gated {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.sched.yield_point("write");
        self.inner.write_at(offset, parts)
    }

    fn write_at_before_sync(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.sched.yield_point("write");
        self.inner.write_at_before_sync(offset, parts)
    }

    fn write_word(&self, offset: u64, word: u64) -> std::io::Result<()> {
        self.sched.yield_point("write word");
        self.inner.write_word(offset, word)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.sched.yield_point("set_len");
        self.inner.set_len(len)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sched.yield_point("sync");
        self.inner.sync()
    }

    unsafe fn view(&self, offset: u64, len: u64) -> Option<&[u8]> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.inner.view(offset, len) }
    }

    fn point(&self, name: &'static str) {
        if self.points.contains(&name) {
            self.sched.yield_point(name);
        }
        if name == "backup: pause" {
            // Writers are stopped from here to the end of the backup, which
            // passes no yield point after this one.
            *self.backup_paused_at.lock().unwrap() = Some(self.sched.tick());
        }
    }
}

/// How the explorer picks among the threads that may go on.
pub enum Strategy {
    /// Every sequence of decisions, depth-first.
    Exhaustive,
    /// `n` schedules drawn at random from a seed.
    Random { n: usize, seed: u64 },
    /// One schedule: these threads in this order at each decision (the first
    /// thread that may go on wherever the listed one may not).
    Replay(Vec<usize>),
}

/// One decision of a run: the threads that could go on and the one chosen.
#[derive(Clone, Debug)]
struct Decision {
    enabled: Vec<usize>,
    chosen: usize,
}

/// Enumerates schedules; each run asks it for decisions through [`drive`].
pub struct Explorer {
    strategy: Strategy,
    /// The decisions to replay at the start of the next run.
    prefix: Vec<usize>,
    rng: TestRng,
    runs: usize,
    done: bool,
}

impl Explorer {
    pub fn new(strategy: Strategy) -> Explorer {
        let seed = match strategy {
            Strategy::Random { seed, .. } => seed,
            _ => 0,
        };
        Explorer {
            strategy,
            prefix: Vec::new(),
            rng: TestRng::new(seed),
            runs: 0,
            done: false,
        }
    }

    /// Whether another schedule is left to run.
    pub fn more(&self) -> bool {
        match self.strategy {
            Strategy::Exhaustive => !self.done,
            Strategy::Random { n, .. } => self.runs < n,
            Strategy::Replay(_) => self.runs == 0,
        }
    }

    /// Runs one schedule: decides until every thread is done. Returns the
    /// trace (thread and yield point of each decision), or the deadlock.
    pub fn drive(&mut self, sched: &Sched) -> Result<Vec<(usize, &'static str)>, String> {
        let mut decisions: Vec<Decision> = Vec::new();
        let mut trace = Vec::new();
        loop {
            let settle = |trace: &Vec<(usize, &'static str)>| {
                sched.settle().map_err(|e| format!("{e}; trace {trace:?}"))
            };
            let mut paused = settle(&trace)?;
            // A schedule replayed up to a decision has its threads at the
            // same points as when it was first run, but one of them can be
            // slower to get there this time (a thread asleep for a moment
            // looks blocked): wait for the thread to replay, or its place is
            // taken by another and the subtree explored twice.
            let want = match &self.strategy {
                Strategy::Exhaustive => self.prefix.get(decisions.len()).copied(),
                Strategy::Replay(order) => order.get(decisions.len()).copied(),
                Strategy::Random { .. } => None,
            };
            if let Some(want) = want {
                let waiting = Instant::now();
                while !paused.iter().any(|p| p.0 == want)
                    && waiting.elapsed() < Duration::from_millis(500)
                {
                    std::thread::sleep(Duration::from_micros(200));
                    paused = settle(&trace)?;
                }
            }
            if paused.is_empty() {
                break;
            }
            let enabled: Vec<usize> = paused.iter().map(|p| p.0).collect();
            let i = decisions.len();
            let chosen = match &self.strategy {
                Strategy::Exhaustive => match self.prefix.get(i) {
                    Some(&c) if enabled.contains(&c) => c,
                    _ => enabled[0],
                },
                Strategy::Replay(order) => match order.get(i) {
                    Some(c) if enabled.contains(c) => *c,
                    _ => enabled[0],
                },
                Strategy::Random { .. } => enabled[self.rng.below(enabled.len() as u64) as usize],
            };
            let what = paused.iter().find(|p| p.0 == chosen).unwrap().1;
            trace.push((chosen, what));
            decisions.push(Decision { enabled, chosen });
            sched.grant(chosen);
        }
        self.runs += 1;
        if let Strategy::Exhaustive = self.strategy {
            // Backtrack: the deepest decision with a later choice left.
            self.done = true;
            while let Some(d) = decisions.pop() {
                let at = d.enabled.iter().position(|&t| t == d.chosen).unwrap();
                if let Some(&next) = d.enabled.get(at + 1) {
                    self.prefix = decisions.iter().map(|d| d.chosen).collect();
                    self.prefix.push(next);
                    self.done = false;
                    break;
                }
            }
        }
        Ok(trace)
    }
}
