//! Backups in the repository: ids, the `backup.json` manifest, and listing.
//!
//! A backup directory is `<server>/backups/<id>/`. Its manifest `backup.json` is
//! written last and atomically, so a directory without one is a running or aborted
//! backup and is invisible here. The manifest is self-sufficient: each file names
//! the content-addressed objects that rebuild it (see `docs/repository-format.md`).
//!
//! Why this file is long: the manifest's types, their validation (what a reader must
//! not trust) and listing are one contract, tested here together.

use super::layout::{self, MANIFEST_FILE};
use crate::codec::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Storage, TEMP_PREFIX};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Manifest format this build reads and writes; readers refuse others.
pub const MANIFEST_FORMAT: u32 = 2;
/// Manifest path prefix of files from the data directory.
pub const DATA_PREFIX: &str = "data";
/// Manifest path prefix of tablespace files (`tablespaces/<oid>/...`).
pub const TABLESPACE_PREFIX: &str = "tablespaces";

/// A backup id: the UTC start time as `YYYYMMDDTHHMMSSZ`, so ids sort by time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

const ID_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    /// Validate an id: exactly 16 characters `YYYYMMDDTHHMMSSZ` naming a real time.
    pub fn parse(s: &str) -> Result<BackupId> {
        let shape_ok = s.len() == 16
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        if shape_ok && NaiveDateTime::parse_from_str(s, ID_FORMAT).is_ok() {
            Ok(BackupId(s.to_string()))
        } else {
            Err(Error::invalid(format!(
                "{:?} is not a backup id (expected YYYYMMDDTHHMMSSZ, e.g. 20261123T184500Z, \
                 or 'latest'/'oldest')",
                crate::names::truncate_for_display(s)
            )))
        }
    }

    /// The id of a backup starting at `t`.
    pub fn from_time(t: DateTime<Utc>) -> BackupId {
        BackupId(t.format(ID_FORMAT).to_string())
    }

    /// The time the id encodes.
    pub fn time(&self) -> DateTime<Utc> {
        // parse() validated the text, so this cannot fail; fall back to the epoch anyway.
        NaiveDateTime::parse_from_str(&self.0, ID_FORMAT)
            .map(|n| Utc.from_utc_datetime(&n))
            .unwrap_or_default()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<BackupId> {
        BackupId::parse(&s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

/// State of a backup as recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    /// Every file and every WAL segment it needs are in the repository.
    Done,
}

/// A tablespace as seen at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Its OID (the name of its `pg_tblspc` symlink).
    pub oid: u32,
    /// Its name (`pg_tablespace.spcname`), when known.
    pub name: Option<String>,
    /// Its location on the database host.
    pub location: String,
}

/// A directory to recreate on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Manifest path (`data/...` or `tablespaces/<oid>/...`).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
}

/// Most deltas a file's object list may hold after its base; past it (or past
/// [`MAX_DELTA_SHARE`]) a backup stores a fresh whole-file object, so a restore reads
/// at most the base and this many deltas.
pub const MAX_DELTAS: usize = 8;
/// Most stored bytes a file's deltas may add up to, as a share of its base's.
pub const MAX_DELTA_SHARE: f64 = 0.5;

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Manifest path (`data/...` or `tablespaces/<oid>/...`).
    pub path: String,
    /// Size of the file's bytes as backed up.
    pub size: u64,
    /// Modification time when read (Unix seconds).
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 of the whole file as it restores, lower-case hex.
    pub sha256: String,
    /// The objects that rebuild it: a whole-file object, then page deltas in order.
    pub objects: Vec<ObjectRef>,
    /// The page-hash object of this version (page-level files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<ObjectRef>,
    /// Stored bytes of every object it references (`objects` and `pages`).
    pub stored_size: u64,
    /// Stored bytes of the objects this backup created for it (0: all reused).
    pub added_size: u64,
}

impl FileEntry {
    /// Every object this entry references.
    pub fn all_objects(&self) -> impl Iterator<Item = &ObjectRef> {
        self.objects.iter().chain(self.pages.iter())
    }
}

