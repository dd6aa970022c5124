//! `base-backup`: an online, non-exclusive physical backup into the repository.
//!
//! Order of work (each step only after the previous one succeeded):
//! 1. take the server's writer lock;
//! 2. `pg_backup_start` on a session kept open until the end;
//! 3. walk the data directory and tablespaces, store every file with `--jobs`
//!    workers (or hard-link it to the parent backup's copy when unchanged);
//! 4. `pg_backup_stop`, keeping `backup_label` and `tablespace_map`;
//! 5. wait (bounded) until every WAL segment from start to stop is in the repository;
//! 6. write `backup.json` atomically: only now does the backup exist.

use crate::archive;
use crate::codec::{self, Codec};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::pg;
use crate::repo::lock::Lock;
use crate::repo::manifest::{
    self, BackupId, BackupStatus, DirEntry, FileEntry, Manifest, Tablespace, DATA_PREFIX,
    MANIFEST_FORMAT, TABLESPACE_PREFIX,
};
use crate::repo::{layout, to_json, Repository, ServerInfo};
use crate::storage::{self, Overwrite, Storage};
use crate::wal::{Segment, WalName};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, IsTerminal};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A file is trusted unchanged by size and mtime only when its mtime is at least this
/// many seconds before the parent backup started (covers 1 s timestamp granularity).
pub const SAFE_HORIZON_SECS: i64 = 2;

/// Directories whose contents PostgreSQL documents as not to be backed up (the
/// directory itself is kept, so restore recreates it with its mode).
pub const EXCLUDED_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_xlog",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files never backed up, wherever noted: top-level runtime files, and files that
/// restore writes itself.
const EXCLUDED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "recovery.signal",
    "standby.signal",
    "recovery.done",
];

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Parallel workers (default: `Settings::jobs`).
    pub jobs: Option<usize>,
    /// Copy every file, ignoring the parent backup.
    pub full: bool,
    /// Decide reuse by SHA-256 only, never by size and mtime.
    pub checksum: bool,
    /// Label passed to `pg_backup_start` and kept in the manifest.
    pub label: Option<String>,
    /// Show a progress bar (only effective on a terminal).
    pub progress: bool,
}

/// A progress bar on stderr when it is a terminal and `wanted`; hidden otherwise.
pub fn progress_bar(total: u64, wanted: bool) -> indicatif::ProgressBar {
    if !wanted || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A file to store.
#[derive(Debug, Clone)]
struct Job {
    src: PathBuf,
    path: String,
    size: u64,
}

/// What the walk found.
#[derive(Debug, Default)]
struct Walk {
    dirs: Vec<DirEntry>,
    files: Vec<Job>,
    tablespaces: Vec<Tablespace>,
}

/// Take a backup of the cluster behind `settings`; returns its manifest.
pub fn run(settings: &Settings, opts: &BackupOptions) -> Result<Manifest> {
    if let Some(label) = &opts.label {
        // It becomes a line of backup_label: one line, within PostgreSQL's limit.
        if label.len() > 1000 || label.chars().any(char::is_control) {
            return Err(Error::invalid(
                "--label must be at most 1000 bytes without control characters",
            ));
        }
    }
    let pgdata = settings.pgdata.clone().ok_or_else(|| {
        Error::config(
            "no data directory given: use --pgdata, PGDATA or 'pgdata' in the config file",
        )
    })?;
    let pgdata =
        fs::canonicalize(&pgdata).io_context(|| format!("data directory {}", pgdata.display()))?;
    let repo = Repository::open(settings)?;
    let server_name = settings.server_name()?;
    let server = repo.server(server_name)?;

    let mut client = pg::connect(settings.conninfo.as_deref())?;
    let identity = pg::identity(&mut client)?;
    if identity.system_id != server.system_id()? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "the cluster at --conninfo is database system {}, but server {server_name} is \
                 registered as {}; check --conninfo and --server",
                identity.system_id, server.system_identifier
            ),
        ));
    }
    check_data_directory(&mut client, &pgdata)?;
    check_archiving(&mut client)?;
    let lock = Lock::acquire_held(&repo, settings, server_name, "base-backup")?;
    let result = backup_locked(settings, opts, &repo, &server, &mut client, &pgdata, &lock);
    lock.release();
    result
}

/// Refuse to back up a directory that is not the connected server's data directory.
fn check_data_directory(client: &mut postgres::Client, pgdata: &Path) -> Result<()> {
    // Needs superuser or pg_read_all_settings; without it, PG_VERSION is the only check.
    if let Ok(row) = client.query_one("SELECT current_setting('data_directory')", &[]) {
        let theirs: String = pg::column(&row, 0, "data_directory")?;
        let theirs = fs::canonicalize(&theirs).unwrap_or_else(|_| PathBuf::from(&theirs));
        if theirs != pgdata {
            return Err(Error::config(format!(
                "--pgdata {} is not the data directory of the connected server ({})",
                pgdata.display(),
                theirs.display()
            )));
        }
    }
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::config(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            pgdata.display()
        )));
    }
    Ok(())
}

