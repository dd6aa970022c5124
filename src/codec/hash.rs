//! Measuring filters: they pass bytes through unchanged and note what went by.
//! [`HashWriter`] and [`HashReader`] take the SHA-256 and length of the content;
//! [`CountWriter`] and [`CountReader`] only count, for the stored (compressed) side,
//! where a second SHA-256 would cost time and nothing reads it.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// SHA-256 and length of the bytes that passed a hashing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// Number of bytes.
    pub size: u64,
}

/// The state both hashing filters share.
#[derive(Default)]
struct Hasher {
    sha: Sha256,
    size: u64,
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    fn finish(self) -> Hashed {
        Hashed {
            sha256: hex::encode(self.sha.finalize()),
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
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::default(),
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
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Hasher::default(),
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