/// A reference to one content-addressed object in `<server>/objects/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// SHA-256 of the object's decompressed content, lower-case hex.
    pub id: String,
    /// How the object is stored (its file extension).
    pub compression: Compression,
    /// Stored size in bytes.
    pub stored_size: u64,
}

impl ObjectRef {
    /// The object's name below `<server>/objects/`.
    pub fn name(&self) -> String {
        layout::object_name(&self.id, self.compression.extension())
    }

    /// The object's repository path.
    pub fn path(&self, server: &str) -> String {
        layout::object_file(server, &self.id, self.compression.extension())
    }
}

/// Totals over a backup's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Number of files.
    pub files: u64,
    /// Sum of original sizes.
    pub size: u64,
    /// Sum of stored sizes.
    pub stored_size: u64,
    /// Files whose objects all existed already (nothing stored for them).
    pub reused_files: u64,
    /// Stored bytes of those files (not written again).
    pub reused_stored_size: u64,
    /// Files for which this backup stored at least one object.
    pub copied_files: u64,
    /// Stored bytes of the objects this backup created (what it adds to the repository).
    pub copied_stored_size: u64,
}

/// Contents of `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format number ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// Backup id.
    pub id: BackupId,
    /// Free-text label (`--label`).
    pub label: String,
    /// Status.
    pub status: BackupStatus,
    /// The backup change detection compared with (restoring never reads it).
    pub parent: Option<BackupId>,
    /// Server name.
    pub server: String,
    /// `server_version_num`.
    pub pg_version_num: u32,
    /// System identifier, as a decimal string.
    pub system_identifier: String,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// Timeline at backup start.
    pub timeline: u32,
    /// LSN returned by `pg_backup_start`.
    pub start_lsn: String,
    /// LSN returned by `pg_backup_stop`.
    pub stop_lsn: String,
    /// WAL file containing the start LSN.
    pub start_wal: String,
    /// WAL file containing the stop LSN.
    pub stop_wal: String,
    /// Start time (RFC 3339, UTC).
    pub start_time: DateTime<Utc>,
    /// Stop time (RFC 3339, UTC), taken after `pg_backup_stop`.
    pub stop_time: DateTime<Utc>,
    /// `backup_label` contents from `pg_backup_stop`.
    pub backup_label: String,
    /// `tablespace_map` contents from `pg_backup_stop` (empty without tablespaces).
    pub tablespace_map: String,
    /// Tablespaces.
    pub tablespaces: Vec<Tablespace>,
    /// Compression of the objects this backup stored (reused ones keep theirs).
    pub compression: Compression,
    /// Compression level.
    pub compression_level: i32,
    /// Totals.
    pub totals: Totals,
    /// Directories (including those whose contents are never backed up).
    pub directories: Vec<DirEntry>,
    /// Files.
    pub files: Vec<FileEntry>,
    /// Program that wrote the manifest.
    pub created_by: String,
}

impl Manifest {
    /// Recompute [`Manifest::totals`] from the file list.
    pub fn compute_totals(&mut self) {
        let mut t = Totals::default();
        for f in &self.files {
            t.files += 1;
            t.size += f.size;
            t.stored_size += f.stored_size;
            if f.added_size == 0 {
                t.reused_files += 1;
                t.reused_stored_size += f.stored_size;
            } else {
                t.copied_files += 1;
                t.copied_stored_size += f.added_size;
            }
        }
        self.totals = t;
    }

