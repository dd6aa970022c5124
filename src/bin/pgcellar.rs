//! The catalog command: `pgcellar init`, ...

use clap::{Parser, Subcommand};
use pgcellar::config::{CommonArgs, Settings};
use pgcellar::{catalog, cli, log_error, log_notice};

/// Manage a pgcellar repository.
#[derive(Parser)]
#[command(name = "pgcellar", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the repository if needed and register the server from the running cluster
    Init,
}

fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.common, None)?;
    match args.command {
        Command::Init => {
            let out = catalog::init(&settings)?;
            let repo = settings.repo_url()?;
            if out.created_repo {
                log_notice!("created repository {repo}");
            }
            let s = &out.server;
            if out.registered {
                log_notice!(
                    "registered server {} (system identifier {}, PostgreSQL {}, WAL segment size {} bytes) in {repo}",
                    s.name, s.system_identifier, s.pg_major, s.wal_segment_size
                );
            } else {
                log_notice!(
                    "server {} is already registered in {repo} for this cluster",
                    s.name
                );
            }
        }
    }
    Ok(())
}

fn main() {
    let args: Args = cli::parse_or_exit(2);
    pgcellar::log::init("pgcellar", args.common.verbose, args.common.quiet);
    if let Err(e) = run(&args) {
        log_error!("{}", cli::one_line(&e));
        std::process::exit(1);
    }
}
