//! The command line of `base-backup`.

use crate::config::{CommonArgs, CompressionArgs};
use clap::Parser;

/// Take an online backup of the cluster into the repository (incremental by default:
/// unchanged files and pages are shared with earlier backups; no backup depends on
/// another).
#[derive(Parser)]
#[command(name = "base-backup", version)]
#[command(after_help = "Examples:
  base-backup --config /etc/pgcellar.toml                 # incremental (page level)
  base-backup --config /etc/pgcellar.toml --full --jobs 4
  base-backup --repo /var/lib/pgcellar --server main --pgdata /var/lib/postgresql/16/main \\
              --conninfo 'host=/var/run/postgresql port=5432'
  base-backup ... --conninfo 'host=/var/run/postgresql port=5433'   # from a hot standby

Prints the new backup's id on stdout and nothing else there; --quiet prints nothing
at all but errors (for cron, which mails any output), --quiet --print-id only the id.
The progress line is drawn only when stderr is a terminal.

Exit codes:
  0  the backup is complete: its files, its WAL and, last, its manifest are stored
  1  it failed and left no backup (one line on stderr says why)
  2  usage error")]
pub struct Args {
    /// Options shared by every binary
    #[command(flatten)]
    pub common: CommonArgs,
    /// Compression of the files it stores
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Parallel workers (default: `jobs` in the config file, else the number of cores)
    #[arg(long, env = "PGCELLAR_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// Copy every file instead of linking unchanged ones to the previous backup
    #[arg(long)]
    pub full: bool,
    /// Decide whether a file is unchanged by its SHA-256, never by size and mtime
    #[arg(long)]
    pub checksum: bool,
    /// Print the new backup's id on stdout even with --quiet (which otherwise
    /// silences stdout too, for cron)
    #[arg(long)]
    pub print_id: bool,
    /// Label for pg_backup_start and the manifest
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
}