/// Without archiving the backup's WAL never reaches the repository: say so now
/// rather than after `backup_wal_timeout`.
fn check_archiving(client: &mut postgres::Client) -> Result<()> {
    let row = match client.query_one(
        "SELECT current_setting('archive_mode'), current_setting('archive_command')",
        &[],
    ) {
        Ok(row) => row,
        // Not readable by this role: the bounded WAL wait still catches it.
        Err(_) => return Ok(()),
    };
    let mode: String = pg::column(&row, 0, "archive_mode")?;
    let command: String = pg::column(&row, 1, "archive_command")?;
    if mode == "off" || command.trim().is_empty() {
        return Err(Error::config(format!(
            "archiving is not set up (archive_mode = {mode}, archive_command = {command:?}): \
             a backup needs its WAL in the repository; set archive_command to wal-push"
        )));
    }
    Ok(())
}

/// The most recent complete backup, to hard-link unchanged files to; `None` with a
/// warning when it cannot be read (the backup is then a full one).
fn find_parent(storage: &dyn Storage, server: &ServerInfo, codec: Codec) -> Option<Manifest> {
    let ids = match manifest::list_ids(storage, &server.name) {
        Ok(ids) => ids,
        Err(e) => {
            crate::log_warn!("cannot list backups ({e}); taking a full backup");
            return None;
        }
    };
    let id = ids.last()?;
    match manifest::load(storage, &server.name, id) {
        Ok(m) if m.system_identifier != server.system_identifier => None,
        // Reused files are links to the parent's stored bytes, so they must be
        // compressed the same way as this backup's.
        Ok(m) if m.compression != codec.compression => {
            crate::log_info!(
                "backup {id} uses {} compression, not {}: copying every file",
                m.compression,
                codec.compression
            );
            None
        }
        Ok(m) => Some(m),
        Err(e) => {
            crate::log_warn!("cannot read backup {id} ({e}); taking a full backup");
            None
        }
    }
}

fn new_backup_id(storage: &dyn Storage, server: &str) -> Result<(BackupId, DateTime<Utc>)> {
    for _ in 0..3 {
        let now = Utc::now();
        let id = BackupId::from_time(now);
        if storage
            .stat(&layout::backup_dir(server, id.as_str()))?
            .is_none()
        {
            return Ok((id, now));
        }
        // Ids have one-second resolution: wait for the next one.
        std::thread::sleep(Duration::from_millis(
            1000 - now.timestamp_subsec_millis() as u64,
        ));
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("could not find a free backup id for server {server}"),
    ))
}

fn backup_locked(
    settings: &Settings,
    opts: &BackupOptions,
    repo: &Repository,
    server: &ServerInfo,
    client: &mut postgres::Client,
    pgdata: &Path,
    lock: &Lock<'_>,
) -> Result<Manifest> {
    let storage = repo.storage();
    let codec = settings.codec;
    let parent = if opts.full {
        None
    } else {
        find_parent(storage, server, codec)
    };
    let (id, start_time) = new_backup_id(storage, &server.name)?;
    let dir = layout::backup_dir(&server.name, id.as_str());
    storage.create_dir_all(&dir)?;
    let t0 = Instant::now();
    let secs = || t0.elapsed().as_secs_f64();
    let result = (|| {
        let label = opts
            .label
            .clone()
            .unwrap_or_else(|| format!("pgcellar {id}"));
        let started = start_backup(client, server.pg_major, &label)?;
        crate::log_info!(
            "backup {id} started at {} ({}) after {:.2}s, parent {}",
            started.lsn,
            started.wal,
            secs(),
            parent
                .as_ref()
                .map_or("none (full)".to_string(), |p| p.id.to_string())
        );
        let tablespace_names = tablespace_names(client)?;
        let walk = walk_cluster(pgdata, server.pg_major, &tablespace_names)?;
        for d in &walk.dirs {
            storage.create_dir_all(&storage::join(&dir, &d.path))?;
        }
        let jobs = settings.backup.workers(opts.jobs);
        let files = store_files(
            storage,
            server,
            &id,
            codec,
            parent.as_ref(),
            opts,
            jobs,
            walk.files,
        )?;
        crate::log_info!(
            "stored {} files ({} linked to the parent) at {:.2}s",
            files.len(),
            files.iter().filter(|f| f.reused).count(),
            secs()
        );
        // Before the stop: its WAL switch wakes the archiver, whose failures from then
        // on tell the wait below that archiving is broken.
        let archiver_before = archiver_status(client);
        let stopped = stop_backup(client, server.pg_major)?;
        let stop_time = Utc::now();
        crate::log_info!(
            "backup {id} stopped at {} ({}) at {:.2}s",
            stopped.lsn,
            stopped.wal,
            secs()
        );
        wait_for_wal(
            storage,
            server,
            &started.wal,
            &stopped.wal,
            settings.backup.backup_wal_timeout,
            client,
            archiver_before,
            opts.progress,
        )?;
        crate::log_info!(
            "WAL {} to {} confirmed at {:.2}s",
            started.wal,
            stopped.wal,
            secs()
        );
        let start_name = WalName::parse(&started.wal)?;
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            label,
            status: BackupStatus::Done,
            parent: parent.as_ref().map(|p| p.id.clone()),
            server: server.name.clone(),
            pg_version_num: server.pg_version_num,
            system_identifier: server.system_identifier.clone(),
            wal_segment_size: server.wal_segment_size,
            timeline: start_name.timeline(),
            start_lsn: started.lsn,
            stop_lsn: stopped.lsn,
            start_wal: started.wal,
            stop_wal: stopped.wal,
            start_time,
            stop_time,
            backup_label: stopped.label_file.unwrap_or_default(),
            tablespace_map: stopped.spcmap_file.unwrap_or_default(),
            tablespaces: walk.tablespaces,
            compression: codec.compression,
            compression_level: codec.level,
            totals: Default::default(),
            directories: walk.dirs,
            files,
            created_by: format!("pgcellar {}", env!("CARGO_PKG_VERSION")),
        };
        m.compute_totals();
        let json = to_json(&m)?;
        // Never commit under a lock that another writer broke meanwhile.
        lock.ensure_held()?;
        // Last, atomically: the backup exists from this moment on.
        storage.write_all(
            &layout::backup_manifest(&server.name, id.as_str()),
            &json,
            Overwrite::Never,
        )?;
        Ok(m)
    })();
    if let Err(e) = &result {
        // An aborted backup is invisible anyway; removing it only saves space.
        crate::log_info!("backup {id} failed ({e}); removing its directory");
        if let Err(e2) = storage.remove_dir_all(&dir) {
            crate::log_warn!("could not remove aborted backup {dir}: {e2}");
        }
    }
    result
}

