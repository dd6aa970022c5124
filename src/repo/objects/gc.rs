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
