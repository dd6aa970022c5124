//! Progress bars on stderr, shown only to a person watching a terminal.

use std::io::{self, IsTerminal};

/// A progress bar on stderr when it is a terminal and `wanted`; hidden otherwise.
pub fn progress_bar(total: u64, wanted: bool) -> indicatif::ProgressBar {
    if !wanted || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}
