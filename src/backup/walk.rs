//! The walk of the data directory and its tablespaces: which files and directories a
//! backup holds, after PostgreSQL's documented exclusions.

use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::{DirEntry, Tablespace, DATA_PREFIX, TABLESPACE_PREFIX};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// A file to store.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) src: PathBuf,
    pub(super) path: String,
    pub(super) size: u64,
}

/// What the walk found.
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub(super) dirs: Vec<DirEntry>,
    pub(super) files: Vec<Job>,
    pub(super) tablespaces: Vec<Tablespace>,
}

pub(super) fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Walk the data directory and every tablespace, applying PostgreSQL's exclusions.
pub(super) fn walk_cluster(
    pgdata: &Path,
    major: u32,
    names: &HashMap<u32, String>,
) -> Result<Walk> {
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
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
