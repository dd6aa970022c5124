//! Page-hash lists: for each 8 KiB page of a file version, the first 16 bytes of its
//! SHA-256, so the next backup finds the changed pages without reading the parent's
//! data. 128 bits make an accidental match 2^-128 per page, and a crafted one would
//! need a second preimage of SHA-256.

use super::delta::PAGE;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// Bytes kept of each page's SHA-256.
pub const PAGE_HASH_LEN: usize = 16;

/// One page's hash.
pub type PageHash = [u8; PAGE_HASH_LEN];

/// The hash of one page.
pub fn page_hash(page: &[u8]) -> PageHash {
    let full = Sha256::digest(page);
    let mut h = [0u8; PAGE_HASH_LEN];
    h.copy_from_slice(&full[..PAGE_HASH_LEN]);
    h
}

/// The page hashes of one file version, in block order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageHashes(pub Vec<PageHash>);

impl PageHashes {
    /// Decode a page-hash object's content.
    pub fn decode(bytes: &[u8], what: &str) -> Result<PageHashes> {
        if !bytes.len().is_multiple_of(PAGE_HASH_LEN) {
            return Err(Error::corrupt(format!(
                "page-hash object {what} is {} bytes, not a whole number of hashes",
                bytes.len()
            )));
        }
        Ok(PageHashes(
            bytes
                .chunks_exact(PAGE_HASH_LEN)
                .map(|c| {
                    let mut h = [0u8; PAGE_HASH_LEN];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
        ))
    }

    /// The content of the page-hash object.
    pub fn encode(&self) -> Vec<u8> {
        self.0.concat()
    }

    /// The hash of block `b`, if the version has that block.
    pub fn get(&self, b: u64) -> Option<&PageHash> {
        usize::try_from(b).ok().and_then(|i| self.0.get(i))
    }

    /// Size in bytes of the file version these hashes describe.
    pub fn file_size(&self) -> u64 {
        self.0.len() as u64 * PAGE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let h = PageHashes(vec![page_hash(&[0; PAGE]), page_hash(&[1; PAGE])]);
        assert_ne!(h.0[0], h.0[1]);
        let bytes = h.encode();
        assert_eq!(bytes.len(), 32);
        assert_eq!(PageHashes::decode(&bytes, "x").unwrap(), h);
        assert!(PageHashes::decode(&bytes[..31], "x").is_err());
        assert_eq!(h.file_size(), 2 * PAGE as u64);
        assert!(h.get(2).is_none());
    }
}