    /// Check what a reader must not trust blindly: format, id, and every path.
    pub fn validate(&self, server: &str, dir_id: &BackupId) -> Result<()> {
        let whose = format!("manifest of backup {dir_id} of server {server}");
        if self.format != MANIFEST_FORMAT {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "{whose} has format {}, this pgcellar reads only {MANIFEST_FORMAT}",
                    self.format
                ),
            ));
        }
        if &self.id != dir_id || self.server != server {
            return Err(Error::corrupt(format!(
                "{whose} names backup {} of server {:?}",
                self.id, self.server
            )));
        }
        // Fields that readers compute with: refuse damage here, once, naming the
        // backup, instead of an unexplained error (or worse) in list/verify/restore.
        let bad = |field: &str, why: String| {
            Err(Error::corrupt(format!(
                "{whose} ({MANIFEST_FILE}): field {field:?} {why}"
            )))
        };
        for (field, wal) in [("start_wal", &self.start_wal), ("stop_wal", &self.stop_wal)] {
            match crate::wal::WalName::parse(wal) {
                Ok(n) if n.kind() == crate::wal::WalKind::Segment => {}
                _ => return bad(field, format!("is {wal:?}, not a WAL segment name")),
            }
        }
        for (field, lsn) in [("start_lsn", &self.start_lsn), ("stop_lsn", &self.stop_lsn)] {
            if crate::wal::parse_lsn(lsn).is_err() {
                return bad(field, format!("is {lsn:?}, not an LSN"));
            }
        }
        if let Err(why) = crate::wal::check_segment_size(self.wal_segment_size) {
            return bad("wal_segment_size", why);
        }
        if self.timeline == 0 {
            return bad("timeline", "is 0; timelines start at 1".into());
        }
        if self.system_identifier.parse::<u64>().is_err() {
            return bad(
                "system_identifier",
                format!("is {:?}, not a decimal number", self.system_identifier),
            );
        }
        for f in &self.files {
            check_manifest_path(&f.path).map_err(|e| e.context(&whose))?;
            if !crate::codec::is_sha256_hex(&f.sha256) {
                return Err(Error::corrupt(format!(
                    "{whose}: {} has no valid sha256",
                    f.path
                )));
            }
            // Object ids become repository paths: only 64 lower-case hex may.
            if f.objects.is_empty() || f.objects.len() > MAX_DELTAS + 1 {
                return Err(Error::corrupt(format!(
                    "{whose}: {} lists {} objects (a base and at most {MAX_DELTAS} deltas)",
                    f.path,
                    f.objects.len()
                )));
            }
            if let [base] = f.objects.as_slice() {
                if base.id != f.sha256 {
                    return Err(Error::corrupt(format!(
                        "{whose}: {} is one whole-file object not named by its sha256",
                        f.path
                    )));
                }
            }
            if let Some(o) = f
                .all_objects()
                .find(|o| !crate::codec::is_sha256_hex(&o.id))
            {
                return Err(Error::corrupt(format!(
                    "{whose}: {} names object {:?}, which is not a SHA-256",
                    f.path,
                    crate::names::truncate_for_display(&o.id)
                )));
            }
        }
        for d in &self.directories {
            check_manifest_path(&d.path).map_err(|e| e.context(&whose))?;
        }
        Ok(())
    }
}

/// Check a manifest path: relative, clean, under `data/` or `tablespaces/<oid>/`.
pub fn check_manifest_path(path: &str) -> Result<()> {
    crate::storage::check_path(path)?;
    let mut parts = path.split('/');
    let ok = match parts.next() {
        Some(DATA_PREFIX) => true,
        Some(TABLESPACE_PREFIX) => parts.next().is_some_and(|oid| oid.parse::<u32>().is_ok()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::corrupt(format!(
            "manifest path {path:?} is not under {DATA_PREFIX}/ or {TABLESPACE_PREFIX}/<oid>/"
        )))
    }
}

/// Ids of the complete backups of `server` (directories with a manifest), oldest first.
pub fn list_ids(storage: &dyn Storage, server: &str) -> Result<Vec<BackupId>> {
    Ok(list_dirs(storage, server)?
        .into_iter()
        .filter_map(|(id, complete)| complete.then_some(id))
        .collect())
}

/// Every backup directory of `server` with whether it is complete (holds its
/// manifest), oldest first; names that are not backup ids are not ours.
pub fn list_dirs(storage: &dyn Storage, server: &str) -> Result<Vec<(BackupId, bool)>> {
    let mut dirs = Vec::new();
    for e in storage.list(&layout::backups_dir(server))? {
        if !e.is_dir || e.name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let Ok(id) = BackupId::parse(&e.name) else {
            continue; // not ours
        };
        let complete = storage
            .stat(&layout::backup_manifest(server, id.as_str()))?
            .is_some();
        dirs.push((id, complete));
    }
    dirs.sort();
    Ok(dirs)
}

