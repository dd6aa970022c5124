//! `restore`: materialise a backup into a data directory and write the recovery
//! settings, so that starting PostgreSQL performs point-in-time recovery via wal-get.

use pgcellar::cli::restore::Args;
use pgcellar::config::Settings;
use pgcellar::restore::{self, RestoreOptions, Target};
use pgcellar::{cli, log_info};

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
