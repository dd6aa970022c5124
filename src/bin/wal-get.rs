//! `restore_command`: fetch one WAL file, verified. 0 delivered, 1 not archived,
//! above 125 any other failure (so PostgreSQL stops instead of ending recovery early).

use clap::Parser;
use pgcellar::config::{CommonArgs, Settings};
use pgcellar::repo::Repository;
use pgcellar::wal::WalName;
use pgcellar::{archive, cli, log_error, log_info, retry, ErrorKind};
use std::path::PathBuf;
use std::time::Instant;

/// Exit code for failures that must stop recovery (PostgreSQL treats > 125 as fatal).
const FATAL: i32 = 126;

/// Fetch one archived WAL file (PostgreSQL's %f) into a path (%p).
#[derive(Parser)]
#[command(name = "wal-get", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Running a standby: log failures loudly but exit 1 so it keeps retrying
    #[arg(long)]
    standby: bool,
    /// WAL file name (%f)
    wal_name: String,
    /// Destination path (%p)
    dest: PathBuf,
}

enum Outcome {
    Delivered,
    NotFound,
}

fn run(args: &Args) -> pgcellar::Result<Outcome> {
    let start = Instant::now();
    let settings = Settings::resolve(&args.common, None)?;
    let name = WalName::parse(&args.wal_name)?;
    // Each attempt opens the repository afresh: a retry gets a new connection.
    let fetched = retry::with_retries(settings.retries, "wal-get", || {
        let repo = Repository::open(&settings)?;
        // Reading the registration makes a mistyped --server a hard error rather than
        // "not found", which would end recovery early.
        let server = repo.server(settings.server_name()?)?;
        match archive::get(&repo, &server.name, &name, &args.dest) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Err(e)),
            other => other.map(Ok),
        }
    })?;
    match fetched {
        Ok(size) => {
            log_info!(
                "restored {name} ({size} bytes) in {:.1} ms",
                start.elapsed().as_secs_f64() * 1000.0
            );
            Ok(Outcome::Delivered)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            log_info!("{e}");
            Ok(Outcome::NotFound)
        }
        Err(e) => Err(e),
    }
}

fn main() {
    let args: Args = cli::parse_or_exit(FATAL);
    pgcellar::log::init("wal-get", args.common.verbose, args.common.quiet);
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
