//! `restore`: materialise a backup into a data directory and write the recovery
//! settings, so that starting PostgreSQL performs point-in-time recovery via wal-get.

use clap::{ArgGroup, Parser};
use pgcellar::config::{CommonArgs, Settings};
use pgcellar::restore::{self, ArchiveMode, RestoreOptions, Target, TargetAction, TimelineTarget};
use pgcellar::{cli, log_info};
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
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Backup id, `latest` or `oldest` (default: the newest that ended before the target)
    #[arg(long, value_name = "ID")]
    backup: Option<String>,
    /// Recover up to this time (with a zone, e.g. '2026-11-03 13:00:00+00')
    #[arg(long, value_name = "TS")]
    target_time: Option<String>,
    /// Recover up to this transaction id
    #[arg(long, value_name = "XID")]
    target_xid: Option<String>,
    /// Recover up to this WAL location (X/Y)
    #[arg(long, value_name = "LSN")]
    target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    target_name: Option<String>,
    /// Stop as soon as the backup is consistent
    #[arg(long)]
    target_immediate: bool,
    /// Timeline to follow: latest, current or a number
    #[arg(long, value_name = "TLI")]
    target_timeline: Option<TimelineTarget>,
    /// What to do at the target: pause, promote or shutdown
    #[arg(long, value_name = "ACTION")]
    target_action: Option<TargetAction>,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    exclusive: bool,
    /// Start as a standby (standby.signal; wal-get --standby keeps retrying)
    #[arg(long)]
    standby: bool,
    /// With --standby: stream from this primary (primary_conninfo), e.g.
    /// 'host=db1 port=5432 user=replicator'
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    primary_conninfo: Option<String>,
    /// With --standby: the primary's replication slot to stream from (primary_slot_name)
    #[arg(long, value_name = "SLOT", requires = "standby")]
    primary_slot_name: Option<String>,
    /// Reuse matching files of an existing directory and remove the others
    #[arg(long)]
    delta: bool,
    /// Restore a tablespace elsewhere: OID_OR_NAME=/abs/dir (repeatable)
    #[arg(long, value_name = "OID_OR_NAME=DIR", value_parser = restore::parse_tablespace_mapping)]
    tablespace_map: Vec<(String, PathBuf)>,
    /// Parallel workers (default: `jobs` in the config file, else the number of cores)
    #[arg(long, env = "PGCELLAR_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// off (default): the restored cluster gets an archive_command that archives
    /// nothing and fails, so it never archives into the source's repository;
    /// preserve: keep the source's archiving (a real failover)
    #[arg(long, value_name = "MODE", default_value = "off")]
    archive_mode: ArchiveMode,
    /// Data directory to restore into (created if missing)
    dest_dir: PathBuf,
}

fn target(args: &Args) -> pgcellar::Result<Option<Target>> {
    Ok(if let Some(t) = &args.target_time {
        Some(Target::time(t)?)
    } else if let Some(x) = &args.target_xid {
        Some(Target::xid(x)?)
    } else if let Some(l) = &args.target_lsn {
        Some(Target::lsn(l)?)
    } else if let Some(n) = &args.target_name {
        Some(Target::name(n)?)
    } else if args.target_immediate {
        Some(Target::Immediate)
    } else {
        None
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.common, None)?;
    let opts = RestoreOptions {
        backup: args.backup.clone(),
        target: target(args)?,
        exclusive: args.exclusive,
        target_timeline: args.target_timeline,
        target_action: args.target_action,
        standby: args.standby,
        primary_conninfo: args.primary_conninfo.clone(),
        primary_slot_name: args.primary_slot_name.clone(),
        delta: args.delta,
        tablespace_map: args.tablespace_map.clone(),
        jobs: args.jobs.map(usize::from),
        dest: args.dest_dir.clone(),
        progress: !args.common.quiet,
        archive_mode: args.archive_mode,
    };
    let out = restore::run(&settings, &opts)?;
    log_info!(
        "restored backup {} into {}: {} files written, {} kept, {} removed",
        out.backup,
        args.dest_dir.display(),
        out.written,
        out.kept,
        out.removed
    );
    Ok(())
}

fn main() {
    cli::install_panic_hook("restore", 1);
    let args: Args = cli::parse_or_exit(2);
    pgcellar::util::log::init("restore", args.common.verbose, args.common.quiet);
    cli::exit_on_error(run(&args));
}