struct Started {
    lsn: String,
    wal: String,
}

struct Stopped {
    lsn: String,
    wal: String,
    label_file: Option<String>,
    spcmap_file: Option<String>,
}

fn start_backup(client: &mut postgres::Client, major: u32, label: &str) -> Result<Started> {
    // The session must survive however long the copy takes.
    let mut setup = "SET statement_timeout = 0; SET lock_timeout = 0;".to_string();
    if major >= 14 {
        setup.push_str(" SET idle_session_timeout = 0;");
    }
    client
        .batch_execute(&setup)
        .map_err(|e| pg::query_error("preparing the backup session", e))?;
    let sql = if major >= 15 {
        "SELECT l::text, pg_walfile_name(l) FROM pg_backup_start($1, true) AS l"
    } else {
        "SELECT l::text, pg_walfile_name(l) FROM pg_start_backup($1, true, false) AS l"
    };
    let row = client
        .query_one(sql, &[&label])
        .map_err(|e| pg::query_error("starting the backup (pg_backup_start)", e))?;
    let what = "pg_backup_start";
    Ok(Started {
        lsn: pg::column(&row, 0, what)?,
        wal: pg::column(&row, 1, what)?,
    })
}

fn stop_backup(client: &mut postgres::Client, major: u32) -> Result<Stopped> {
    // wait_for_archive => false: PostgreSQL's own wait has no bound; we wait (bounded)
    // for the WAL to appear in *our* repository instead, which is the stronger check.
    let sql = if major >= 15 {
        "SELECT lsn::text, pg_walfile_name(lsn), labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, pg_walfile_name(lsn), labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(sql, &[])
        .map_err(|e| pg::query_error("stopping the backup (pg_backup_stop)", e))?;
    let what = "pg_backup_stop";
    Ok(Stopped {
        lsn: pg::column(&row, 0, what)?,
        wal: pg::column(&row, 1, what)?,
        label_file: pg::column(&row, 2, what)?,
        spcmap_file: pg::column(&row, 3, what)?,
    })
}

fn tablespace_names(client: &mut postgres::Client) -> Result<HashMap<u32, String>> {
    let rows = client
        .query("SELECT oid::int8, spcname::text FROM pg_tablespace", &[])
        .map_err(|e| pg::query_error("listing tablespaces", e))?;
    let mut names = HashMap::new();
    for r in &rows {
        let oid: i64 = pg::column(r, 0, "pg_tablespace")?;
        let name: String = pg::column(r, 1, "pg_tablespace")?;
        if let Ok(oid) = u32::try_from(oid) {
            names.insert(oid, name);
        }
    }
    Ok(names)
}

fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Walk the data directory and every tablespace, applying PostgreSQL's exclusions.
fn walk_cluster(pgdata: &Path, major: u32, names: &HashMap<u32, String>) -> Result<Walk> {
    let mut w = Walk::default();
    let meta = fs::metadata(pgdata).io_context(|| format!("stat {}", pgdata.display()))?;
    w.dirs.push(DirEntry {
        path: DATA_PREFIX.to_string(),
        mode: mode_of(&meta),
    });
    walk_dir(pgdata, DATA_PREFIX, 0, &mut w)?;
    let tblspc = pgdata.join("pg_tblspc");
    let entries = match fs::read_dir(&tblspc) {
        Ok(rd) => rd.collect::<io::Result<Vec<_>>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
    .io_context(|| format!("listing {}", tblspc.display()))?;
    for e in entries {
        let Some(oid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let link = e.path();
        let location = match fs::read_link(&link) {
            Ok(t) => t,
            // In-place tablespaces (allow_in_place_tablespaces) are plain directories.
            Err(_) => link.clone(),
        };
        let location = if location.is_absolute() {
            location
        } else {
            tblspc.join(location)
        };
        let prefix = format!("{TABLESPACE_PREFIX}/{oid}");
        let meta = match fs::metadata(&location) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue, // dropped meanwhile
            Err(err) => return Err(Error::io(format!("stat {}", location.display()), err)),
        };
        w.dirs.push(DirEntry {
            path: prefix.clone(),
            mode: mode_of(&meta),
        });
        // Only this major version's subdirectory belongs to this cluster.
        let version_prefix = format!("PG_{major}_");
        let subdirs = read_dir_sorted(&location)?;
        for (name, sub) in subdirs {
            if !name.starts_with(&version_prefix) {
                continue;
            }
            let Ok(meta) = fs::metadata(&sub) else {
                continue;
            };
            if meta.is_dir() {
                let p = format!("{prefix}/{name}");
                w.dirs.push(DirEntry {
                    path: p.clone(),
                    mode: mode_of(&meta),
                });
                walk_dir(&sub, &p, 1, &mut w)?;
            }
        }
        w.tablespaces.push(Tablespace {
            oid,
            name: names.get(&oid).cloned(),
            location: location.display().to_string(),
        });
    }
    Ok(w)
}

/// `(name, path)` of a directory's entries with UTF-8 names, sorted; missing = empty.
fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io(format!("listing {}", dir.display()), err)),
        };
        match e.file_name().into_string() {
            Ok(n) => out.push((n, e.path())),
            Err(n) => crate::log_warn!("skipping {}: its name is not UTF-8", dir.join(n).display()),
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `name` is a relation file whose relation has an init fork (an unlogged
/// relation), other than the init fork itself: PostgreSQL rebuilds those at startup.
fn is_unlogged_non_init(name: &str, init_forks: &BTreeSet<String>) -> bool {
    if init_forks.is_empty() || name.ends_with("_init") {
        return false;
    }
    let rel: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
    !rel.is_empty() && init_forks.contains(&rel)
}

/// Walk `dir` (manifest path `prefix`); `depth` 0 is the data directory itself.
fn walk_dir(dir: &Path, prefix: &str, depth: usize, w: &mut Walk) -> Result<()> {
    let entries = read_dir_sorted(dir)?;
    // Relation directories (base/<db>, PG_x/<db>) may hold unlogged relations.
    let init_forks: BTreeSet<String> = entries
        .iter()
        .filter_map(|(n, _)| n.strip_suffix("_init"))
        .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    for (name, path) in entries {
        let rel = format!("{prefix}/{name}");
        if name.starts_with("pgsql_tmp") || name == "pg_internal.init" {
            continue;
        }
        if depth == 0 && EXCLUDED_TOP_FILES.contains(&name.as_str()) {
            continue;
        }
        if is_unlogged_non_init(&name, &init_forks) {
            continue;
        }
        let lmeta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // vanished
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if depth == 0 && name == "pg_tblspc" {
            // Its symlinks are recreated from the tablespace list.
            w.dirs.push(DirEntry {
                path: rel,
                mode: mode_of(&lmeta),
            });
            continue;
        }
        let is_link = lmeta.file_type().is_symlink();
        let meta = if is_link {
            match fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => {
                    crate::log_warn!("skipping dangling symlink {}", path.display());
                    continue;
                }
            }
        } else {
            lmeta
        };
        if meta.is_dir() {
            let mode = mode_of(&meta);
            if depth == 0 && EXCLUDED_CONTENTS.contains(&name.as_str()) {
                w.dirs.push(DirEntry {
                    path: rel.clone(),
                    mode,
                });
                if name == "pg_wal" || name == "pg_xlog" {
                    w.dirs.push(DirEntry {
                        path: format!("{rel}/archive_status"),
                        mode: 0o700,
                    });
                }
                continue;
            }
            if is_link {
                crate::log_warn!(
                    "skipping {}: a symlink to a directory outside pg_tblspc",
                    path.display()
                );
                continue;
            }
            w.dirs.push(DirEntry {
                path: rel.clone(),
                mode,
            });
            walk_dir(&path, &rel, depth + 1, w)?;
        } else if meta.is_file() {
            w.files.push(Job {
                src: path,
                path: rel,
                size: meta.len(),
            });
        }
        // Sockets, FIFOs and devices are not data.
    }
    Ok(())
}

/// Shared state of the storing workers.
struct StoreCtx<'a> {
    storage: &'a dyn Storage,
    server: &'a str,
    id: &'a BackupId,
    codec: Codec,
    parent: Option<&'a Manifest>,
    parent_files: HashMap<&'a str, &'a FileEntry>,
    checksum: bool,
    links: Mutex<Vec<(String, String)>>,
    progress: indicatif::ProgressBar,
}

