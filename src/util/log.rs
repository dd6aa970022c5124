//! One line per event on stderr, prefixed with the program name.
//!
//! PostgreSQL copies `archive_command`'s stderr into its log, so the hot path is quiet
//! unless asked (`-v`), and errors are one line each.

use std::io::Write;
use std::sync::atomic::{AtomicI8, Ordering};
use std::sync::OnceLock;

static LEVEL: AtomicI8 = AtomicI8::new(0);
static PROGRAM: OnceLock<String> = OnceLock::new();

/// Set the program name and verbosity (-1 quiet, 0 normal, 1+ verbose).
pub fn init(program: &str, verbose: u8, quiet: bool) {
    let _ = PROGRAM.set(program.to_string());
    let level = if quiet { -1 } else { verbose.min(3) as i8 };
    LEVEL.store(level, Ordering::Relaxed);
}

/// Whether messages at `level` are shown.
pub fn enabled(level: i8) -> bool {
    LEVEL.load(Ordering::Relaxed) >= level
}

/// Write one line at `level` (-1 error, 0 notice, 1 info, 2 debug).
pub fn line(level: i8, tag: &str, msg: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let program = PROGRAM.get().map(String::as_str).unwrap_or("pgcellar");
    // One write call per line keeps lines from concurrent workers whole.
    let text = format!("{program}: {tag}{msg}\n").replace(['\r'], " ");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Log an error line (always shown).
#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::util::log::line(-1, "ERROR: ", format_args!($($t)*)) } }
/// Log a warning line (hidden by -q).
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::util::log::line(0, "WARNING: ", format_args!($($t)*)) } }
/// Log a notice shown by default (hidden by -q).
#[macro_export]
macro_rules! log_notice { ($($t:tt)*) => { $crate::util::log::line(0, "", format_args!($($t)*)) } }
/// Log an informational line (shown with -v).
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::util::log::line(1, "", format_args!($($t)*)) } }
/// Log a debug line (shown with -vv).
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::util::log::line(2, "debug: ", format_args!($($t)*)) } }
