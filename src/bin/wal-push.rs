//! `archive_command`: archive one WAL file durably. Exit 0 only when it is safe.

use pgcellar::archive::lookahead::{self, FileOutcome};
use pgcellar::archive::PushOutcome;
use pgcellar::cli::wal_push::Args;
use pgcellar::config::{LookaheadSettings, Settings};
use pgcellar::util::retry;
use pgcellar::{cli, log_info};
use std::time::Instant;

fn run(args: &Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let settings = Settings::resolve(&args.common, Some(&args.compression))?;
    let la = LookaheadSettings::resolve(&args.lookahead, &settings)?;
    // Each attempt opens the repository afresh: a retry gets a new connection.
    let (outcome, batch) = retry::with_retries(settings.retries, "wal-push", || {
        lookahead::push_file(&settings, &la, &args.wal_path)
    })?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if batch != Default::default() {
        log_info!(
            "look-ahead: {} stored, {} already archived, {} failed",
            batch.stored,
            batch.already,
            batch.failed
        );
    }
    match outcome {
        FileOutcome::Recorded { .. } => log_info!(
            "{} was pushed ahead earlier and its record matches ({ms:.1} ms)",
            args.wal_path.display()
        ),
        FileOutcome::Pushed(PushOutcome::Stored {
            size, stored_size, ..
        }) => log_info!(
            "archived {} ({} -> {} bytes, {}) in {ms:.1} ms",
            args.wal_path.display(),
            size,
            stored_size,
            settings.codec.compression
        ),
        FileOutcome::Pushed(PushOutcome::AlreadyArchived { .. }) => log_info!(
            "{} was already archived with identical content ({ms:.1} ms)",
            args.wal_path.display()
        ),
    }
    Ok(())
}

fn main() {
    // A panic exits 1 like any failure: above 125 would make the archiver exit.
    cli::install_panic_hook("wal-push", 1);
    // Exit codes above 125 would make PostgreSQL's archiver exit; usage errors are 1.
    let args: Args = cli::parse_or_exit(1);
    pgcellar::util::log::init("wal-push", args.common.verbose, args.common.quiet);
    cli::exit_on_error(run(&args));
}
