//! Compression as stream filters: an [`Encoder`] is a `Write` filter that must be
//! finished, a [`Decoder`] is a `Read` filter. Everything that shapes the stored bytes
//! (zstd level and frame options, the lz4 frame, the gzip header) is decided here and
//! nowhere else, so one codec always writes the same file for the same input.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;

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

/// Compresses what is written to it into `W`. The stream is complete only after
/// [`Encoder::finish`], the one place that reports a failure to end it.
pub struct Encoder<W: Write>(EncoderKind<W>);

enum EncoderKind<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    /// Start a stream compressed with `codec` into `out`.
    pub fn new(out: W, codec: Codec) -> io::Result<Self> {
        Ok(Encoder(match codec.compression {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, codec.level)?;
                // The SHA-256 of the content already guards every stored file.
                e.include_checksum(false)?;
                EncoderKind::Zstd(e)
            }
            Compression::Lz4 => EncoderKind::Lz4(lz4_flex::frame::FrameEncoder::new(out)),
            Compression::Gzip => EncoderKind::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(codec.level.clamp(0, 9) as u32),
            )),
            Compression::None => EncoderKind::None(out),
        }))
    }

    /// Write the end of the stream and hand back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.0 {
            EncoderKind::Zstd(e) => e.finish(),
            EncoderKind::Lz4(e) => e.finish().map_err(io::Error::other),
            EncoderKind::Gzip(e) => e.finish(),
            EncoderKind::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            EncoderKind::Zstd(e) => e.write(buf),
            EncoderKind::Lz4(e) => e.write(buf),
            EncoderKind::Gzip(e) => e.write(buf),
            EncoderKind::None(w) => w.write(buf),
        }
    }

    // Forwarded so that each encoder sees the same calls as it would unwrapped.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.0 {
            EncoderKind::Zstd(e) => e.write_all(buf),
            EncoderKind::Lz4(e) => e.write_all(buf),
            EncoderKind::Gzip(e) => e.write_all(buf),
            EncoderKind::None(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            EncoderKind::Zstd(e) => e.flush(),
            EncoderKind::Lz4(e) => e.flush(),
            EncoderKind::Gzip(e) => e.flush(),
            EncoderKind::None(w) => w.flush(),
        }
    }
}

/// Decompresses what it reads from `R`. A stream that ends early is an error for
/// zstd, lz4 and gzip; for `none` only the content hash can tell.
pub struct Decoder<R: Read>(DecoderKind<R>);

enum DecoderKind<R: Read> {
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    Lz4(lz4_flex::frame::FrameDecoder<R>),
    Gzip(flate2::read::GzDecoder<R>),
    None(R),
}

impl<R: Read> Decoder<R> {
    /// Start decompressing `input`, which was stored with `compression`.
    pub fn new(input: R, compression: Compression) -> io::Result<Self> {
        Ok(Decoder(match compression {
            Compression::Zstd => DecoderKind::Zstd(zstd::stream::read::Decoder::new(input)?),
            Compression::Lz4 => DecoderKind::Lz4(lz4_flex::frame::FrameDecoder::new(input)),
            Compression::Gzip => DecoderKind::Gzip(flate2::read::GzDecoder::new(input)),
            Compression::None => DecoderKind::None(input),
        }))
    }

    /// The reader below (some of its bytes may sit in the decoder's buffer).
    pub fn get_ref(&self) -> &R {
        match &self.0 {
            DecoderKind::Zstd(d) => d.get_ref().get_ref(),
            DecoderKind::Lz4(d) => d.get_ref(),
            DecoderKind::Gzip(d) => d.get_ref(),
            DecoderKind::None(r) => r,
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            DecoderKind::Zstd(d) => d.read(buf),
            DecoderKind::Lz4(d) => d.read(buf),
            DecoderKind::Gzip(d) => d.read(buf),
            DecoderKind::None(r) => r.read(buf),
        }
    }
}
