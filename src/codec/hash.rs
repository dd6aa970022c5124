//! Measuring filters: they pass bytes through unchanged and note what went by.
//! [`HashWriter`] and [`HashReader`] take the SHA-256 and length of the content;
//! [`CountWriter`] and [`CountReader`] only count, for the stored (compressed) side,
//! where a second SHA-256 would cost time and nothing reads it.

use crate::crypto::SubKey;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// How stored content is named: by its SHA-256, or, in an encrypted repository, by
/// HMAC-SHA-256 (under the repository's name key) of that SHA-256, so that a reader of
/// the repository cannot match a name to content they can guess. Keying the digest
/// rather than the content keeps one SHA-256 pass per file either way, and gives the
/// plain SHA-256 too, for checks that stay on the database host (spool, look-ahead).
#[derive(Clone, Debug, Default)]
pub enum ContentHash {
    /// Plain SHA-256 (an unencrypted repository).
    #[default]
    Sha256,
    /// HMAC-SHA-256 of the SHA-256, under this key (an encrypted repository).
    Hmac(SubKey),
}

impl ContentHash {
    /// Whether names are keyed (the repository is encrypted).
    pub fn is_keyed(&self) -> bool {
        matches!(self, ContentHash::Hmac(_))
    }

    /// The content id of `bytes` in one call.
    pub fn of(&self, bytes: &[u8]) -> String {
        let mut h = Hasher::new(self);
        h.update(bytes);
        h.finish().sha256
    }

    /// The content id of content whose plain SHA-256 (hex) is `sha256`; `None` if
    /// that is not SHA-256 hex.
    pub fn id_of_sha256(&self, sha256: &str) -> Option<String> {
        let raw = hex::decode(sha256).ok().filter(|r| r.len() == 32)?;
        Some(self.id(&raw))
    }

    fn id(&self, raw_sha256: &[u8]) -> String {
        match self {
            ContentHash::Sha256 => hex::encode(raw_sha256),
            ContentHash::Hmac(key) => match Hmac::<Sha256>::new_from_slice(key.bytes()) {
                Ok(mut mac) => {
                    mac.update(raw_sha256);
                    hex::encode(mac.finalize().into_bytes())
                }
                // HMAC takes a key of any length; this arm is unreachable.
                Err(_) => hex::encode(raw_sha256),
            },
        }
    }
}

/// Content id and length of the bytes that passed a hashing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// The content id, lower-case hex: the SHA-256, or in an encrypted repository its
    /// HMAC ([`ContentHash`]). This is what names and manifests hold.
    pub sha256: String,
    /// The plain SHA-256, lower-case hex (equal to `sha256` without encryption).
    pub content_sha256: String,
    /// Number of bytes.
    pub size: u64,
}

/// The state both hashing filters share.
struct Hasher {
    sha: Sha256,
    how: ContentHash,
    size: u64,
}

impl Hasher {
    fn new(how: &ContentHash) -> Self {
        Hasher {
            sha: Sha256::new(),
            how: how.clone(),
            size: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> Hashed {
        let raw = self.sha.finalize();
        Hashed {
            sha256: self.how.id(&raw),
            content_sha256: hex::encode(raw),
            size: self.size,
        }
    }
}

/// Hashes what is written through it into `W`.
pub struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashWriter<W> {
    /// Hash everything written from now on, passing it to `inner`.
    pub fn new(inner: W, how: &ContentHash) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::new(how),
        }
    }

    /// The inner writer and what passed into it.
    pub fn finish(self) -> (W, Hashed) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Only what the inner writer took belongs to the stream.
        self.hasher.update(buf.get(..n).ok_or_else(overrun)?);
        Ok(n)
    }

    // Forwarded so the writer below sees whole chunks, and the hash is taken once per
    // chunk. After an error the stream is abandoned, so the hash no longer matters.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it from `R`.
pub struct HashReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashReader<R> {
    /// Hash everything read from `inner` from now on.
    pub fn new(inner: R, how: &ContentHash) -> Self {
        HashReader {
            inner,
            hasher: Hasher::new(how),
        }
    }

    /// The inner reader and what came out of it.
    pub fn finish(self) -> (R, Hashed) {
        (self.inner, self.hasher.finish())
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).ok_or_else(overrun)?);
        Ok(n)
    }
}

/// A reader or writer below claimed more bytes than the buffer holds.
pub(super) fn overrun() -> io::Error {
    io::Error::other("a stream reported more bytes than its buffer holds")
}

/// Counts the bytes written through it into `W`.
pub struct CountWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> CountWriter<W> {
    /// Count from zero what is written to `inner`.
    pub fn new(inner: W) -> Self {
        CountWriter { inner, count: 0 }
    }

    /// Bytes the inner writer accepted so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer and the count.
    pub fn into_inner(self) -> (W, u64) {
        (self.inner, self.count)
    }
}

impl<W: Write> Write for CountWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes read through it from `R`.
pub struct CountReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> CountReader<R> {
    /// Count from zero what is read from `inner`.
    pub fn new(inner: R) -> Self {
        CountReader { inner, count: 0 }
    }

    /// Bytes read from the inner reader so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for CountReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