#[allow(clippy::too_many_arguments)]
fn store_files(
    storage: &dyn Storage,
    server: &ServerInfo,
    id: &BackupId,
    codec: Codec,
    parent: Option<&Manifest>,
    opts: &BackupOptions,
    jobs: usize,
    mut files: Vec<Job>,
) -> Result<Vec<FileEntry>> {
    // Largest first, so that the last worker does not start a huge file alone.
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let total: u64 = files.iter().map(|f| f.size).sum();
    let ctx = StoreCtx {
        storage,
        server: &server.name,
        id,
        codec,
        parent,
        parent_files: parent
            .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default(),
        checksum: opts.checksum,
        links: Mutex::new(Vec::new()),
        progress: progress_bar(total, opts.progress),
    };
    let results: Mutex<Vec<FileEntry>> = Mutex::new(Vec::with_capacity(files.len()));
    let stored = crate::util::workers::try_for_each(jobs, &files, |_, job| {
        if let Some(entry) = store_one(&ctx, job)? {
            if let Ok(mut r) = results.lock() {
                r.push(entry);
            }
        }
        ctx.progress.inc(job.size);
        Ok(())
    });
    ctx.progress.finish_and_clear();
    stored?;
    let links = ctx.links.into_inner().unwrap_or_default();
    for chunk in links.chunks(1000) {
        storage.link_or_copy_all(chunk)?;
    }
    // One flush for every file instead of an fsync each (about 15 ms apiece on
    // ordinary disks); still well before the manifest makes the backup count.
    storage.sync_deferred()?;
    let mut out = results.into_inner().unwrap_or_default();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Store one file; `None` when it vanished meanwhile.
fn store_one(ctx: &StoreCtx<'_>, job: &Job) -> Result<Option<FileEntry>> {
    let meta = match fs::metadata(&job.src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("stat {}", job.src.display()), e)),
    };
    let size = meta.len();
    let mtime = meta.mtime();
    let mode = mode_of(&meta);
    let parent_entry = match (ctx.parent, ctx.parent_files.get(job.path.as_str())) {
        (Some(parent), Some(prev)) if prev.size == size => Some((parent, *prev)),
        _ => None,
    };
    let link = |parent: &Manifest, prev: &FileEntry| -> FileEntry {
        let from = manifest::stored_path(ctx.server, &parent.id, &prev.path, parent.compression);
        let to = manifest::stored_path(ctx.server, ctx.id, &job.path, ctx.codec.compression);
        if let Ok(mut l) = ctx.links.lock() {
            l.push((from, to));
        }
        FileEntry {
            path: job.path.clone(),
            size,
            mtime,
            mode,
            sha256: prev.sha256.clone(),
            stored_size: prev.stored_size,
            reused: true,
        }
    };
    if let Some((parent, prev)) = parent_entry {
        if prev.mtime == mtime {
            let trusted =
                !ctx.checksum && mtime + SAFE_HORIZON_SECS <= parent.start_time.timestamp();
            // Same size and mtime but not provably old (or --checksum): most likely
            // unchanged, so hashing first usually saves the compression.
            let same = trusted
                || match File::open(&job.src) {
                    Ok(mut f) => {
                        let (sha, _) = codec::hash(&[], &mut f)
                            .io_context(|| format!("reading {}", job.src.display()))?;
                        sha == prev.sha256
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(format!("opening {}", job.src.display()), e)),
                };
            if same {
                return Ok(Some(link(parent, prev)));
            }
        }
    }
    let mut file = match File::open(&job.src) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", job.src.display()), e)),
    };
    let target = manifest::stored_path(ctx.server, ctx.id, &job.path, ctx.codec.compression);
    let (dir, name) = storage::split_path(&target)?;
    // Synced all at once by `sync_deferred` before the manifest is written.
    let mut out = ctx.storage.create_deferred(dir)?;
    // A file that changes while read is fine: WAL replay from the backup's start
    // rewrites every block changed after it.
    let stats = codec::encode(&[], &mut file, &mut out, ctx.codec).map_err(|e| {
        Error::io(
            format!(
                "storing {} into {}",
                job.src.display(),
                ctx.storage.location()
            ),
            e,
        )
    })?;
    if let Some((parent, prev)) = parent_entry {
        // A newer mtime usually means new content, so the file was copied in one pass;
        // if its SHA-256 shows it is the same after all, link it instead (dropping the
        // uncommitted copy removes it).
        if stats.sha256 == prev.sha256 && stats.size == prev.size {
            drop(out);
            return Ok(Some(link(parent, prev)));
        }
    }
    out.commit(name, Overwrite::Replace)?;
    Ok(Some(FileEntry {
        path: job.path.clone(),
        size: stats.size,
        mtime,
        mode,
        sha256: stats.sha256,
        stored_size: stats.stored_size,
        reused: false,
    }))
}

