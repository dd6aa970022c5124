//! Streaming compression and SHA-256: one pass reads, hashes, compresses and writes.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// Buffer size for streaming copies: large enough to amortise syscalls, small enough
/// that memory stays flat.
pub const BUF_SIZE: usize = 256 * 1024;

/// A compression algorithm for stored files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard (`.zst`), the default.
    #[default]
    Zstd,
    /// LZ4 frame format (`.lz4`).
    Lz4,
    /// gzip (`.gz`).
    Gzip,
    /// Stored as is (`.raw`).
    None,
}

impl Compression {
    /// File extension used in the repository.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "zst",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gz",
            Compression::None => "raw",
        }
    }

    /// The algorithm that a repository extension denotes.
    pub fn from_extension(ext: &str) -> Option<Compression> {
        Some(match ext {
            "zst" => Compression::Zstd,
            "lz4" => Compression::Lz4,
            "gz" => Compression::Gzip,
            "raw" => Compression::None,
            _ => return None,
        })
    }

    /// Default level when none is configured.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Zstd => 3,
            Compression::Gzip => 6,
            Compression::Lz4 | Compression::None => 0,
        }
    }

    /// Check that `level` is valid for this algorithm.
    pub fn check_level(self, level: i32) -> Result<()> {
        let ok = match self {
            Compression::Zstd => (-7..=22).contains(&level),
            Compression::Gzip => (0..=9).contains(&level),
            Compression::Lz4 | Compression::None => level == 0,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::config(format!(
                "compression level {level} is not valid for {self} \
                 (zstd: -7..22, gzip: 0..9, lz4/none: 0)"
            )))
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        })
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zstd" | "zst" => Ok(Compression::Zstd),
            "lz4" => Ok(Compression::Lz4),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "none" | "raw" => Ok(Compression::None),
            _ => Err(format!(
                "unknown compression {s:?} (expected zstd, lz4, gzip or none)"
            )),
        }
    }
}

/// An algorithm plus its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Algorithm.
    pub compression: Compression,
    /// Level (meaning depends on the algorithm).
    pub level: i32,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            compression: Compression::Zstd,
            level: Compression::Zstd.default_level(),
        }
    }
}

/// What one streaming pass measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// SHA-256 of the original (uncompressed) bytes, lower-case hex.
    pub sha256: String,
    /// Original size in bytes.
    pub size: u64,
    /// Compressed (stored) size in bytes.
    pub stored_size: u64,
}

/// A writer that counts what passes through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Read everything from `input` (whose first bytes may already be in `head`), hash it,
/// compress it with `codec` and write the result to `output`.
pub fn encode(
    head: &[u8],
    input: &mut dyn Read,
    output: &mut dyn Write,
    codec: Codec,
) -> io::Result<StreamStats> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut counting = Counting {
        inner: output,
        count: 0,
    };
    {
        let mut sink = compressor(&mut counting, codec)?;
        let mut feed = |chunk: &[u8]| -> io::Result<()> {
            hasher.update(chunk);
            size += chunk.len() as u64;
            sink.write_all(chunk)
        };
        if !head.is_empty() {
            feed(head)?;
        }
        for_each_chunk(input, &mut feed)?;
        sink.finish_box()?;
    }
    counting.flush()?;
    Ok(StreamStats {
        sha256: hex::encode(hasher.finalize()),
        size,
        stored_size: counting.count,
    })
}

/// Like [`encode`], but reading and hashing run on a second thread while this one
/// compresses and writes, so a single file uses two cores. Memory stays bounded: a
/// fixed ring of buffers circulates between the two threads.
pub fn encode_pipelined(
    head: &[u8],
    input: &mut (dyn Read + Send),
    output: &mut dyn Write,
    codec: Codec,
) -> io::Result<StreamStats> {
    use std::sync::mpsc::sync_channel;
    const RING: usize = 4;
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(RING);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(RING);
    for _ in 0..RING {
        // The channel has room for RING buffers, so this cannot block or fail.
        let _ = empty_tx.send(vec![0u8; BUF_SIZE]);
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> io::Result<(String, u64)> {
            let mut hasher = Sha256::new();
            hasher.update(head);
            let mut size = head.len() as u64;
            while let Ok(mut buf) = empty_rx.recv() {
                buf.resize(BUF_SIZE, 0);
                let n = loop {
                    match input.read(&mut buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                size += n as u64;
                if full_tx.send(buf).is_err() {
                    // The writer stopped (it failed); its error is the one to report.
                    break;
                }
            }
            Ok((hex::encode(hasher.finalize()), size))
        });
        let mut chunks = std::iter::once(head.to_vec())
            .chain(std::iter::from_fn(|| {
                let buf = full_rx.recv().ok()?;
                Some(buf)
            }))
            .filter(|b| !b.is_empty());
        let written = (|| -> io::Result<u64> {
            let mut counting = Counting {
                inner: &mut *output,
                count: 0,
            };
            {
                let mut sink = compressor(&mut counting, codec)?;
                for chunk in chunks.by_ref() {
                    sink.write_all(&chunk)?;
                    // Hand the buffer back; if the reader is gone that is fine.
                    let _ = empty_tx.try_send(chunk);
                }
                sink.finish_box()?;
            }
            counting.flush()?;
            Ok(counting.count)
        })();
        // Unblock the reader whatever happened, then collect its result.
        drop(chunks);
        drop(full_rx);
        drop(empty_tx);
        let read = reader
            .join()
            .map_err(|_| io::Error::other("reader thread panicked"))?;
        let stored_size = written?;
        let (sha256, size) = read?;
        Ok(StreamStats {
            sha256,
            size,
            stored_size,
        })
    })
}

