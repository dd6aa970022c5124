//! `base-backup`: take an online physical backup; prints the new backup id on stdout.

use clap::Parser;
use pgcellar::backup::{self, BackupOptions};
use pgcellar::config::{CommonArgs, CompressionArgs, Settings};
use pgcellar::{cli, log_info};

/// Take an online backup of the cluster into the repository (incremental by default:
/// unchanged files are hard links to the previous backup).
#[derive(Parser)]
#[command(name = "base-backup", version)]
#[command(after_help = "Examples:
  base-backup --config /etc/pgcellar.toml                 # incremental (page level)
  base-backup --config /etc/pgcellar.toml --full --jobs 4
  base-backup --repo /var/lib/pgcellar --server main --pgdata /var/lib/postgresql/16/main \\
              --conninfo 'host=/var/run/postgresql port=5432'
  base-backup ... --conninfo 'host=/var/run/postgresql port=5433'   # from a hot standby

Prints the new backup's id on stdout and nothing else there.

Exit codes:
  0  the backup is complete: its files, its WAL and, last, its manifest are stored
  1  it failed and left no backup (one line on stderr says why)
  2  usage error")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    compression: CompressionArgs,
    /// Parallel workers (default: `jobs` in the config file, else the number of cores)
    #[arg(long, env = "PGCELLAR_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Copy every file instead of linking unchanged ones to the previous backup
    #[arg(long)]
    full: bool,
    /// Decide whether a file is unchanged by its SHA-256, never by size and mtime
    #[arg(long)]
    checksum: bool,
    /// Label for pg_backup_start and the manifest
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
}

fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.common, Some(&args.compression))?;
    let opts = BackupOptions {
        jobs: args.jobs.map(usize::from),
        full: args.full,
        checksum: args.checksum,
        label: args.label.clone(),
        progress: !args.common.quiet,
    };
    let m = backup::run(&settings, &opts)?;
    let t = &m.totals;
    log_info!(
        "backup {} done: {} files, {} bytes ({} stored), {} reused as links, {} copied ({} bytes written)",
        m.id,
        t.files,
        t.size,
        t.stored_size,
        t.reused_files,
        t.copied_files,
        t.copied_stored_size
    );
    println!("{}", m.id);
    Ok(())
}

fn main() {
    cli::install_panic_hook("base-backup", 1);
    let args: Args = cli::parse_or_exit(2);
    pgcellar::util::log::init("base-backup", args.common.verbose, args.common.quiet);
    cli::exit_on_error(run(&args));
}
