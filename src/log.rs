//! Timestamped server log lines on standard error.
//!
//! One line per event, `2026-11-25T21:40:00.123Z <text>`, written with a
//! single `write` so lines from different threads never interleave.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences the log (for test runs that start many servers in one process).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Writes one timestamped line to standard error.
pub fn line(args: std::fmt::Arguments<'_>) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let text = format!(
        "{} {}\n",
        crate::clock::format_ms(crate::clock::now_ms()),
        args
    );
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log!("accepted {}", addr)`: a timestamped line on standard error.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
