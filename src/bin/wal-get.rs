//! `restore_command`: fetch one WAL file, verified. 0 delivered, 1 not archived,
//! above 125 any other failure (so PostgreSQL stops instead of ending recovery early).

use pgcellar::archive::prefetch::{self, Fetched};
use pgcellar::cli::wal_get::Args;
use pgcellar::config::{PrefetchSettings, Settings};
use pgcellar::util::retry;
use pgcellar::wal::WalName;
use pgcellar::{cli, log_error, log_info};
use std::time::Instant;

/// Exit code for failures that must stop recovery (PostgreSQL treats > 125 as fatal).
const FATAL: i32 = 126;

enum Outcome {
    Delivered,
    NotFound,
}

fn run(args: &Args) -> pgcellar::Result<Outcome> {
    let start = Instant::now();
    let settings = Settings::resolve(&args.common, None)?;
    let name = WalName::parse(&args.wal_name)?;
    let opts = PrefetchSettings::resolve(&args.prefetch, &settings)?;
    // Only a successful lookup that finds nothing is "not archived"; every error
    // (even a NotFound-kind one such as a missing repository) stops recovery.
    // Each attempt opens the repository afresh: a retry gets a new connection.
    let fetched = retry::with_retries(settings.retries, "wal-get", || {
        prefetch::get_file(&settings, &opts, &name, &args.dest)
    })?;
    match fetched {
        Fetched::Delivered(d) => {
            log_info!(
                "restored {name} ({} bytes{}) in {:.1} ms",
                d.size,
                if d.from_spool { ", from the spool" } else { "" },
                start.elapsed().as_secs_f64() * 1000.0,
            );
            if let Some(filler) = d.fill {
                // The exit status is decided; a prefetcher that cannot start changes nothing.
                if let Err(e) = filler.start() {
                    log_info!("no prefetch: {e}");
                }
            }
            Ok(Outcome::Delivered)
        }
        Fetched::NotArchived(msg) => {
            log_info!("{msg}");
            Ok(Outcome::NotFound)
        }
    }
}

/// The detached prefetcher started by an earlier call (see `prefetch::Filler`): fill
/// the spool, never touch the destination, exit 0 whatever happened.
fn fill(args: &Args, env: &str) -> pgcellar::Result<usize> {
    let settings = Settings::resolve(&args.common, None)?;
    let name = WalName::parse(&args.wal_name)?;
    let opts = PrefetchSettings::resolve(&args.prefetch, &settings)?;
    prefetch::fill(&settings, &opts, &name, &args.dest, env)
}

fn main() {
    // A panic stops recovery (126), never reads as "not archived".
    cli::install_panic_hook("wal-get", FATAL);
    let args: Args = cli::parse_or_exit(FATAL);
    pgcellar::util::log::init("wal-get", args.common.verbose, args.common.quiet);
    if args.standby {
        cli::set_panic_exit_code(1);
    }
    if let Some(size) = std::env::var_os(prefetch::FILL_ENV) {
        // Detached prefetcher: nobody reads its status ("exit 0 whatever happened").
        cli::set_panic_exit_code(0);
        match fill(&args, &size.to_string_lossy()) {
            Ok(n) => log_info!("prefetcher stored {n} segments"),
            Err(e) => log_info!("prefetcher stopped: {e}"),
        }
        std::process::exit(0);
    }
    let code = match run(&args) {
        Ok(Outcome::Delivered) => 0,
        Ok(Outcome::NotFound) => 1,
        Err(e) if args.standby => {
            log_error!("{e} (standby: will retry)");
            1
        }
        Err(e) => {
            log_error!("{e}; stopping recovery rather than ending it early");
            FATAL
        }
    };
    std::process::exit(code);
}
