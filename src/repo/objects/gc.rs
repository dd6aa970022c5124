//! Mark and sweep: removing the objects no complete backup references.
//!
//! Run under the server's writer lock, after manifests were removed. Safety rests on
//! three rules (`docs/repository-format.md`, "Deletion"): every manifest is read
//! before anything is removed, and one that cannot be read stops the sweep; an
//! object younger than the oldest backup directory without a manifest (a writer that
//! may still name it) is kept; and removals are of unreferenced objects only, so a
//! sweep killed at any point has removed nothing anyone needs.

use super::super::layout;
use super::super::manifest::{self, BackupId};
use crate::error::Result;
use crate::storage::{Storage, TEMP_PREFIX};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Objects written this long before a running writer's id (its start time, from
/// the database host's clock) are still kept: clocks of two hosts disagree.
pub const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// What one sweep did (or, on a dry-run layer, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sweep {
    /// Objects some complete backup references.
    pub referenced: u64,
    /// Unreferenced objects removed.
    pub removed: u64,
    /// Their stored bytes.
    pub removed_size: u64,
    /// Unreferenced objects kept because a writer may still name them.
    pub kept_young: u64,
}

/// Remove the unreferenced objects of `server`. Backups in `ignore` count as gone
/// (a dry run has not removed them), as do their directories.
pub fn sweep(storage: &dyn Storage, server: &str, ignore: &[BackupId]) -> Result<Sweep> {
    // Mark. Any manifest that cannot be read stops everything: its objects are unknown.
    let mut referenced: HashSet<String> = HashSet::new();
    let mut oldest_writer: Option<DateTime<Utc>> = None;
    for (id, complete) in manifest::list_dirs(storage, server)? {
        if ignore.contains(&id) {
            continue;
        }
        if !complete {
            let t = id.time();
            oldest_writer = Some(oldest_writer.map_or(t, |o| o.min(t)));
            continue;
        }
        let m = manifest::load(storage, server, &id).map_err(|e| {
            e.context(format!(
                "no object was removed: the sweep needs every manifest of server {server}"
            ))
        })?;
        for f in &m.files {
            referenced.extend(f.all_objects().map(|o| o.name()));
        }
    }
    let horizon: Option<SystemTime> = oldest_writer.map(|t| {
        SystemTime::from(t)
            .checked_sub(CLOCK_SLACK)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let mut report = Sweep {
        referenced: referenced.len() as u64,
        ..Sweep::default()
    };
    crate::util::fault::sweep_abort_after(0);
    let root = layout::objects_dir(server);
    let mut dirs = vec![root.clone()];
    for e in storage.list(&root)? {
        if e.is_dir && e.name.len() == 2 && e.name.bytes().all(|b| b.is_ascii_hexdigit()) {
            dirs.push(crate::storage::join(&root, &e.name));
        }
    }
    for dir in dirs {
        let top = dir == root;
        for e in storage.list(&dir)? {
            if e.is_dir {
                continue;
            }
            let path = crate::storage::join(&dir, &e.name);
            let temp = e.name.starts_with(TEMP_PREFIX);
            let ours = temp || (!top && is_object_name(&e.name));
            if !ours {
                continue; // not ours: leave it alone
            }
            if !temp {
                let name = format!("{}/{}", dir.rsplit('/').next().unwrap_or(""), e.name);
                if referenced.contains(&name) {
                    continue;
                }
            }
            // A writer still running may name this object (or be writing this
            // temporary file): keep what is not older than it.
            if let Some(h) = horizon {
                let young = match storage.stat(&path)? {
                    Some(info) => info.mtime >= h,
                    None => continue, // gone meanwhile
                };
                if young {
                    report.kept_young += 1;
                    continue;
                }
            }
            storage.remove_file(&path)?;
            report.removed += 1;
            report.removed_size += e.size;
            crate::util::fault::sweep_abort_after(report.removed);
        }
    }
    Ok(report)
}

/// `<64 hex>.<ext>`: the only names a sweep may remove.
fn is_object_name(name: &str) -> bool {
    name.split_once('.').is_some_and(|(id, ext)| {
        crate::codec::is_sha256_hex(id) && crate::codec::Compression::from_extension(ext).is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::repo::json::to_json;
    use crate::repo::manifest::{sample, Manifest, ObjectRef};
    use crate::repo::objects::ObjectStore;
    use crate::storage::{LocalStorage, Overwrite};
    use std::path::{Path, PathBuf};

    fn object(store: &ObjectStore<'_>, content: &str) -> ObjectRef {
        store
            .put(content.as_bytes(), Codec::default())
            .unwrap()
            .object
    }

    /// Complete backup `id` referencing `objects` (the first as its one file's base,
    /// the rest as deltas and page hashes: the sweep reads every reference).
    fn complete(s: &LocalStorage, id: &str, objects: &[&ObjectRef]) -> Manifest {
        let mut m = sample(id);
        let f = &mut m.files[0];
        f.objects = objects.iter().take(2).map(|o| (*o).clone()).collect();
        f.pages = objects.get(2).map(|o| (*o).clone());
        if let [base] = f.objects.as_slice() {
            // A lone whole-file object is named by the file's hash.
            f.sha256 = base.id.clone();
        }
        s.create_dir_all(&layout::backup_dir("main", id)).unwrap();
        s.write_all(
            &layout::backup_manifest("main", id),
            &to_json(&m).unwrap(),
            Overwrite::Never,
        )
        .unwrap();
        m
    }

    fn local(root: &Path, o: &ObjectRef) -> PathBuf {
        root.join(o.path("main"))
    }

    fn age(path: &Path, by: Duration) {
        let f = std::fs::File::open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn keeps_what_a_manifest_or_a_running_writer_may_name_and_what_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let s = LocalStorage::new(root.clone());
        let store = ObjectStore::new(&s, "main");
        let [base, delta, pages, shared, old, young, ignored_only] = [
            "base", "delta", "pages", "shared", "old", "young", "ignored",
        ]
        .map(|c| object(&store, c));
        complete(&s, "20261101T000000Z", &[&base, &delta, &pages]);
        complete(&s, "20261102T000000Z", &[&shared]);
        complete(&s, "20261103T000000Z", &[&ignored_only]);
        // Unreferenced: `old` was written well before the running writer started
        // (minus the clock slack), `young` after that bound.
        let writer = BackupId::from_time(Utc::now() - chrono::Duration::minutes(1));
        s.create_dir_all(&layout::backup_dir("main", writer.as_str()))
            .unwrap();
        age(&local(&root, &old), Duration::from_secs(3600));
        age(&local(&root, &young), Duration::from_secs(60 + 200));
        age(&local(&root, &ignored_only), Duration::from_secs(3600));
        // Temporary files of writers: one long dead, one that may be in progress.
        let objects = root.join("main/objects");
        std::fs::write(objects.join(format!("{TEMP_PREFIX}dead")), b"x").unwrap();
        age(
            &objects.join(format!("{TEMP_PREFIX}dead")),
            Duration::from_secs(3600),
        );
        std::fs::write(objects.join(format!("{TEMP_PREFIX}live")), b"x").unwrap();
        // Names that are not objects, or not where objects live: never touched.
        let hex = "b".repeat(64);
        let foreign = [
            objects.join("README"),
            objects.join(format!("{hex}.zst")),
            objects.join(&hex[..2]).join("notes.txt"),
            objects.join(&hex[..2]).join(format!("{hex}.bak")),
            objects.join("zz").join(format!("{hex}.zst")),
            objects.join("bbb").join(format!("{hex}.zst")),
        ];
        for f in &foreign {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"mine").unwrap();
            age(f, Duration::from_secs(3600));
        }

        // The third backup counts as gone (a dry run has not removed it).
        let ignore = [BackupId::parse("20261103T000000Z").unwrap()];
        let r = sweep(&s, "main", &ignore).unwrap();
        assert_eq!(r.referenced, 4, "{r:?}");
        assert_eq!(r.removed, 3, "{r:?}"); // old, ignored_only, the dead temp file
        assert_eq!(r.kept_young, 2, "{r:?}"); // young, the live temp file
        for o in [&base, &delta, &pages, &shared, &young] {
            assert!(local(&root, o).exists(), "{o:?}");
        }
        assert!(!local(&root, &old).exists());
        assert!(!local(&root, &ignored_only).exists());
        assert!(!objects.join(format!("{TEMP_PREFIX}dead")).exists());
        assert!(objects.join(format!("{TEMP_PREFIX}live")).exists());
        for f in &foreign {
            assert!(f.exists(), "{}", f.display());
        }

        // Once the writer is gone (aborted directory removed), young objects go too.
        s.remove_dir_all(&layout::backup_dir("main", writer.as_str()))
            .unwrap();
        let r = sweep(&s, "main", &[]).unwrap();
        assert_eq!((r.removed, r.kept_young), (2, 0), "{r:?}");
        assert!(!local(&root, &young).exists());
        for o in [&base, &delta, &pages, &shared] {
            assert!(local(&root, o).exists(), "{o:?}");
        }
        // Nothing left to do: a second sweep removes nothing.
        assert_eq!(sweep(&s, "main", &[]).unwrap().removed, 0);
    }

    #[test]
    fn an_unreadable_manifest_stops_the_sweep_before_any_removal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let s = LocalStorage::new(root.clone());
        let store = ObjectStore::new(&s, "main");
        let kept = object(&store, "kept");
        let orphan = object(&store, "orphan");
        complete(&s, "20261101T000000Z", &[&kept]);
        let bad = "20261102T000000Z";
        s.create_dir_all(&layout::backup_dir("main", bad)).unwrap();
        s.write_all(
            &layout::backup_manifest("main", bad),
            b"{\"format\": 2, tru",
            Overwrite::Never,
        )
        .unwrap();
        let err = sweep(&s, "main", &[]).unwrap_err();
        assert!(err.to_string().contains("no object was removed"), "{err}");
        assert!(err.to_string().contains(bad), "{err}");
        assert!(local(&root, &orphan).exists() && local(&root, &kept).exists());
        // A manifest of another format is no better: its references are unknown.
        let mut other = sample(bad);
        other.format = 3;
        std::fs::write(
            root.join(layout::backup_manifest("main", bad)),
            to_json(&other).unwrap(),
        )
        .unwrap();
        assert!(sweep(&s, "main", &[]).is_err());
        assert!(local(&root, &orphan).exists());
        // Without its manifest the directory is a writer that may still name the
        // orphan (just written); once the directory is gone the sweep goes ahead.
        std::fs::remove_file(root.join(layout::backup_manifest("main", bad))).unwrap();
        assert_eq!(sweep(&s, "main", &[]).unwrap().kept_young, 1);
        assert!(local(&root, &orphan).exists());
        s.remove_dir_all(&layout::backup_dir("main", bad)).unwrap();
        assert_eq!(sweep(&s, "main", &[]).unwrap().removed, 1);
        assert!(!local(&root, &orphan).exists() && local(&root, &kept).exists());
    }

    #[test]
    fn only_object_names_are_swept() {
        let id = "a".repeat(64);
        assert!(is_object_name(&format!("{id}.zst")));
        assert!(is_object_name(&format!("{id}.raw")));
        assert!(!is_object_name(&format!("{id}.txt")));
        assert!(!is_object_name(&format!("{}.zst", "A".repeat(64))));
        assert!(!is_object_name("README"));
    }
}