/// Ids of the aborted backups of `server`: directories named like an id but without
/// a manifest (what `expire`/`cron` remove once they are old enough), oldest first.
pub fn list_aborted(storage: &dyn Storage, server: &str) -> Result<Vec<BackupId>> {
    Ok(list_dirs(storage, server)?
        .into_iter()
        .filter_map(|(id, complete)| (!complete).then_some(id))
        .collect())
}

/// Read and validate the manifest of backup `id`.
pub fn load(storage: &dyn Storage, server: &str, id: &BackupId) -> Result<Manifest> {
    let path = layout::backup_manifest(server, id.as_str());
    let bytes = match storage.read_all(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "backup {id} of server {server} does not exist in {} (or was aborted: no {MANIFEST_FILE})",
                storage.location()
            )))
        }
        Err(e) => return Err(e),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::corrupt(format!(
            "{path} in {} is not valid: {e}",
            storage.location()
        ))
    })?;
    m.validate(server, id)?;
    Ok(m)
}

/// Every complete backup's manifest, oldest first.
pub fn load_all(storage: &dyn Storage, server: &str) -> Result<Vec<Manifest>> {
    list_ids(storage, server)?
        .iter()
        .map(|id| load(storage, server, id))
        .collect()
}

/// Resolve `latest`, `oldest` or an id to an existing, complete backup.
pub fn resolve(storage: &dyn Storage, server: &str, spec: &str) -> Result<BackupId> {
    let pick = |first: bool| -> Result<BackupId> {
        let ids = list_ids(storage, server)?;
        let id = if first { ids.first() } else { ids.last() };
        id.cloned().ok_or_else(|| {
            Error::not_found(format!(
                "server {server} has no complete backup in {}",
                storage.location()
            ))
        })
    };
    match spec {
        "latest" => pick(false),
        "oldest" => pick(true),
        other => {
            let id = BackupId::parse(other)?;
            if storage
                .stat(&layout::backup_manifest(server, id.as_str()))?
                .is_none()
            {
                return Err(Error::not_found(format!(
                    "backup {id} of server {server} does not exist in {} (or was aborted: no {MANIFEST_FILE})",
                    storage.location()
                )));
            }
            Ok(id)
        }
    }
}