/// The segments from `start` to `stop` (inclusive) on one timeline.
pub fn segments_between(start: &str, stop: &str, segment_size: u64) -> Result<Vec<Segment>> {
    let a = WalName::parse(start)?
        .segment()
        .ok_or_else(|| Error::invalid(format!("{start} is not a segment")))?;
    let b = WalName::parse(stop)?
        .segment()
        .ok_or_else(|| Error::invalid(format!("{stop} is not a segment")))?;
    if a.timeline != b.timeline {
        return Err(Error::new(
            ErrorKind::Postgres,
            format!("the timeline changed during the backup ({start} to {stop}); take it again"),
        ));
    }
    let (na, nb) = (a.number(segment_size), b.number(segment_size));
    if nb < na {
        return Err(Error::invalid(format!(
            "stop WAL {stop} precedes start WAL {start}"
        )));
    }
    Ok((na..=nb)
        .map(|n| Segment::from_number(a.timeline, n, segment_size))
        .collect())
}

/// What `pg_stat_archiver` says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArchiverStatus {
    failed_count: i64,
    last_failed_wal: Option<String>,
    last_failed_time: Option<DateTime<Utc>>,
    last_archived_time: Option<DateTime<Utc>>,
}

/// Read `pg_stat_archiver`; `None` (and a debug line) if it cannot be read, since the
/// bounded wait still catches a broken archive_command, only later.
fn archiver_status(client: &mut postgres::Client) -> Option<ArchiverStatus> {
    let read = |client: &mut postgres::Client| -> Result<ArchiverStatus> {
        let row = client
            .query_one(
                "SELECT failed_count, last_failed_wal, last_failed_time, last_archived_time \
                 FROM pg_stat_archiver",
                &[],
            )
            .map_err(|e| pg::query_error("reading pg_stat_archiver", e))?;
        let what = "pg_stat_archiver";
        let time = |t: Option<std::time::SystemTime>| t.map(DateTime::<Utc>::from);
        Ok(ArchiverStatus {
            failed_count: pg::column(&row, 0, what)?,
            last_failed_wal: pg::column(&row, 1, what)?,
            last_failed_time: time(pg::column(&row, 2, what)?),
            last_archived_time: time(pg::column(&row, 3, what)?),
        })
    };
    match read(client) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::log_debug!("{e}");
            None
        }
    }
}

