//! The command line of `restore`.

use crate::config::CommonArgs;
use crate::restore::{self, ArchiveMode, TargetAction, TimelineTarget};
use clap::{ArgGroup, Parser};
use std::path::PathBuf;

/// Restore a backup into DEST_DIR and prepare point-in-time recovery.
#[derive(Parser)]
#[command(name = "restore", version)]
#[command(after_help = "Examples:
  restore --config /etc/pgcellar.toml /var/lib/postgresql/16/main        # to the end of the archive
  restore --config /etc/pgcellar.toml --target-time '2026-11-03 13:00:00+00' --target-action promote DEST
  restore --config /etc/pgcellar.toml --backup 20261123T184500Z --target-name before_migration DEST
  restore --config /etc/pgcellar.toml --standby --primary-conninfo 'host=db1 user=replicator' DEST
  restore --config /etc/pgcellar.toml --delta DEST                        # reuse matching files

Then start PostgreSQL on DEST: it recovers through wal-get.

Exit codes:
  0  DEST holds the backup, every file verified, with the recovery settings written
  1  it failed (one line on stderr says why); DEST is left unstartable, never half-right
  2  usage error")]
#[command(group(ArgGroup::new("target").args(["target_time", "target_xid", "target_lsn", "target_name", "target_immediate"])))]
pub struct Args {
    /// Options shared by every binary
    #[command(flatten)]
    pub common: CommonArgs,
    /// Backup id, `latest` or `oldest` (default: the newest that ended before the target)
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover up to this time (with a zone, e.g. '2026-11-03 13:00:00+00')
    #[arg(long, value_name = "TS")]
    pub target_time: Option<String>,
    /// Recover up to this transaction id
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover up to this WAL location (X/Y)
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// Timeline to follow: latest, current or a number
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<TimelineTarget>,
    /// What to do at the target: pause, promote or shutdown
    #[arg(long, value_name = "ACTION")]
    pub target_action: Option<TargetAction>,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    pub exclusive: bool,
    /// Start as a standby (standby.signal; wal-get --standby keeps retrying)
    #[arg(long)]
    pub standby: bool,
    /// With --standby: stream from this primary (primary_conninfo), e.g.
    /// 'host=db1 port=5432 user=replicator'
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    pub primary_conninfo: Option<String>,
    /// With --standby: the primary's replication slot to stream from (primary_slot_name)
    #[arg(long, value_name = "SLOT", requires = "standby")]
    pub primary_slot_name: Option<String>,
    /// Reuse matching files of an existing directory and remove the others
    #[arg(long)]
    pub delta: bool,
    /// Restore a tablespace elsewhere: OID_OR_NAME=/abs/dir (repeatable)
    #[arg(long, value_name = "OID_OR_NAME=DIR", value_parser = restore::parse_tablespace_mapping)]
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Parallel workers (default: `jobs` in the config file, else the number of cores)
    #[arg(long, env = "PGCELLAR_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// off (default): the restored cluster gets an archive_command that archives
    /// nothing and fails, so it never archives into the source's repository;
    /// preserve: keep the source's archiving (a real failover)
    #[arg(long, value_name = "MODE", default_value = "off")]
    pub archive_mode: ArchiveMode,
    /// Data directory to restore into (created if missing)
    pub dest_dir: PathBuf,
}
