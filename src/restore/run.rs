//! The order of a restore, from the checks to `global/pg_control` last.

use super::choose::choose_backup;
use super::dest::{
    check_tablespace_target, prepare_dest, prune, remove_if_exists, tablespace_locations,
    write_small, PathMapper,
};
use super::files::{restore_files, restore_to_temp, Source, PG_CONTROL};
use super::options::{RestoreOptions, RestoreOutcome, Target};
use super::owner::{check_runnable_by_owner, Owner};
use super::partial::place_stream_partial;
use super::recovery::{absolute, wal_get_path, write_recovery_settings};
use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::FileEntry;
use crate::repo::Repository;
use crate::util::sync_dir;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

/// Restore according to `opts`.
pub fn run(settings: &Settings, opts: &RestoreOptions) -> Result<RestoreOutcome> {
    if opts.exclusive
        && !matches!(
            opts.target,
            Some(Target::Time(..) | Target::Xid(_) | Target::Lsn(..))
        )
    {
        return Err(Error::invalid(
            "--exclusive needs --target-time, --target-xid or --target-lsn",
        ));
    }
    super::options::check_streaming_options(opts)?;
    super::options::check_target_not_in_future(opts, chrono::Utc::now())?;
    let wal_get = wal_get_path()?;
    let dest = absolute(&opts.dest)?;
    check_runnable_by_owner(&wal_get, &dest)?;
    let repo = Repository::open(settings)?;
    let server = settings.server_name()?.to_string();
    let info = repo.server(&server)?;
    let storage = repo.storage();
    let m = choose_backup(storage, &server, opts)?;
    crate::log_info!("restoring backup {} of server {server}", m.id);

    let (control, others): (Vec<&FileEntry>, Vec<&FileEntry>) =
        m.files.iter().partition(|f| f.path == PG_CONTROL);
    let Some(control) = control.first().copied() else {
        return Err(Error::corrupt(format!(
            "the manifest of backup {} has no {PG_CONTROL}",
            m.id
        )));
    };
    prepare_dest(&dest, opts.delta)?;
    let ts_locations = tablespace_locations(&m, &opts.tablespace_map)?;
    for loc in ts_locations.values() {
        check_tablespace_target(&m, loc, opts.delta)?;
    }
    let mapper = PathMapper {
        dest: dest.clone(),
        tablespaces: ts_locations.clone(),
    };
    let owner = Owner::of(&dest)?;

    // From here on the directory must not look startable until pg_control is back,
    // and a crash must not bring the old one back: remove it durably first.
    let global = dest.join("global");
    if remove_if_exists(&global.join("pg_control"))? {
        sync_dir(&global).io_context(|| format!("fsync {}", global.display()))?;
    }
    let mut removed = 0;
    if opts.delta {
        removed = prune(&m, &mapper)?;
    }
    for d in &m.directories {
        let p = mapper.local(&d.path)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .io_context(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(d.mode & 0o7777))
            .io_context(|| format!("chmod {}", p.display()))?;
        owner.apply(&p)?;
    }
    let tblspc = dest.join("pg_tblspc");
    for (oid, loc) in &ts_locations {
        let link = tblspc.join(oid.to_string());
        remove_if_exists(&link)?;
        std::os::unix::fs::symlink(loc, &link)
            .io_context(|| format!("linking {} to {}", link.display(), loc.display()))?;
        owner.apply_nofollow(&link)?;
    }

    // pg_control first, under its temporary name: a damaged one fails the restore
    // before the long part, and it gets its final name only at the very end.
    let src = Source {
        storage,
        server: &server,
        m: &m,
        mapper: &mapper,
        owner: &owner,
    };
    let control_tmp = restore_to_temp(src, control)?;
    let jobs = settings.backup.workers(opts.jobs);
    let (written, kept) = restore_files(src, others, jobs, opts)?;

    let label = dest.join("backup_label");
    write_small(&label, m.backup_label.as_bytes(), &owner)?;
    let map_path = dest.join("tablespace_map");
    if m.tablespaces.is_empty() {
        remove_if_exists(&map_path)?;
    } else {
        let mut text = String::new();
        for (oid, loc) in &ts_locations {
            let escaped = loc
                .display()
                .to_string()
                .replace('\n', "\\\n")
                .replace('\r', "\\\r");
            text.push_str(&format!("{oid} {escaped}\n"));
        }
        write_small(&map_path, text.as_bytes(), &owner)?;
    }
    place_stream_partial(storage, &info, &m, &dest, opts, &owner)?;
    write_recovery_settings(&dest, settings, opts, &m, &wal_get, &owner)?;
    let (signal, other) = if opts.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    remove_if_exists(&dest.join(other))?;
    write_small(&dest.join(signal), b"", &owner)?;
    // Everything on disk, renames included (one flush per filesystem instead of an
    // fsync per file), before pg_control makes the directory startable.
    for root in std::iter::once(&dest).chain(ts_locations.values()) {
        crate::storage::local::syncfs(root)
            .io_context(|| format!("syncing the filesystem of {}", root.display()))?;
    }
    // Last: only now can the directory start.
    control_tmp.commit(true)?;
    Ok(RestoreOutcome {
        backup: m.id.clone(),
        written: written + 1,
        kept,
        removed,
    })
}
