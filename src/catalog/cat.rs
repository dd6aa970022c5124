//! `pgcellar cat BACKUP PATH`: one file of a backup, rebuilt from its objects and
//! streamed to a writer (stdout), its whole-file SHA-256 checked at the end.
//!
//! Bytes already written cannot be taken back, so a mismatch (or a damaged object
//! found half-way) is an error whose message says the output is not the file; the
//! caller's exit code is the only verdict (`pgcellar cat ... > f && use f`).

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::repo::manifest::{self, FileEntry, Manifest, DATA_PREFIX};
use crate::repo::objects::{check_rebuilt, rebuild, ObjectStore};
use crate::repo::Repository;
use serde::Serialize;
use std::io::Write;

/// What `cat` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct CatOutcome {
    /// The backup the file came from.
    pub id: String,
    /// Its manifest path.
    pub path: String,
    /// Bytes written (the file's size).
    pub size: u64,
    /// SHA-256 of what was written, equal to the manifest's.
    pub sha256: String,
}

/// Write file `path` of backup `spec` (an id, `latest` or `oldest`) into `out`.
pub fn cat(settings: &Settings, spec: &str, path: &str, out: &mut dyn Write) -> Result<CatOutcome> {
    let (repo, server) = Repository::open_server(settings)?;
    let storage = repo.storage();
    let id = manifest::resolve(storage, &server.name, spec)?;
    let m = manifest::load(storage, &server.name, &id)?;
    let entry = find_entry(&m, path)?;
    let store = ObjectStore::new(storage, &server.name);
    let not_the_file = |e: Error| {
        e.context(format!(
            "the output is NOT {} of backup {id} (discard it)",
            entry.path
        ))
    };
    let got = rebuild(&store, entry, out).map_err(not_the_file)?;
    check_rebuilt(entry, &got, id.as_str()).map_err(not_the_file)?;
    Ok(CatOutcome {
        id: id.to_string(),
        path: entry.path.clone(),
        size: got.size,
        sha256: got.sha256,
    })
}

/// The entry for `path`: a manifest path (`data/base/5/16384`,
/// `tablespaces/<oid>/...`) or a path relative to the data directory (`base/5/16384`).
pub fn find_entry<'m>(m: &'m Manifest, path: &str) -> Result<&'m FileEntry> {
    let clean = path.trim_start_matches("./");
    let in_data = format!("{DATA_PREFIX}/{clean}");
    m.files
        .iter()
        .find(|f| f.path == clean)
        .or_else(|| m.files.iter().find(|f| f.path == in_data))
        .ok_or_else(|| {
            Error::not_found(format!(
                "backup {} has no file {:?} (give a manifest path such as \
                 data/global/pg_control, or a path inside the data directory; \
                 'pgcellar show {} --json' lists them)",
                m.id,
                crate::names::truncate_for_display(path),
                m.id
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::repo::manifest::sample;

    #[test]
    fn paths_with_or_without_the_data_prefix() {
        let m = sample("20261101T000000Z");
        for p in ["data/PG_VERSION", "PG_VERSION", "./PG_VERSION"] {
            assert_eq!(find_entry(&m, p).unwrap().path, "data/PG_VERSION", "{p}");
        }
        for p in ["data/base/1/1", "PG_VERSION/", "", "tablespaces/1/x"] {
            let e = find_entry(&m, p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{p}");
            assert!(!e.to_string().contains('\n'));
        }
    }
}
