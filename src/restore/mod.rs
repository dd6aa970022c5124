//! `restore`: materialise a backup into a data directory and set up recovery.
//!
//! Order of work: check the destination (empty, or `--delta`; no running postmaster),
//! remove `global/pg_control` first (durably) when reusing a directory, create
//! directories with their modes and the tablespace links, write every file under a
//! temporary name with `--jobs` workers, verify its SHA-256 and only then rename it
//! into place, write `backup_label`, `tablespace_map`, the recovery settings and the
//! signal file, and rename `global/pg_control` into place last: a restore that fails
//! or is interrupted at any point leaves a directory PostgreSQL refuses to start.

use crate::codec;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::manifest::{self, FileEntry, Manifest, DATA_PREFIX, TABLESPACE_PREFIX};
use crate::repo::Repository;
use crate::storage::Storage;
use crate::util::{shell_quote, sync_dir};
use crate::wal;
use chrono::{DateTime, FixedOffset, Utc};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// The control file, written last.
const PG_CONTROL: &str = "data/global/pg_control";

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `recovery_target_time` (the text as given, and its parsed instant).
    Time(String, DateTime<FixedOffset>),
    /// `recovery_target_xid`.
    Xid(u64),
    /// `recovery_target_lsn` (as given, and as a number).
    Lsn(String, u64),
    /// `recovery_target_name` (a restore point).
    Name(String),
    /// `recovery_target = 'immediate'`: as soon as the backup is consistent.
    Immediate,
}

impl Target {
    /// Parse a time target; it must carry a time zone, since we compare it with
    /// backup stop times and PostgreSQL would otherwise read it in its own zone.
    pub fn time(s: &str) -> Result<Target> {
        let t = s.trim();
        let parsed = DateTime::parse_from_rfc3339(t)
            .ok()
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z").ok())
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%#z").ok())
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f %#z").ok());
        match parsed {
            Some(dt) => Ok(Target::Time(t.to_string(), dt)),
            None => Err(Error::invalid(format!(
                "--target-time {:?} is not a timestamp with a time zone \
                 (e.g. '2026-11-03 13:00:00+00' or 2026-11-03T13:00:00Z)",
                crate::names::truncate_for_display(s)
            ))),
        }
    }

    /// Parse a transaction id target.
    pub fn xid(s: &str) -> Result<Target> {
        s.trim()
            .parse::<u64>()
            .map(Target::Xid)
            .map_err(|_| Error::invalid(format!("--target-xid {s:?} is not a transaction id")))
    }

    /// Parse an LSN target (`X/Y`).
    pub fn lsn(s: &str) -> Result<Target> {
        let n = wal::parse_lsn(s.trim())?;
        Ok(Target::Lsn(wal::format_lsn(n), n))
    }

    /// A restore point name target.
    pub fn name(s: &str) -> Result<Target> {
        if s.is_empty() || s.len() > 63 || s.contains(['\n', '\r', '\0']) {
            return Err(Error::invalid(
                "--target-name must be 1-63 characters on one line",
            ));
        }
        Ok(Target::Name(s.to_string()))
    }
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    /// Follow the newest timeline found in the archive.
    Latest,
    /// Stay on the backup's timeline.
    Current,
    /// A given timeline.
    Id(u32),
}

impl FromStr for TimelineTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "latest" => Ok(TimelineTarget::Latest),
            "current" => Ok(TimelineTarget::Current),
            n => match n.parse::<u32>() {
                Ok(id) if id > 0 => Ok(TimelineTarget::Id(id)),
                _ => Err(format!(
                    "{n:?} is not a timeline (expected latest, current or a positive number)"
                )),
            },
        }
    }
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Pause at the target (PostgreSQL's default).
    Pause,
    /// End recovery and open for writes.
    Promote,
    /// Shut down at the target.
    Shutdown,
}

impl FromStr for TargetAction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!(
                "{s:?} is not a target action (expected pause, promote or shutdown)"
            )),
        }
    }
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// `--archive-mode`: what the restored cluster does with its source's archiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// Replace `archive_command` by one that archives nothing and fails, so a copy
    /// never pushes a new timeline into its source's repository.
    #[default]
    Off,
    /// Keep the source's archiving settings (a real failover).
    Preserve,
}

