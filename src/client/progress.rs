//! When to report a transfer's progress, and its rate and time left.
//!
//! Both directions use one [`Meter`]: files of at least
//! [`PROGRESS_THRESHOLD`] bytes report each tenth they pass, with the time
//! since the transfer began, so the prompt can show the rate and how long
//! is left and a script gets a line per tenth.

use std::time::{Duration, Instant};

/// Files smaller than this report no progress.
pub const PROGRESS_THRESHOLD: u64 = 1024 * 1024;

/// A transfer's progress meter.
#[derive(Debug)]
pub struct Meter {
    size: u64,
    started: Instant,
    /// Last tenth reported.
    reported: u64,
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes so far.
    pub done: u64,
    /// Bytes in all.
    pub size: u64,
    /// Since the transfer began.
    pub elapsed: Duration,
}

impl Meter {
    /// A meter for `size` bytes, starting now.
    pub fn new(size: u64) -> Meter {
        Meter {
            size,
            started: Instant::now(),
            reported: 0,
        }
    }

    /// `done` bytes are through: the progress to report, if a new tenth
    /// was passed (never at the end: the end has its own event).
    pub fn update(&mut self, done: u64) -> Option<Progress> {
        let tenths = done.saturating_mul(10) / self.size.max(1);
        if self.size < PROGRESS_THRESHOLD || tenths <= self.reported || done >= self.size {
            return None;
        }
        self.reported = tenths;
        Some(Progress {
            done,
            size: self.size,
            elapsed: self.started.elapsed(),
        })
    }
}

impl Progress {
    /// Whole percent done.
    pub fn percent(&self) -> u64 {
        self.done.saturating_mul(100) / self.size.max(1)
    }

    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Time left at the rate so far.
    pub fn left(&self) -> Duration {
        let rate = self.rate();
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.size.saturating_sub(self.done) as f64 / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_tenth_once_and_never_the_end() {
        let mut m = Meter::new(10 * PROGRESS_THRESHOLD);
        assert_eq!(m.update(PROGRESS_THRESHOLD / 2), None);
        let p = m.update(PROGRESS_THRESHOLD).expect("a tenth");
        assert_eq!((p.done, p.percent()), (PROGRESS_THRESHOLD, 10));
        assert_eq!(m.update(PROGRESS_THRESHOLD + 1), None);
        assert!(m.update(5 * PROGRESS_THRESHOLD).is_some());
        assert_eq!(m.update(10 * PROGRESS_THRESHOLD), None);
        let mut small = Meter::new(PROGRESS_THRESHOLD - 1);
        assert_eq!(small.update(PROGRESS_THRESHOLD / 2), None);
    }

    #[test]
    fn rate_and_time_left() {
        let p = Progress {
            done: 2_000_000,
            size: 10_000_000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(p.rate(), 1_000_000.0);
        assert_eq!(p.left(), Duration::from_secs(8));
        assert_eq!(p.percent(), 20);
    }
}