fn compressor<'a>(out: &'a mut dyn Write, codec: Codec) -> io::Result<Box<dyn FinishWrite + 'a>> {
    Ok(match codec.compression {
        Compression::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(out, codec.level)?;
            e.include_checksum(false)?;
            Box::new(e)
        }
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameEncoder::new(out)),
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::new(codec.level.clamp(0, 9) as u32),
        )),
        Compression::None => Box::new(Plain(out)),
    })
}

/// Decompress `input` (stored with `compression`) into `output`, hashing the
/// decompressed bytes. The caller compares the hash before trusting `output`.
pub fn decode(
    input: &mut dyn Read,
    output: &mut dyn Write,
    compression: Compression,
) -> io::Result<StreamStats> {
    let mut counted_in = CountingRead {
        inner: input,
        count: 0,
    };
    let mut source: Box<dyn Read + '_> = match compression {
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut counted_in)?),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(&mut counted_in)),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut counted_in)),
        Compression::None => Box::new(&mut counted_in),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for_each_chunk(&mut source, |chunk| {
        hasher.update(chunk);
        size += chunk.len() as u64;
        output.write_all(chunk)
    })?;
    drop(source);
    Ok(StreamStats {
        sha256: hex::encode(hasher.finalize()),
        size,
        stored_size: counted_in.count,
    })
}

/// Feed every chunk of `input` to `f`, retrying interrupted reads.
fn for_each_chunk(
    input: &mut dyn Read,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// SHA-256 of a stream, without compressing (the fast path for duplicate checks).
pub fn hash(head: &[u8], input: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    hasher.update(head);
    let mut size = head.len() as u64;
    for_each_chunk(input, |chunk| {
        hasher.update(chunk);
        size += chunk.len() as u64;
        Ok(())
    })?;
    Ok((hex::encode(hasher.finalize()), size))
}

struct CountingRead<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A compressing writer that must be told when the stream ends.
trait FinishWrite: Write {
    fn finish_box(self: Box<Self>) -> io::Result<()>;
}

impl<W: Write> FinishWrite for zstd::stream::write::Encoder<'_, W> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        self.finish().map(|_| ())
    }
}

impl<W: Write> FinishWrite for lz4_flex::frame::FrameEncoder<W> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        self.finish().map(|_| ()).map_err(io::Error::other)
    }
}

impl<W: Write> FinishWrite for flate2::write::GzEncoder<W> {
    fn finish_box(self: Box<Self>) -> io::Result<()> {
        self.finish().map(|_| ())
    }
}

struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> FinishWrite for Plain<W> {
    fn finish_box(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let data: Vec<u8> = (0..700_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let want = hex::encode(Sha256::digest(&data));
        for c in [
            Compression::Zstd,
            Compression::Lz4,
            Compression::Gzip,
            Compression::None,
        ] {
            let codec = Codec {
                compression: c,
                level: c.default_level(),
            };
            let mut stored = Vec::new();
            let st = encode(&data[..100], &mut &data[100..], &mut stored, codec).unwrap();
            assert_eq!(st.sha256, want, "{c}");
            assert_eq!(st.size, data.len() as u64);
            assert_eq!(st.stored_size, stored.len() as u64);
            let mut piped = Vec::new();
            let st2 = encode_pipelined(&data[..100], &mut &data[100..], &mut piped, codec).unwrap();
            assert_eq!(st2, st, "{c}");
            assert_eq!(piped, stored, "{c}");
            let mut out = Vec::new();
            let back = decode(&mut &stored[..], &mut out, c).unwrap();
            assert_eq!(out, data);
            assert_eq!(back.sha256, want);
            assert_eq!(Compression::from_extension(c.extension()), Some(c));
        }
        assert_eq!(hash(&data[..5], &mut &data[5..]).unwrap().0, want);
    }

    #[test]
    fn corrupt_stream_is_detected() {
        let data = vec![7u8; 100_000];
        let mut stored = Vec::new();
        encode(&[], &mut &data[..], &mut stored, Codec::default()).unwrap();
        let mid = stored.len() / 2;
        stored[mid] ^= 0xFF;
        let mut out = Vec::new();
        let r = decode(&mut &stored[..], &mut out, Compression::Zstd);
        // Either the decoder notices or the hash differs.
        if let Ok(st) = r {
            assert_ne!(st.sha256, hex::encode(Sha256::digest(&data)));
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compression::Zstd.check_level(23).is_err());
        assert!(Compression::Gzip.check_level(9).is_ok());
        assert!(Compression::Lz4.check_level(1).is_err());
        assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip);
        assert!("brotli".parse::<Compression>().is_err());
    }
}
