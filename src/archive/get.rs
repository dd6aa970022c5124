//! Getting one WAL file out: the single stored copy, decompressed beside its
//! destination and renamed into place only when its SHA-256 matches.

use super::stored::{lookup, short, StoredWal};
use crate::codec::{self, Compression, ContentHash};
use crate::error::{Error, IoContext, Result};
use crate::repo::Repository;
use crate::storage::Storage;
use crate::wal::WalName;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Fetch `name` into `dest`, verified: the destination appears (by rename) only after
/// the SHA-256 of the decompressed bytes matched the stored name.
pub fn get(repo: &Repository, server: &str, name: &WalName, dest: &Path) -> Result<u64> {
    let storage = repo.storage();
    let found = lookup(storage, server, name)?;
    let stored = pick_single(name, found, storage)?;
    Ok(fetch_verified(storage, &stored, dest)?.0)
}

/// Choose the one stored copy; several with different hashes is corruption.
pub fn pick_single(
    name: &WalName,
    found: Vec<StoredWal>,
    storage: &dyn Storage,
) -> Result<StoredWal> {
    let mut it = found.into_iter();
    let first = it.next().ok_or_else(|| {
        Error::not_found(format!(
            "{name} is not in the archive at {}",
            storage.location()
        ))
    })?;
    if let Some(other) = it.find(|o| o.sha256 != first.sha256) {
        return Err(Error::corrupt(format!(
            "{name} is archived twice with different content ({} and {}) in {}; refusing to guess",
            short(&first.sha256),
            short(&other.sha256),
            storage.location()
        )));
    }
    Ok(first)
}

/// Stream one stored file into `dest` through a temporary file, verifying its hash.
/// Returns its size and plain SHA-256.
pub fn fetch_verified(
    storage: &dyn Storage,
    stored: &StoredWal,
    dest: &Path,
) -> Result<(u64, String)> {
    let mut input = storage.open_read(&stored.path)?;
    let what = format!("{} in {}", stored.path, storage.location());
    write_verified(
        &storage.content_hash(),
        &mut input,
        stored.compression,
        &stored.sha256,
        dest,
        &what,
    )
}

/// Decode `input` into a temporary file beside `dest` and give it that name only if
/// the decoded bytes' content id (`how`) is `sha256`; `what` names the source in
/// errors. Returns the size and the plain SHA-256.
pub fn write_verified(
    how: &ContentHash,
    input: &mut dyn Read,
    compression: Compression,
    sha256: &str,
    dest: &Path,
    what: &str,
) -> Result<(u64, String)> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::invalid(format!("destination {} has no file name", dest.display()))
    })?;
    let tmp = dir.join(format!(".{base}.pgcellar-{}", std::process::id()));
    let result = (|| -> Result<(u64, String)> {
        let file = File::create(&tmp).io_context(|| format!("creating {}", tmp.display()))?;
        let mut out = io::BufWriter::with_capacity(codec::BUF_SIZE, file);
        let stats = codec::decode(how, input, &mut out, compression)
            .map_err(|e| Error::corrupt(format!("{what} cannot be decompressed: {e}")))?;
        io::Write::flush(&mut out).io_context(|| format!("writing {}", tmp.display()))?;
        if stats.sha256 != sha256 {
            return Err(Error::corrupt(format!(
                "{what} is corrupt: its content hashes to {}, not {}; not delivering it",
                short(&stats.sha256),
                short(sha256)
            )));
        }
        fs::rename(&tmp, dest)
            .io_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok((stats.size, stats.content_sha256))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