/// PostgreSQL's archiver tries a file this many times (one second apart) before it
/// sleeps for up to a minute; so many failures in a row mean the command is broken,
/// not that one attempt hit a passing hiccup.
const ARCHIVER_RETRIES: i64 = 3;

/// Whether the archiver keeps failing on a file that blocks the segments in
/// `missing` (sorted, same timeline): one of them, an older segment of that timeline
/// (the archiver goes in order, so ours wait behind it), or a history file (archived
/// first). Returns the failing file's name.
fn archiver_stuck<'s>(
    before: &ArchiverStatus,
    now: &'s ArchiverStatus,
    missing: &[String],
) -> Option<&'s str> {
    let wal = now.last_failed_wal.as_deref()?;
    let failed_at = now.last_failed_time?;
    if now.failed_count - before.failed_count < ARCHIVER_RETRIES {
        return None;
    }
    // Something was archived after that failure: archiving works (again).
    if now.last_archived_time.is_some_and(|a| a >= failed_at) {
        return None;
    }
    let last = missing.last()?;
    let blocks = if wal.ends_with(".history") {
        true
    } else {
        match (wal.get(..24), wal.get(..8), last.get(..8)) {
            (Some(seg), Some(tli), Some(our_tli)) => tli == our_tli && seg <= last.as_str(),
            _ => false,
        }
    };
    blocks.then_some(wal)
}

/// Wait until every segment from `start` to `stop` is archived, up to `timeout`, but
/// fail within seconds when `pg_stat_archiver` shows the archiver failing again and
/// again on a file these segments wait for (compared with `before`, read just
/// before the backup stopped).
#[allow(clippy::too_many_arguments)]
fn wait_for_wal(
    storage: &dyn Storage,
    server: &ServerInfo,
    start: &str,
    stop: &str,
    timeout: Duration,
    client: &mut postgres::Client,
    before: Option<ArchiverStatus>,
    progress: bool,
) -> Result<()> {
    let needed = segments_between(start, stop, server.wal_segment_size)?;
    let deadline = Instant::now() + timeout;
    let spinner = progress_bar(0, progress);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed_precise} {msg}") {
        spinner.set_style(style);
    }
    let mut announced: Option<String> = None;
    // Short polls first: the stop segment is usually archived within a second.
    let mut pause = Duration::from_millis(50);
    let result = loop {
        let missing = missing_segments(storage, &server.name, &needed)?;
        let Some(first) = missing.first() else {
            break Ok(());
        };
        if announced.as_deref() != Some(first.as_str()) {
            let line = format!(
                "waiting for WAL segment {first} to be archived ({} of {} still missing)",
                missing.len(),
                needed.len()
            );
            crate::log_info!("{line}");
            spinner.set_message(line);
            announced = Some(first.clone());
        }
        spinner.tick();
        if let (Some(before), Some(now)) = (&before, archiver_status(client)) {
            if let Some(wal) = archiver_stuck(before, &now, &missing) {
                let at = now.last_failed_time.map_or_else(
                    || "?".to_string(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                break Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "WAL segment {first} that this backup needs cannot be archived: \
                         pg_stat_archiver reports {} failures since the backup stopped \
                         (failed_count {}), the last for {wal} at {at}, and nothing archived \
                         since; fix archive_command (see the PostgreSQL server log for its \
                         error) and take the backup again",
                        now.failed_count - before.failed_count,
                        now.failed_count
                    ),
                ));
            }
        }
        if Instant::now() >= deadline {
            break Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{} of the {} WAL segments this backup needs ({start} to {stop}) did not \
                     reach {} within {}s, first {first}; check archive_command and \
                     pg_stat_archiver (backup_wal_timeout raises the bound)",
                    missing.len(),
                    needed.len(),
                    storage.location(),
                    timeout.as_secs(),
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    };
    spinner.finish_and_clear();
    result
}

