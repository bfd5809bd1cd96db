//! A progress bar on stderr for long runs.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::Progress;
use crate::units::human;

/// A progress bar for stderr: silent for the first second, then one line
/// redrawn at most ten times a second, erased for good by
/// [`ProgressBar::finish`].
pub struct ProgressBar {
    start: Instant,
    last: Option<Instant>,
    calls: u32,
    finished: bool,
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar::new()
    }
}

impl ProgressBar {
    /// A bar whose second starts now.
    pub fn new() -> ProgressBar {
        ProgressBar {
            start: Instant::now(),
            last: None,
            calls: 0,
            finished: false,
        }
    }

    /// Draws `p` if the run has taken over a second and the last drawing is
    /// older than a tenth of one.
    pub fn update(&mut self, out: &mut dyn Write, p: Progress) {
        if self.finished {
            return;
        }
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(64) && self.last.is_some() {
            return;
        }
        let now = Instant::now();
        if now - self.start < Duration::from_secs(1)
            || self
                .last
                .is_some_and(|l| now - l < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        let share = if p.total == 0 {
            1.0
        } else {
            p.done as f64 / p.total as f64
        };
        const WIDTH: usize = 30;
        let filled = ((share * WIDTH as f64) as usize).min(WIDTH);
        let _ = write!(
            out,
            "\r\x1b[K{} [{}{}] {:>5.1} %  {} / {}",
            p.phase,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            share * 100.0,
            human(p.done),
            human(p.total)
        );
        let _ = out.flush();
    }

    /// Erases the bar, if it was drawn, and draws it no more (call it before
    /// anything else is written to the same terminal).
    pub fn finish(&mut self, out: &mut dyn Write) {
        if self.last.take().is_some() {
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        self.finished = true;
    }
}
