//! Progress on stderr, shown only to a person watching a terminal, and true: the
//! clock runs even when nothing moves, and the rate is of bytes really read or
//! written, never of files skipped because they were unchanged (an incremental backup
//! that reuses 99% of a cluster is not copying at 387 GiB/s).

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the line is redrawn at most, and at least (so the elapsed time runs).
const REDRAW: Duration = Duration::from_millis(250);

/// Counts of a copy: what is done, and what was really moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Files dealt with (copied or skipped as unchanged).
    pub files_done: u64,
    /// Their bytes.
    pub bytes_done: u64,
    /// Bytes really read (backup) or written (restore).
    pub bytes_moved: u64,
}

/// A progress line for a copy of `files_total` files, `bytes_total` bytes.
pub struct Meter {
    bar: ProgressBar,
    verb: &'static str,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_moved: AtomicU64,
    /// When the copy began, for the rate (the clock on the line starts with the meter).
    copy_start: Mutex<Option<Instant>>,
    last_draw: Mutex<Instant>,
}

impl Meter {
    /// A meter drawn on stderr when it is a terminal and `wanted`; `verb` says what
    /// moving a byte is ("read", "written").
    pub fn new(wanted: bool, verb: &'static str) -> Meter {
        let bar = if wanted && io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} {wide_msg}") {
                bar.set_style(style);
            }
            // Redrawn by indicatif's own thread, so the clock runs while a huge file
            // is read or while nothing happens at all (a wait).
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        } else {
            ProgressBar::hidden()
        };
        Meter {
            bar,
            verb,
            files_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_moved: AtomicU64::new(0),
            copy_start: Mutex::new(None),
            last_draw: Mutex::new(Instant::now()),
        }
    }

    /// Begin the copy of `files` files of `bytes` bytes: the rate counts from now.
    pub fn start_copy(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_position(0);
        if let Ok(mut s) = self.copy_start.lock() {
            *s = Some(Instant::now());
        }
        self.draw();
    }

    /// One file dealt with: `size` bytes, of which `moved` really read or written.
    pub fn file_done(&self, size: u64, moved: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(size, Ordering::Relaxed);
        self.bytes_moved.fetch_add(moved, Ordering::Relaxed);
        self.bar.inc(size);
        // Workers never wait for each other to draw.
        let due = match self.last_draw.try_lock() {
            Ok(mut last) if last.elapsed() >= REDRAW => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            self.draw();
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        Counts {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
        }
    }

    /// Show `text` instead of the copy's counts (a wait: say what for).
    pub fn say(&self, text: String) {
        self.bar.set_message(text);
    }

    /// The copy line: done of total, files, and the rate of bytes really moved.
    pub fn copy_line(&self) -> String {
        let c = self.counts();
        let total = self.bar.length().unwrap_or(0);
        let secs = self
            .copy_start
            .lock()
            .ok()
            .and_then(|s| *s)
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        let rate = if secs >= 0.5 {
            format!(" at {}/s", HumanBytes((c.bytes_moved as f64 / secs) as u64))
        } else {
            String::new()
        };
        let pct = c
            .bytes_done
            .saturating_mul(100)
            .checked_div(total)
            .unwrap_or(100);
        format!(
            "{pct:>3}% {} of {}, {} of {} files; {} {}{rate}, {} unchanged (not {})",
            HumanBytes(c.bytes_done),
            HumanBytes(total),
            c.files_done,
            self.files_total.load(Ordering::Relaxed),
            HumanBytes(c.bytes_moved),
            self.verb,
            HumanBytes(c.bytes_done.saturating_sub(c.bytes_moved)),
            self.verb,
        )
    }

    fn draw(&self) {
        if !self.bar.is_hidden() {
            self.bar.set_message(self.copy_line());
        }
    }

    /// Remove the line (the next log line or the shell prompt takes its place).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Stops the ticking thread whatever path ended the copy.
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Meter;

    #[test]
    fn the_rate_counts_only_the_bytes_really_moved() {
        let m = Meter::new(false, "read");
        m.start_copy(3, 300);
        m.file_done(100, 100);
        m.file_done(150, 0);
        let c = m.counts();
        assert_eq!((c.files_done, c.bytes_done, c.bytes_moved), (2, 250, 100));
        let line = m.copy_line();
        assert!(
            line.starts_with(" 83% 250 B of 300 B, 2 of 3 files; 100 B read"),
            "{line}"
        );
        assert!(line.ends_with("150 B unchanged (not read)"), "{line}");
    }
}