impl FromStr for ArchiveMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(ArchiveMode::Off),
            "preserve" => Ok(ArchiveMode::Preserve),
            _ => Err(format!(
                "{s:?} is not an archive mode (expected off or preserve)"
            )),
        }
    }
}

/// The `archive_command` a restore writes by default. It fails on every call, so
/// PostgreSQL keeps each segment (`.ready`) and reports the failure in its log and in
/// `pg_stat_archiver`; the comment is what the DBA sees in "The failed archive command
/// was: ...".
pub const DISABLED_ARCHIVE_COMMAND: &str =
    "false  # archiving disabled by pgcellar restore; see restore --archive-mode";

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `--backup ID|latest|oldest`; default: chosen from the target.
    pub backup: Option<String>,
    /// Recovery target.
    pub target: Option<Target>,
    /// Stop just before the target instead of just after.
    pub exclusive: bool,
    /// Timeline to follow.
    pub target_timeline: Option<TimelineTarget>,
    /// What to do at the target.
    pub target_action: Option<TargetAction>,
    /// Start as a standby (`standby.signal`, `wal-get --standby`).
    pub standby: bool,
    /// Reuse matching files of an existing directory, remove the others.
    pub delta: bool,
    /// `OID_OR_NAME=DIR` tablespace relocations.
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Parallel workers (default: `Settings::jobs`).
    pub jobs: Option<usize>,
    /// The data directory to restore into.
    pub dest: PathBuf,
    /// Show a progress bar (only effective on a terminal).
    pub progress: bool,
    /// Keep or disable the source's archiving in the restored cluster.
    pub archive_mode: ArchiveMode,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The backup restored.
    pub backup: manifest::BackupId,
    /// Files written.
    pub written: u64,
    /// Files kept as they were (`--delta`).
    pub kept: u64,
    /// Files or directories removed (`--delta`).
    pub removed: u64,
}

/// Parse `OID_OR_NAME=DIR`.
pub fn parse_tablespace_mapping(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && v.starts_with('/') => {
            Ok((k.to_string(), PathBuf::from(v)))
        }
        _ => Err(format!("{s:?}: expected OID_OR_NAME=/absolute/directory")),
    }
}

/// Whether `m` ends before `target`, so that PostgreSQL can stop at it; `None` when
/// the manifest cannot tell (an xid or a restore point: it records neither).
fn ends_before(m: &Manifest, target: &Option<Target>) -> Option<bool> {
    match target {
        Some(Target::Time(_, t)) => Some(m.stop_time < t.with_timezone(&Utc)),
        Some(Target::Lsn(_, lsn)) => Some(wal::parse_lsn(&m.stop_lsn).is_ok_and(|s| s <= *lsn)),
        Some(Target::Xid(_) | Target::Name(_)) => None,
        Some(Target::Immediate) | None => Some(true),
    }
}

fn describe_target(target: &Option<Target>) -> String {
    match target {
        Some(Target::Time(t, _)) => format!("--target-time {t}"),
        Some(Target::Lsn(l, _)) => format!("--target-lsn {l}"),
        Some(Target::Xid(x)) => format!("--target-xid {x}"),
        Some(Target::Name(n)) => format!("--target-name {n}"),
        Some(Target::Immediate) => "--target-immediate".into(),
        None => "the end of the archive".into(),
    }
}

fn describe_end(m: &Manifest) -> String {
    format!(
        "{} (ended at {} / LSN {})",
        m.id,
        m.stop_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        m.stop_lsn
    )
}