/// Names of the segments of `needed` not in the archive (one listing per directory).
pub fn missing_segments(
    storage: &dyn Storage,
    server: &str,
    needed: &[Segment],
) -> Result<Vec<String>> {
    let mut by_dir: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut missing = Vec::new();
    for seg in needed {
        let name = WalName::parse(&seg.file_name())?;
        let dir = layout::wal_dir(server, &name);
        if !by_dir.contains_key(&dir) {
            let present = storage
                .list(&dir)?
                .into_iter()
                .filter_map(|e| archive::parse_stored_name(&e.name))
                .map(|(n, _, _)| n.to_string())
                .collect();
            by_dir.insert(dir.clone(), present);
        }
        if !by_dir.get(&dir).is_some_and(|p| p.contains(name.as_str())) {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repeated_failures_on_a_file_we_wait_for_stop_the_wait() {
        let t = |s: i64| Some(Utc::now() - chrono::Duration::seconds(s));
        let before = ArchiverStatus {
            failed_count: 5,
            last_failed_wal: Some("000000010000000000000001".into()),
            last_failed_time: t(3600),
            last_archived_time: t(60),
        };
        let missing = vec![
            "000000010000000000000004".to_string(),
            "000000010000000000000005".to_string(),
        ];
        let failing = |count: i64, wal: &str, archived: Option<DateTime<Utc>>| ArchiverStatus {
            failed_count: count,
            last_failed_wal: Some(wal.into()),
            last_failed_time: t(1),
            last_archived_time: archived,
        };
        let ours = "000000010000000000000004";
        // Three failures in a row on a segment we need: stuck.
        assert_eq!(
            archiver_stuck(&before, &failing(8, ours, t(60)), &missing),
            Some(ours)
        );
        // An older segment blocks ours too (the archiver goes in order); so does a
        // history file.
        let older = "000000010000000000000003";
        assert!(archiver_stuck(&before, &failing(8, older, t(60)), &missing).is_some());
        assert!(archiver_stuck(&before, &failing(8, "00000002.history", None), &missing).is_some());
        // A single (or double) failure is a passing hiccup.
        assert_eq!(
            archiver_stuck(&before, &failing(6, ours, t(60)), &missing),
            None
        );
        assert_eq!(
            archiver_stuck(&before, &failing(7, ours, t(60)), &missing),
            None
        );
        // Archived since the last failure: archiving works again.
        assert_eq!(
            archiver_stuck(&before, &failing(9, ours, t(0)), &missing),
            None
        );
        // A later segment or another timeline is not what we wait for.
        let later = "000000010000000000000009";
        assert_eq!(
            archiver_stuck(&before, &failing(9, later, t(60)), &missing),
            None
        );
        let other = "000000020000000000000004";
        assert_eq!(
            archiver_stuck(&before, &failing(9, other, t(60)), &missing),
            None
        );
        assert_eq!(archiver_stuck(&before, &before, &missing), None);
    }

    #[test]
    fn unlogged_relations_are_recognised() {
        let forks: BTreeSet<String> = ["16390".to_string()].into();
        assert!(is_unlogged_non_init("16390", &forks));
        assert!(is_unlogged_non_init("16390.1", &forks));
        assert!(is_unlogged_non_init("16390_fsm", &forks));
        assert!(!is_unlogged_non_init("16390_init", &forks));
        assert!(!is_unlogged_non_init("1639", &forks));
        assert!(!is_unlogged_non_init("16391", &forks));
        assert!(!is_unlogged_non_init("PG_VERSION", &forks));
    }

    #[test]
    fn walk_applies_exclusions() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "base/pgsql_tmp",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/pg_internal.init",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x.stat",
            "base/1/100",
            "base/1/200",
            "base/1/200_init",
            "base/1/200_fsm",
            "base/pgsql_tmp/pgsql_tmp1.0",
        ] {
            fs::write(root.join(f), b"x").unwrap();
        }
        let ts = tempfile::tempdir().unwrap();
        fs::create_dir_all(ts.path().join("PG_15_202209061/5")).unwrap();
        fs::create_dir_all(ts.path().join("PG_14_202107181")).unwrap();
        fs::write(ts.path().join("PG_15_202209061/5/300"), b"y").unwrap();
        std::os::unix::fs::symlink(ts.path(), root.join("pg_tblspc/16400")).unwrap();
        let names: HashMap<u32, String> = [(16400, "ts1".to_string())].into();
        let w = walk_cluster(root, 15, &names).unwrap();
        let files: Vec<&str> = w.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            files,
            [
                "data/PG_VERSION",
                "data/base/1/100",
                "data/base/1/200_init",
                "data/global/pg_control",
                "tablespaces/16400/PG_15_202209061/5/300"
            ]
        );
        let dirs: Vec<&str> = w.dirs.iter().map(|d| d.path.as_str()).collect();
        for want in [
            "data",
            "data/pg_wal",
            "data/pg_wal/archive_status",
            "data/pg_stat_tmp",
            "data/pg_tblspc",
            "tablespaces/16400",
        ] {
            assert!(dirs.contains(&want), "{want} in {dirs:?}");
        }
        assert!(!dirs
            .iter()
            .any(|d| d.contains("pgsql_tmp") || d.contains("PG_14")));
        assert_eq!(w.tablespaces.len(), 1);
        assert_eq!(w.tablespaces[0].name.as_deref(), Some("ts1"));
    }

    fn parent_with(entry: FileEntry, start: DateTime<Utc>) -> Manifest {
        use crate::repo::manifest::Totals;
        let v = serde_json::json!({
            "format": 1, "id": "20261122T000000Z", "label": "", "status": "done",
            "parent": null, "server": "main", "pg_version_num": 150010,
            "system_identifier": "1", "wal_segment_size": 1048576, "timeline": 1,
            "start_lsn": "0/1", "stop_lsn": "0/2", "start_wal": "000000010000000000000001",
            "stop_wal": "000000010000000000000001", "start_time": start, "stop_time": start,
            "backup_label": "", "tablespace_map": "", "tablespaces": [],
            "compression": "zstd", "compression_level": 3, "totals": Totals::default(),
            "directories": [], "files": [entry], "created_by": "test"
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reuse_follows_the_safe_horizon() {
        use crate::storage::LocalStorage;
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("repo"));
        let id = BackupId::parse("20261123T000000Z").unwrap();
        s.create_dir_all("main/backups/20261123T000000Z/data")
            .unwrap();
        let src = d.path().join("f");
        fs::write(&src, b"hello").unwrap();
        let old = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let job = Job {
            src: src.clone(),
            path: "data/f".into(),
            size: 5,
        };
        let hello = FileEntry {
            path: "data/f".into(),
            size: 5,
            mtime: 1_700_000_000,
            mode: 0o600,
            sha256: codec::hash(b"hello", &mut io::empty()).unwrap().0,
            stored_size: 14,
            reused: false,
        };
        let other = FileEntry {
            sha256: "0".repeat(64),
            ..hello.clone()
        };
        let decide = |parent: Option<&Manifest>, checksum: bool| {
            let ctx = StoreCtx {
                storage: &s,
                server: "main",
                id: &id,
                codec: Codec::default(),
                parent,
                parent_files: parent
                    .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
                    .unwrap_or_default(),
                checksum,
                links: Mutex::new(Vec::new()),
                progress: indicatif::ProgressBar::hidden(),
            };
            let e = store_one(&ctx, &job).unwrap().unwrap();
            let links = ctx.links.into_inner().unwrap();
            assert_eq!(e.reused, links.len() == 1);
            e
        };
        let start = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
        // No parent: copied, hashed.
        let e = decide(None, false);
        assert!(!e.reused);
        assert_eq!(e.sha256, hello.sha256);
        // Same size and mtime, well before the parent's start: trusted without reading
        // (the parent's recorded hash differs, proving nothing was read).
        let p = parent_with(other.clone(), start(1_700_000_100));
        assert!(decide(Some(&p), false).reused);
        // ... unless --checksum, which reads and sees the difference.
        assert!(!decide(Some(&p), true).reused);
        // Within the horizon of the parent's start, the hash decides.
        let p = parent_with(other, start(1_700_000_001));
        assert!(!decide(Some(&p), false).reused);
        let p = parent_with(hello.clone(), start(1_700_000_001));
        assert!(decide(Some(&p), false).reused);
        // A newer mtime is copied in one pass, and linked after all when the hash
        // matches (leaving no stored copy behind); a different hash keeps the copy.
        let newer = FileEntry {
            mtime: 1_600_000_000,
            ..hello
        };
        let p = parent_with(newer.clone(), start(1_700_000_100));
        assert!(decide(Some(&p), false).reused);
        let copy = d
            .path()
            .join("repo/main/backups/20261123T000000Z/data/f.zst");
        fs::remove_file(&copy).unwrap(); // from the earlier copies
        assert!(decide(Some(&p), true).reused);
        assert!(!copy.exists());
        let p = parent_with(
            FileEntry {
                sha256: "1".repeat(64),
                ..newer
            },
            start(1_700_000_100),
        );
        assert!(!decide(Some(&p), false).reused);
        assert!(copy.exists());
        // A file that vanished is skipped, not an error.
        fs::remove_file(&src).unwrap();
        let ctx = StoreCtx {
            storage: &s,
            server: "main",
            id: &id,
            codec: Codec::default(),
            parent: None,
            parent_files: HashMap::new(),
            checksum: false,
            links: Mutex::new(Vec::new()),
            progress: indicatif::ProgressBar::hidden(),
        };
        assert!(store_one(&ctx, &job).unwrap().is_none());
    }

    #[test]
    fn segment_ranges() {
        let s = segments_between(
            "0000000100000000000000FE",
            "000000010000000100000001",
            1 << 24,
        )
        .unwrap();
        let names: Vec<String> = s.iter().map(|s| s.file_name()).collect();
        assert_eq!(
            names,
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert!(segments_between(
            "000000010000000000000002",
            "000000020000000000000003",
            1 << 24
        )
        .is_err());
    }
}
