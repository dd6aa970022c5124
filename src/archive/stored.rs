//! How an archived WAL file is named in the repository (`<name>-<sha256>.<ext>`), and
//! finding the stored copies of a name.

use crate::codec::{self, Compression};
use crate::error::Result;
use crate::repo::layout;
use crate::storage::{self, Storage, TEMP_PREFIX};
use crate::wal::WalName;

/// One archived copy of a WAL file as found in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWal {
    /// The WAL file name.
    pub name: WalName,
    /// SHA-256 of the original bytes.
    pub sha256: String,
    /// How it is compressed.
    pub compression: Compression,
    /// Path relative to the repository root.
    pub path: String,
    /// Stored (compressed) size.
    pub stored_size: u64,
}

/// The stored file name `<name>-<sha256>.<ext>`.
pub fn stored_name(name: &WalName, sha256: &str, compression: Compression) -> String {
    format!("{}-{}.{}", name, sha256, compression.extension())
}

/// Parse a stored file name back into (WAL name, sha256, compression).
pub fn parse_stored_name(file: &str) -> Option<(WalName, String, Compression)> {
    let (stem, ext) = file.rsplit_once('.')?;
    let compression = Compression::from_extension(ext)?;
    let (name, sha) = stem.rsplit_once('-')?;
    if !codec::is_sha256_hex(sha) {
        return None;
    }
    Some((WalName::parse(name).ok()?, sha.to_string(), compression))
}

/// Every stored copy of `name` (normally zero or one) with one directory listing.
pub fn lookup(storage: &dyn Storage, server: &str, name: &WalName) -> Result<Vec<StoredWal>> {
    let dir = layout::wal_dir(server, name);
    let prefix = format!("{name}-");
    let mut found = Vec::new();
    for e in storage.list(&dir)? {
        if e.is_dir || e.name.starts_with(TEMP_PREFIX) || !e.name.starts_with(&prefix) {
            continue;
        }
        if let Some((n, sha, compression)) = parse_stored_name(&e.name) {
            if &n == name {
                found.push(StoredWal {
                    name: n,
                    sha256: sha,
                    compression,
                    path: storage::join(&dir, &e.name),
                    stored_size: e.size,
                });
            }
        }
    }
    Ok(found)
}

pub(super) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        let n = WalName::parse("00000002.history").unwrap();
        let sha = "a".repeat(64);
        let s = stored_name(&n, &sha, Compression::Zstd);
        assert_eq!(s, format!("00000002.history-{sha}.zst"));
        assert_eq!(
            parse_stored_name(&s),
            Some((n, sha.clone(), Compression::Zstd))
        );
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(
            parse_stored_name(&stored_name(&b, &sha, Compression::None))
                .unwrap()
                .0,
            b
        );
        assert!(parse_stored_name("000000010000000000000001-xyz.zst").is_none());
        assert!(parse_stored_name(&format!("000000010000000000000001-{sha}.bz2")).is_none());
        assert!(parse_stored_name(&format!(".tmp-1-{sha}.zst")).is_none());
    }
}
