//! The command line of `wal-get`, the restore_command.

use crate::config::{CommonArgs, PrefetchArgs};
use clap::Parser;
use std::path::PathBuf;

/// Fetch one archived WAL file (PostgreSQL's %f) into a path (%p).
#[derive(Parser)]
#[command(name = "wal-get", version)]
#[command(after_help = "Examples:
  restore_command = 'wal-get --config /etc/pgcellar.toml %f %p'
  wal-get --repo /var/lib/pgcellar --server main 000000010000000000000042 /tmp/seg

Exit codes:
  0    DEST_PATH holds the file, complete and checksum-verified
  1    the repository was reached and does not hold the file (the end of recovery)
  126+ any other failure (unreachable repository, checksum mismatch, bad setting,
       usage error): PostgreSQL stops recovery instead of ending it early
  With --standby (written by restore --standby) those failures exit 1 after a loud
  line, so a standby keeps running and retries.")]
pub struct Args {
    /// Options shared by every binary
    #[command(flatten)]
    pub common: CommonArgs,
    /// Prefetch options
    #[command(flatten)]
    pub prefetch: PrefetchArgs,
    /// Running a standby: log failures loudly but exit 1 so it keeps retrying
    #[arg(long)]
    pub standby: bool,
    /// WAL file name (%f)
    pub wal_name: String,
    /// Destination path (%p)
    pub dest: PathBuf,
}