/// Pick the backup to restore: the given one, else the newest that ended before a
/// time or LSN target, else the newest. A given backup that ends after the target is
/// refused: PostgreSQL would replay it to its end, past the target, and say nothing.
pub fn choose_backup(
    storage: &dyn Storage,
    server: &str,
    opts: &RestoreOptions,
) -> Result<Manifest> {
    let newest_fitting = |all: &[Manifest]| -> Option<Manifest> {
        all.iter()
            .rev()
            .find(|m| ends_before(m, &opts.target) != Some(false))
            .cloned()
    };
    if let Some(spec) = &opts.backup {
        let id = manifest::resolve(storage, server, spec)?;
        let m = manifest::load(storage, server, &id)?;
        if ends_before(&m, &opts.target) != Some(false) {
            return Ok(m);
        }
        let all = manifest::load_all(storage, server)?;
        let hint = match newest_fitting(&all) {
            Some(f) => format!(
                "the newest backup that ended before it is {}; restore that one with \
                 --backup {}, or leave out --backup",
                describe_end(&f),
                f.id
            ),
            None => format!("no backup of server {server} ended before it"),
        };
        return Err(Error::invalid(format!(
            "backup {} ended after {}, so PostgreSQL would recover past the target; {hint}",
            describe_end(&m),
            describe_target(&opts.target)
        )));
    }
    let all = manifest::load_all(storage, server)?;
    let Some(oldest) = all.first() else {
        return Err(Error::not_found(format!(
            "server {server} has no complete backup in {}",
            storage.location()
        )));
    };
    newest_fitting(&all).ok_or_else(|| {
        Error::not_found(format!(
            "no backup of server {server} ended before {} (the oldest is {})",
            describe_target(&opts.target),
            describe_end(oldest)
        ))
    })
}

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
    let wal_get = wal_get_path()?;
    let dest = absolute(&opts.dest)?;
    check_runnable_by_owner(&wal_get, &dest)?;
    let repo = Repository::open(settings)?;
    let server = settings.server_name()?.to_string();
    repo.server(&server)?;
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
    let control_tmp = restore_to_temp(storage, &server, &m, &mapper, &owner, control)?;
    let jobs = settings.backup.workers(opts.jobs);
    let (written, kept) = restore_files(storage, &server, &m, &mapper, &owner, others, jobs, opts)?;

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

/// Check that the owner of the data directory (who runs restore_command) can execute
/// `wal_get`: every directory above it searchable, the file executable. Run as root,
/// restore would otherwise happily write e.g. /root/.cargo/bin/wal-get into
/// restore_command, and recovery would fail with "Permission denied".
fn check_runnable_by_owner(wal_get: &Path, dest: &Path) -> Result<()> {
    let (uid, gid) = future_owner(dest)?;
    if uid == 0 {
        return Ok(());
    }
    let groups = groups_of(uid, gid);
    let who = user_name(uid).map_or(format!("uid {uid}"), |n| format!("{n} (uid {uid})"));
    let mut paths = vec![wal_get.to_path_buf()];
    if let Ok(real) = fs::canonicalize(wal_get) {
        if real != wal_get {
            paths.push(real);
        }
    }
    for p in &paths {
        let mut steps: Vec<&Path> = p.ancestors().skip(1).collect();
        steps.reverse();
        steps.push(p);
        for step in steps {
            let meta = fs::metadata(step).io_context(|| format!("stat {}", step.display()))?;
            if !may_execute(&meta, uid, &groups) {
                let what = if step == p.as_path() {
                    "cannot execute"
                } else {
                    "cannot enter"
                };
                return Err(Error::config(format!(
                    "{who}, the owner of {}, {what} {} (mode {:04o}, owner uid {}), so the \
                     restore_command {} would fail; install the binaries where that user \
                     can run them, e.g. `cargo install --path . --root /usr/local`, and run \
                     /usr/local/bin/restore",
                    dest.display(),
                    step.display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    wal_get.display()
                )));
            }
        }
    }
    Ok(())
}

/// The uid and gid the data directory will have: its own if it exists; else the
/// parent's when we are root (prepare_dest hands a new directory to the parent's
/// owner); else ours.
fn future_owner(dest: &Path) -> Result<(u32, u32)> {
    if let Ok(meta) = fs::metadata(dest) {
        return Ok((meta.uid(), meta.gid()));
    }
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        if let Some(meta) = dest.parent().and_then(|p| fs::metadata(p).ok()) {
            return Ok((meta.uid(), meta.gid()));
        }
    }
    Ok((euid, egid))
}

