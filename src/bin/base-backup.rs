//! `base-backup`: take an online physical backup; prints the new backup id on stdout.

use pgcellar::backup::{self, BackupOptions};
use pgcellar::cli::base_backup::Args;
use pgcellar::config::Settings;
use pgcellar::{cli, log_info};

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
    if !args.common.quiet || args.print_id {
        println!("{}", m.id);
    }
    Ok(())
}

fn main() {
    cli::install_panic_hook("base-backup", 1);
    let args: Args = cli::parse_or_exit(2);
    pgcellar::util::log::init("base-backup", args.common.verbose, args.common.quiet);
    cli::exit_on_error(run(&args));
}
