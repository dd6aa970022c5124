//! The command line of `wal-push`, the archive_command.

use crate::config::{CommonArgs, CompressionArgs, LookaheadArgs};
use clap::Parser;
use std::path::PathBuf;

/// Archive one WAL file (PostgreSQL's %p) into the repository.
#[derive(Parser)]
#[command(name = "wal-push", version)]
#[command(after_help = "Examples:
  archive_command = 'wal-push --config /etc/pgcellar.toml %p'
  archive_command = 'wal-push --repo /var/lib/pgcellar --server main %p'
  archive_command = 'wal-push --repo ssh://backup@vault/srv/pgcellar --server main %p'

Exit codes:
  0  the file is durably in the repository (or an identical copy already was)
  1  anything else (PostgreSQL keeps the file and retries); never above 125")]
pub struct Args {
    /// Options shared by every binary
    #[command(flatten)]
    pub common: CommonArgs,
    /// Compression of the files it stores
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Look-ahead options
    #[command(flatten)]
    pub lookahead: LookaheadArgs,
    /// Path of the WAL file (%p); its base name is the WAL name
    pub wal_path: PathBuf,
}