/// Whether a process of `uid` with `groups` may execute (search) `meta`, by the
/// permission bits (POSIX ACLs are not consulted).
fn may_execute(meta: &fs::Metadata, uid: u32, groups: &[u32]) -> bool {
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if groups.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The passwd entry of `uid`: (name, primary gid).
fn passwd_of(uid: u32) -> Option<(std::ffi::CString, u32)> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: passwd is plain old data; getpwuid_r fills it and points its strings
    // into `buf`, which outlives every use below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the length given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_owned();
    Some((name, pw.pw_gid))
}

fn user_name(uid: u32) -> Option<String> {
    passwd_of(uid).map(|(n, _)| n.to_string_lossy().into_owned())
}

/// Every group `uid` runs with (primary and supplementary); just `gid` for a uid
/// without a passwd entry.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let Some((name, primary)) = passwd_of(uid) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n.max(1) as usize];
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` holds `count` entries; `name` is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n > 65536 {
            return vec![primary];
        }
        n = count;
    }
}

/// `wal-get` next to this executable: restore_command must not depend on PATH.
fn wal_get_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().io_context(|| "locating the restore binary".into())?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::config("cannot find the directory of the restore binary"))?;
    let p = dir.join("wal-get");
    if !p.is_file() {
        return Err(Error::config(format!(
            "{} not found: restore writes its absolute path into restore_command, so wal-get \
             must be installed next to restore",
            p.display()
        )));
    }
    Ok(p)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .io_context(|| "reading the current directory".into())?
            .join(p))
    }
}

/// Refuse a running postmaster and (without `--delta`) a non-empty directory; create
/// a missing one (0700).
fn prepare_dest(dest: &Path, delta: bool) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dest)
                .io_context(|| format!("creating {}", dest.display()))?;
            // Run as root, a new directory belongs to the owner of its parent
            // (normally postgres), so that everything restored into it does too.
            if let Some(parent) = dest.parent() {
                let p = fs::metadata(parent).io_context(|| format!("stat {}", parent.display()))?;
                Owner::root_chown_to(p.uid(), p.gid()).apply(dest)?;
            }
            return Ok(());
        }
        Err(e) => return Err(Error::io(format!("stat {}", dest.display()), e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::invalid(format!(
                "{} exists and is not a directory",
                dest.display()
            )))
        }
        Ok(_) => {}
    }
    check_no_postmaster(dest)?;
    let non_empty = fs::read_dir(dest)
        .io_context(|| format!("listing {}", dest.display()))?
        .next()
        .is_some();
    if non_empty && !delta {
        return Err(Error::invalid(format!(
            "{} is not empty; restore into an empty directory, or use --delta to reuse \
             matching files and remove the rest",
            dest.display()
        )));
    }
    Ok(())
}

fn check_no_postmaster(dir: &Path) -> Result<()> {
    let pidfile = dir.join("postmaster.pid");
    let text = match fs::read_to_string(&pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", pidfile.display()), e)),
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok());
    if let Some(pid) = pid {
        if crate::util::process_alive(pid) {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "a postmaster (pid {pid}) is running in {}; stop it first (if that pid is \
                     not PostgreSQL, remove the stale postmaster.pid)",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Target directory of each tablespace, honouring `--tablespace-map`.
fn tablespace_locations(
    m: &Manifest,
    mapping: &[(String, PathBuf)],
) -> Result<std::collections::BTreeMap<u32, PathBuf>> {
    let mut used = HashSet::new();
    let mut out = std::collections::BTreeMap::new();
    for ts in &m.tablespaces {
        let mut loc = PathBuf::from(&ts.location);
        for (key, dir) in mapping {
            if key == &ts.oid.to_string() || ts.name.as_deref() == Some(key.as_str()) {
                loc = dir.clone();
                used.insert(key.clone());
            }
        }
        if !loc.is_absolute() {
            return Err(Error::invalid(format!(
                "tablespace {} location {} is not absolute",
                ts.oid,
                loc.display()
            )));
        }
        out.insert(ts.oid, loc);
    }
    for (key, _) in mapping {
        if !used.contains(key) {
            let known: Vec<String> = m
                .tablespaces
                .iter()
                .map(|t| format!("{} ({})", t.oid, t.name.as_deref().unwrap_or("?")))
                .collect();
            return Err(Error::invalid(format!(
                "--tablespace-map {key}: backup {} has no such tablespace (it has: {})",
                m.id,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(out)
}

/// A tablespace target must not already hold this cluster's version directory.
fn check_tablespace_target(m: &Manifest, loc: &Path, delta: bool) -> Result<()> {
    if delta {
        return Ok(());
    }
    for d in &m.directories {
        let mut parts = d.path.splitn(4, '/');
        if let (Some(TABLESPACE_PREFIX), Some(_), Some(sub), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let p = loc.join(sub);
            if fs::read_dir(&p)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
            {
                return Err(Error::invalid(format!(
                    "tablespace directory {} is not empty; map the tablespace elsewhere with \
                     --tablespace-map, or use --delta",
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

/// Turns manifest paths into local paths.
struct PathMapper {
    dest: PathBuf,
    tablespaces: std::collections::BTreeMap<u32, PathBuf>,
}

impl PathMapper {
    fn local(&self, path: &str) -> Result<PathBuf> {
        manifest::check_manifest_path(path)?;
        let mut parts = path.split('/');
        match parts.next() {
            Some(DATA_PREFIX) => Ok(parts.fold(self.dest.clone(), |p, c| p.join(c))),
            Some(TABLESPACE_PREFIX) => {
                let oid: u32 = parts
                    .next()
                    .and_then(|o| o.parse().ok())
                    .ok_or_else(|| Error::corrupt(format!("bad manifest path {path:?}")))?;
                let base = self.tablespaces.get(&oid).ok_or_else(|| {
                    Error::corrupt(format!(
                        "manifest path {path:?} names an unknown tablespace"
                    ))
                })?;
                Ok(parts.fold(base.clone(), |p, c| p.join(c)))
            }
            _ => Err(Error::corrupt(format!("bad manifest path {path:?}"))),
        }
    }
}

/// Who should own restored files: the destination's owner, when we are root.
struct Owner(Option<(u32, u32)>);

impl Owner {
    fn of(dest: &Path) -> Result<Owner> {
        let meta = fs::metadata(dest).io_context(|| format!("stat {}", dest.display()))?;
        Ok(Owner::root_chown_to(meta.uid(), meta.gid()))
    }

    fn root_chown_to(uid: u32, gid: u32) -> Owner {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Owner((root && uid != 0).then_some((uid, gid)))
    }

    fn apply(&self, p: &Path) -> Result<()> {
        if let Some((u, g)) = self.0 {
            std::os::unix::fs::chown(p, Some(u), Some(g))
                .io_context(|| format!("chown {}", p.display()))?;
        }
        Ok(())
    }

    fn apply_nofollow(&self, p: &Path) -> Result<()> {
        if let Some((u, g)) = self.0 {
            std::os::unix::fs::lchown(p, Some(u), Some(g))
                .io_context(|| format!("chown {}", p.display()))?;
        }
        Ok(())
    }
}

/// Remove a file; whether there was one.
fn remove_if_exists(p: &Path) -> Result<bool> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}

fn write_small(path: &Path, data: &[u8], owner: &Owner) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .io_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .io_context(|| format!("writing {}", path.display()))?;
    owner.apply(path)
}

/// `--delta`: remove what the backup does not have (in the data directory and in this
/// cluster's tablespace version directories); returns how many entries went.
fn prune(m: &Manifest, mapper: &PathMapper) -> Result<u64> {
    let files: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let dirs: HashSet<&str> = m.directories.iter().map(|d| d.path.as_str()).collect();
    let mut removed = 0;
    prune_dir(&mapper.dest, DATA_PREFIX, &files, &dirs, &mut removed)?;
    for d in &m.directories {
        let depth = d.path.split('/').count();
        if d.path.starts_with(TABLESPACE_PREFIX) && depth == 3 {
            prune_dir(
                &mapper.local(&d.path)?,
                &d.path,
                &files,
                &dirs,
                &mut removed,
            )?;
        }
    }
    Ok(removed)
}

fn prune_dir(
    dir: &Path,
    prefix: &str,
    files: &HashSet<&str>,
    dirs: &HashSet<&str>,
    removed: &mut u64,
) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for e in rd {
        let e = e.io_context(|| format!("listing {}", dir.display()))?;
        let path = e.path();
        let name = e.file_name();
        let rel = format!("{prefix}/{}", name.to_string_lossy());
        let ft = e
            .file_type()
            .io_context(|| format!("stat {}", path.display()))?;
        if ft.is_dir() && dirs.contains(rel.as_str()) {
            prune_dir(&path, &rel, files, dirs, removed)?;
        } else if rel == "data/pg_wal" && ft.is_symlink() {
            // A relocated pg_wal stays where the DBA put it; only its contents go.
            prune_dir(&path, &rel, files, dirs, removed)?;
        } else if ft.is_dir() {
            fs::remove_dir_all(&path).io_context(|| format!("removing {}", path.display()))?;
            *removed += 1;
        } else if ft.is_symlink() || !files.contains(rel.as_str()) {
            remove_if_exists(&path)?;
            *removed += 1;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restore_files(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    mapper: &PathMapper,
    owner: &Owner,
    mut files: Vec<&FileEntry>,
    jobs: usize,
    opts: &RestoreOptions,
) -> Result<(u64, u64)> {
    files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let total: u64 = files.iter().map(|f| f.size).sum();
    let progress = crate::backup::progress_bar(total, opts.progress && files.len() > 1);
    let written = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let restored = crate::util::workers::try_for_each(jobs, &files, |_, entry| {
        let counter = if restore_one(storage, server, m, mapper, owner, entry, opts.delta)? {
            &written
        } else {
            &kept
        };
        counter.fetch_add(1, Ordering::Relaxed);
        progress.inc(entry.size);
        Ok(())
    });
    progress.finish_and_clear();
    restored?;
    Ok((written.into_inner() as u64, kept.into_inner() as u64))
}

/// Restore one file; `false` when `--delta` found it already identical.
fn restore_one(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    mapper: &PathMapper,
    owner: &Owner,
    entry: &FileEntry,
    delta: bool,
) -> Result<bool> {
    let local = mapper.local(&entry.path)?;
    if delta {
        if let Ok(meta) = fs::symlink_metadata(&local) {
            if meta.is_file() && meta.len() == entry.size {
                let mut f =
                    File::open(&local).io_context(|| format!("opening {}", local.display()))?;
                let (sha, _) = codec::hash(&[], &mut f)
                    .io_context(|| format!("reading {}", local.display()))?;
                if sha == entry.sha256 {
                    fs::set_permissions(&local, fs::Permissions::from_mode(entry.mode & 0o7777))
                        .io_context(|| format!("chmod {}", local.display()))?;
                    return Ok(false);
                }
            }
        }
    }
    // Durable later, with everything else (one syncfs before pg_control).
    restore_to_temp(storage, server, m, mapper, owner, entry)?.commit(false)?;
    Ok(true)
}

/// Suffix of a file being restored: it gets its final name only once verified, so a
/// failed or killed restore never leaves wrong bytes under a name PostgreSQL reads
/// (`--delta` removes leftovers, since no manifest lists them).
const TEMP_SUFFIX: &str = ".pgcellar-restore-tmp";

/// A restored, verified file under its temporary name; removed on drop unless
/// [`Pending::commit`] gave it its final name.
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Pending {
    /// Rename into place; `durable` also fsyncs the directory.
    fn commit(mut self, durable: bool) -> Result<()> {
        fs::rename(&self.tmp, &self.dest)
            .io_context(|| format!("renaming {} to {}", self.tmp.display(), self.dest.display()))?;
        self.committed = true;
        if durable {
            if let Some(dir) = self.dest.parent() {
                sync_dir(dir).io_context(|| format!("fsync {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Rebuild `entry` under a temporary name next to its final one and verify its size
/// and SHA-256 against the manifest.
fn restore_to_temp(
    storage: &dyn Storage,
    server: &str,
    m: &Manifest,
    mapper: &PathMapper,
    owner: &Owner,
    entry: &FileEntry,
) -> Result<Pending> {
    let local = mapper.local(&entry.path)?;
    let mut tmp_name = local
        .file_name()
        .ok_or_else(|| Error::corrupt(format!("bad manifest path {:?}", entry.path)))?
        .to_os_string();
    tmp_name.push(TEMP_SUFFIX);
    let tmp = local.with_file_name(tmp_name);
    let mtime = UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
    let stored = m.stored_path(server, entry);
    let mut input = storage.open_read(&stored)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .io_context(|| format!("creating {}", tmp.display()))?;
    let pending = Pending {
        tmp,
        dest: local,
        committed: false,
    };
    let tmp = &pending.tmp;
    let mut out = BufWriter::with_capacity(codec::BUF_SIZE, file);
    let stats = codec::decode(&mut input, &mut out, m.compression).map_err(|e| {
        Error::corrupt(format!(
            "{stored} in {} cannot be decompressed: {e}; the restore is incomplete and \
             will not start",
            storage.location()
        ))
    })?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e.into_error()))?;
    if stats.sha256 != entry.sha256 || stats.size != entry.size {
        return Err(Error::corrupt(format!(
            "{stored} in {} is corrupt: it restores to {} bytes with sha256 {}, the manifest \
             says {} bytes with {}; the restore is incomplete and will not start",
            storage.location(),
            stats.size,
            &stats.sha256[..stats.sha256.len().min(12)],
            entry.size,
            &entry.sha256[..entry.sha256.len().min(12)]
        )));
    }
    file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
        .io_context(|| format!("chmod {}", tmp.display()))?;
    file.set_modified(mtime)
        .io_context(|| format!("setting the mtime of {}", tmp.display()))?;
    if entry.path == PG_CONTROL {
        file.sync_all()
            .io_context(|| format!("fsync {}", tmp.display()))?;
    }
    owner.apply(tmp)?;
    Ok(pending)
}

/// Quote a value for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The `restore_command` for this repository.
pub fn restore_command(wal_get: &Path, settings: &Settings, standby: bool) -> Result<String> {
    let mut args = vec![wal_get.display().to_string()];
    if let Some(cfg) = &settings.config_file {
        args.push("--config".into());
        args.push(absolute(cfg)?.display().to_string());
    }
    args.push("--repo".into());
    args.push(settings.repo_url()?.to_string());
    args.push("--server".into());
    args.push(settings.server_name()?.to_string());
    if let Some(id) = &settings.ssh.identity {
        args.push("--ssh-identity".into());
        args.push(absolute(id)?.display().to_string());
    }
    if let Some(kh) = &settings.ssh.known_hosts {
        args.push("--ssh-known-hosts".into());
        args.push(absolute(kh)?.display().to_string());
    }
    if standby {
        args.push("--standby".into());
    }
    let mut cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    cmd.push("%f".into());
    cmd.push("%p".into());
    Ok(cmd.join(" "))
}

/// Comment out older recovery settings in postgresql.auto.conf and append ours.
fn write_recovery_settings(
    dest: &Path,
    settings: &Settings,
    opts: &RestoreOptions,
    m: &Manifest,
    wal_get: &Path,
    owner: &Owner,
) -> Result<()> {
    let path = dest.join("postgresql.auto.conf");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut text = String::new();
    let disable_archiving = opts.archive_mode == ArchiveMode::Off;
    for line in old.lines() {
        let key = line.trim_start();
        if key.starts_with("recovery_target")
            || key.starts_with("restore_command")
            || (disable_archiving
                && (key.starts_with("archive_command") || key.starts_with("archive_library")))
        {
            text.push_str("# disabled by pgcellar restore: ");
        }
        text.push_str(line);
        text.push('\n');
    }
    let mut lines = vec![format!(
        "# added by pgcellar restore of backup {} at {}",
        m.id,
        crate::repo::now_rfc3339()
    )];
    lines.push(format!(
        "restore_command = {}",
        conf_quote(&restore_command(wal_get, settings, opts.standby)?)
    ));
    match &opts.target {
        Some(Target::Time(t, _)) => lines.push(format!("recovery_target_time = {}", conf_quote(t))),
        Some(Target::Xid(x)) => lines.push(format!("recovery_target_xid = '{x}'")),
        Some(Target::Lsn(l, _)) => lines.push(format!("recovery_target_lsn = '{l}'")),
        Some(Target::Name(n)) => lines.push(format!("recovery_target_name = {}", conf_quote(n))),
        Some(Target::Immediate) => lines.push("recovery_target = 'immediate'".into()),
        None => {}
    }
    if opts.exclusive {
        lines.push("recovery_target_inclusive = off".into());
    }
    match opts.target_timeline {
        Some(TimelineTarget::Latest) => lines.push("recovery_target_timeline = 'latest'".into()),
        Some(TimelineTarget::Current) => lines.push("recovery_target_timeline = 'current'".into()),
        Some(TimelineTarget::Id(n)) => lines.push(format!("recovery_target_timeline = '{n}'")),
        None => {}
    }
    if let Some(a) = opts.target_action {
        lines.push(format!("recovery_target_action = '{}'", a.as_str()));
    }
    if disable_archiving {
        // archive_mode stays as it was: segments keep being marked .ready, so a real
        // failover only has to set archive_command and reload (archive_mode would need
        // a restart, and segments written while it was off would never be archived).
        lines.push(format!(
            "archive_command = {}",
            conf_quote(DISABLED_ARCHIVE_COMMAND)
        ));
        if m.pg_version_num >= 150000 {
            // From 15 an archive_library takes precedence over archive_command.
            lines.push("archive_library = ''".into());
        }
    }
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    write_small(&path, text.as_bytes(), owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let Target::Time(_, t) = Target::time("2026-11-03 13:00:00+00").unwrap() else {
            panic!()
        };
        assert_eq!(t.to_rfc3339(), "2026-11-03T13:00:00+00:00");
        Target::time("2026-11-03T13:00:00.5Z").unwrap();
        Target::time("2026-11-03 13:00:00.123456+02:00").unwrap();
        assert!(Target::time("2026-11-03 13:00:00").is_err());
        assert!(Target::time("yesterday").is_err());
        assert_eq!(Target::xid("1234").unwrap(), Target::Xid(1234));
        assert!(Target::xid("12a").is_err());
        assert_eq!(
            Target::lsn("0/3000028").unwrap(),
            Target::Lsn("0/3000028".into(), 0x3000028)
        );
        assert!(Target::lsn("3000028").is_err());
        assert!(Target::name("a\nb").is_err());
        assert_eq!("latest".parse(), Ok(TimelineTarget::Latest));
        assert_eq!("3".parse(), Ok(TimelineTarget::Id(3)));
        assert!("0".parse::<TimelineTarget>().is_err());
        assert!("stop".parse::<TargetAction>().is_err());
        assert_eq!("preserve".parse(), Ok(ArchiveMode::Preserve));
        assert_eq!("off".parse(), Ok(ArchiveMode::Off));
        assert_eq!(ArchiveMode::default(), ArchiveMode::Off);
        assert!("on".parse::<ArchiveMode>().is_err());
        assert_eq!(
            parse_tablespace_mapping("ts1=/srv/ts").unwrap(),
            ("ts1".to_string(), PathBuf::from("/srv/ts"))
        );
        assert!(parse_tablespace_mapping("ts1=rel").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/wal-get"), "/usr/bin/wal-get");
        assert_eq!(shell_quote("/my dir/it's"), "'/my dir/it'\\''s'");
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
    }

    #[test]
    fn mapper_keeps_paths_inside() {
        let m = PathMapper {
            dest: "/d".into(),
            tablespaces: [(5u32, PathBuf::from("/t"))].into(),
        };
        assert_eq!(
            m.local("data/base/1/2").unwrap(),
            PathBuf::from("/d/base/1/2")
        );
        assert_eq!(m.local("data").unwrap(), PathBuf::from("/d"));
        assert_eq!(
            m.local("tablespaces/5/PG_15_x/1").unwrap(),
            PathBuf::from("/t/PG_15_x/1")
        );
        assert!(m.local("tablespaces/6/x").is_err());
        assert!(m.local("data/../etc").is_err());
    }
}