/// A small valid manifest of server `main` for tests (one file, one object).
#[cfg(test)]
pub(crate) fn sample(id: &str) -> Manifest {
    let mut m = Manifest {
        format: MANIFEST_FORMAT,
        id: BackupId::parse(id).unwrap(),
        label: "nightly".into(),
        status: BackupStatus::Done,
        parent: None,
        server: "main".into(),
        pg_version_num: 150010,
        system_identifier: "7300000000000000042".into(),
        wal_segment_size: 1 << 20,
        timeline: 1,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000100".into(),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        start_time: Utc::now(),
        stop_time: Utc::now(),
        backup_label: "START WAL LOCATION: 0/2000028\n".into(),
        tablespace_map: String::new(),
        tablespaces: vec![],
        compression: Compression::Zstd,
        compression_level: 3,
        totals: Totals::default(),
        directories: vec![DirEntry {
            path: "data/pg_wal".into(),
            mode: 0o700,
        }],
        files: vec![FileEntry {
            path: "data/PG_VERSION".into(),
            size: 3,
            mtime: 1_700_000_000,
            mode: 0o600,
            sha256: "a".repeat(64),
            objects: vec![ObjectRef {
                id: "a".repeat(64),
                compression: Compression::Zstd,
                stored_size: 12,
            }],
            pages: None,
            stored_size: 12,
            added_size: 12,
        }],
        created_by: "test".into(),
    };
    m.compute_totals();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStorage, Overwrite};

    #[test]
    fn ids_are_strict() {
        let id = BackupId::parse("20261123T184500Z").unwrap();
        assert_eq!(id.time().to_rfc3339(), "2026-11-23T18:45:00+00:00");
        assert_eq!(BackupId::from_time(id.time()), id);
        for bad in [
            "",
            "latest",
            "20261123T184500",
            "20261123t184500Z",
            "20261323T184500Z",
            "20261123T250000Z",
            "2026112T3184500Z",
            "../20261123T1845",
            "20261123T184500Z/",
            "２0261123T184500Z",
        ] {
            assert!(BackupId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<BackupId>("\"x/../y\"").is_err());
    }

    #[test]
    fn manifest_paths_are_confined() {
        for ok in ["data/base/1/1234", "tablespaces/16384/PG_15_1/5/1"] {
            check_manifest_path(ok).unwrap();
        }
        for bad in [
            "base/1",
            "data/../x",
            "/data/x",
            "tablespaces/x/y",
            "tablespaces",
            "data//x",
        ] {
            assert!(check_manifest_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listing_ignores_aborted_and_foreign_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        for id in ["20261101T000000Z", "20261102T000000Z", "20261103T000000Z"] {
            s.create_dir_all(&layout::backup_dir("main", id)).unwrap();
        }
        s.create_dir_all("main/backups/not-an-id").unwrap();
        for id in ["20261101T000000Z", "20261102T000000Z"] {
            let json = super::super::json::to_json(&sample(id)).unwrap();
            s.write_all(
                &layout::backup_manifest("main", id),
                &json,
                Overwrite::Never,
            )
            .unwrap();
        }
        let ids: Vec<String> = list_ids(&s, "main")
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        // 20261103 has no manifest: aborted, invisible.
        assert_eq!(ids, ["20261101T000000Z", "20261102T000000Z"]);
        let aborted: Vec<String> = list_aborted(&s, "main")
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(aborted, ["20261103T000000Z"]);
        assert_eq!(
            resolve(&s, "main", "latest").unwrap().as_str(),
            "20261102T000000Z"
        );
        assert_eq!(
            resolve(&s, "main", "oldest").unwrap().as_str(),
            "20261101T000000Z"
        );
        let err = resolve(&s, "main", "20261103T000000Z").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(resolve(&s, "main", "../x").is_err());
        let m = load(&s, "main", &BackupId::parse("20261102T000000Z").unwrap()).unwrap();
        assert_eq!(m, sample("20261102T000000Z").clone_with_times(&m));
        assert_eq!(m.totals.files, 1);
        assert_eq!(
            m.files[0].objects[0].path("main"),
            format!("main/objects/aa/{}.zst", "a".repeat(64))
        );
        // A manifest copied into the wrong directory is refused.
        let wrong = super::super::json::to_json(&sample("20261101T000000Z")).unwrap();
        s.create_dir_all(&layout::backup_dir("main", "20261104T000000Z"))
            .unwrap();
        s.write_all(
            &layout::backup_manifest("main", "20261104T000000Z"),
            &wrong,
            Overwrite::Never,
        )
        .unwrap();
        assert!(load(&s, "main", &BackupId::parse("20261104T000000Z").unwrap()).is_err());
    }

    /// The examples in the format spec must be what this code reads.
    #[test]
    fn documented_examples_parse() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/repository-format.md"),
        )
        .unwrap();
        let blocks: Vec<&str> = doc
            .split("```json\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        let manifest = blocks
            .iter()
            .find(|b| b.contains("\"files\""))
            .expect("backup.json example");
        let m: Manifest = serde_json::from_str(manifest).unwrap();
        m.validate("main", &m.id).unwrap();
        let lock = blocks
            .iter()
            .find(|b| b.contains("\"token\""))
            .expect("lock example");
        serde_json::from_str::<crate::repo::lock::LockInfo>(lock).unwrap();
    }

    impl Manifest {
        fn clone_with_times(mut self, other: &Manifest) -> Manifest {
            self.start_time = other.start_time;
            self.stop_time = other.stop_time;
            self
        }
    }
}
