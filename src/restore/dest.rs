//! The destination: refusing a running postmaster or a non-empty directory, where each
//! tablespace goes, manifest paths mapped to local ones, and `--delta`'s pruning.

use super::owner::Owner;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::manifest::{self, Manifest, DATA_PREFIX, TABLESPACE_PREFIX};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Refuse a running postmaster and (without `--delta`) a non-empty directory; create
/// a missing one (0700).
pub(super) fn prepare_dest(dest: &Path, delta: bool) -> Result<()> {
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
pub(super) fn tablespace_locations(
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
pub(super) fn check_tablespace_target(m: &Manifest, loc: &Path, delta: bool) -> Result<()> {
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
pub(super) struct PathMapper {
    pub(super) dest: PathBuf,
    pub(super) tablespaces: std::collections::BTreeMap<u32, PathBuf>,
}

impl PathMapper {
    pub(super) fn local(&self, path: &str) -> Result<PathBuf> {
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

/// Remove a file; whether there was one.
pub(super) fn remove_if_exists(p: &Path) -> Result<bool> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}

pub(super) fn write_small(path: &Path, data: &[u8], owner: &Owner) -> Result<()> {
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
pub(super) fn prune(m: &Manifest, mapper: &PathMapper) -> Result<u64> {
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
#[cfg(test)]
mod tests {
    use super::*;

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
