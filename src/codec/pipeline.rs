//! The one place where filters are stacked; every command stores and loads files
//! through these stacks, so they all see the same bytes on disk.
//!
//! Write (wal-push, base-backup):
//!   original bytes -> [`HashWriter`] (SHA-256 and size of the original)
//!   -> [`WriteStack`]: [`Encoder`] (compress) -> [`CountWriter`] -> sink (*encrypt*)
//!
//! Read (wal-get, restore, verify, timeline history):
//!   source (*decrypt*) -> [`ReadStack`]: [`CountReader`] -> [`Decoder`] (decompress)
//!   -> [`HashReader`] -> output; the caller compares the hash with the one it expects
//!   before trusting the output.
//!
//! *encrypt*/*decrypt* happen below the sink, in the storage layer
//! `storage::layer::Encrypted`, so every file of an encrypted repository (small JSON
//! files too) goes through the cipher, after compression (ciphertext does not
//! compress). The hash stays outermost, on the original bytes: it names the content,
//! not its encoding; in an encrypted repository it is keyed ([`ContentHash`]).

use super::compress::{Codec, Compression, Decoder, Encoder};
use super::hash::{overrun, ContentHash, CountReader, CountWriter, HashReader, HashWriter, Hashed};
use std::io::{self, Read, Write};

/// Buffer size for streaming copies: large enough to amortise syscalls, small enough
/// that memory stays flat.
pub const BUF_SIZE: usize = 256 * 1024;

/// What one streaming pass measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// Content id of the original (uncompressed) bytes, lower-case hex: their
    /// SHA-256, or its HMAC in an encrypted repository ([`ContentHash`]).
    pub sha256: String,
    /// Plain SHA-256 of the original bytes (equal to `sha256` without encryption).
    pub content_sha256: String,
    /// Original size in bytes.
    pub size: u64,
    /// Compressed (stored) size in bytes.
    pub stored_size: u64,
}

impl StreamStats {
    fn new(original: Hashed, stored_size: u64) -> Self {
        StreamStats {
            sha256: original.sha256,
            content_sha256: original.content_sha256,
            size: original.size,
            stored_size,
        }
    }
}

/// The stored side of the write stack: original bytes go in, stored bytes come out
/// into the sink.
pub struct WriteStack<W: Write> {
    top: Encoder<CountWriter<W>>,
}

impl<W: Write> WriteStack<W> {
    /// Stack the filters for `codec` on `sink`.
    pub fn new(sink: W, codec: Codec) -> io::Result<Self> {
        Ok(WriteStack {
            top: Encoder::new(CountWriter::new(sink), codec)?,
        })
    }

    /// End the stored stream, flush the sink and return the stored size.
    pub fn finish(self) -> io::Result<u64> {
        Ok(self.finish_sink()?.1)
    }

    /// End the stored stream, flush the sink and return it with the stored size (a
    /// sink that must still be committed, such as a repository file).
    pub fn finish_sink(self) -> io::Result<(W, u64)> {
        let mut counted = self.top.finish()?;
        counted.flush()?;
        Ok(counted.into_inner())
    }
}

impl<W: Write> Write for WriteStack<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.top.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.top.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.top.flush()
    }
}

/// The stored side of the read stack: stored bytes from the source go in, original
/// bytes come out.
pub struct ReadStack<R: Read> {
    top: Decoder<CountReader<R>>,
}

impl<R: Read> ReadStack<R> {
    /// Stack the filters for a file stored with `compression` on `source`.
    pub fn new(source: R, compression: Compression) -> io::Result<Self> {
        Ok(ReadStack {
            top: Decoder::new(CountReader::new(source), compression)?,
        })
    }

    /// Stored bytes read from the source so far.
    pub fn stored_size(&self) -> u64 {
        self.top.get_ref().count()
    }
}

impl<R: Read> Read for ReadStack<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.top.read(buf)
    }
}

/// Read everything from `input` (whose first bytes may already be in `head`), hash it,
/// compress it with `codec` and write the result to `output`.
pub fn encode(
    how: &ContentHash,
    head: &[u8],
    input: &mut dyn Read,
    output: &mut dyn Write,
    codec: Codec,
) -> io::Result<StreamStats> {
    let mut stack = HashWriter::new(WriteStack::new(output, codec)?, how);
    if !head.is_empty() {
        stack.write_all(head)?;
    }
    for_each_chunk(input, |chunk| stack.write_all(chunk))?;
    let (stored, original) = stack.finish();
    Ok(StreamStats::new(original, stored.finish()?))
}

/// Like [`encode`], but reading and hashing run on a second thread while this one
/// compresses and writes, so a single file uses two cores. Memory stays bounded: a
/// fixed ring of buffers circulates between the two threads.
///
/// The stack is the same as [`encode`]'s, cut between the hash and the compressor:
/// the hash filter sits on the reading side, as a [`HashReader`].
pub fn encode_pipelined(
    how: &ContentHash,
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
        let reader = scope.spawn(move || -> io::Result<Hashed> {
            let mut source = HashReader::new(head.chain(input), how);
            // The head goes to the compressor as one write, as in `encode`: lz4 frames
            // depend on where writes end, and the stored bytes must not.
            let mut first = head.len();
            while let Ok(mut buf) = empty_rx.recv() {
                buf.resize(BUF_SIZE.max(std::mem::take(&mut first)), 0);
                let n = read_retrying(&mut source, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if full_tx.send(buf).is_err() {
                    // The writer stopped (it failed); its error is the one to report.
                    break;
                }
            }
            Ok(source.finish().1)
        });
        let written = (|| -> io::Result<u64> {
            let mut stack = WriteStack::new(&mut *output, codec)?;
            // Ends when the reader, done or failed, drops its sender.
            for chunk in full_rx.iter() {
                stack.write_all(&chunk)?;
                // Hand the buffer back; if the reader is gone that is fine.
                let _ = empty_tx.try_send(chunk);
            }
            stack.finish()
        })();
        // Unblock the reader whatever happened, then collect its result.
        drop(full_rx);
        drop(empty_tx);
        let read = reader
            .join()
            .map_err(|_| io::Error::other("reader thread panicked"))?;
        let stored_size = written?;
        Ok(StreamStats::new(read?, stored_size))
    })
}

/// Decompress `input` (stored with `compression`) into `output`, hashing the
/// decompressed bytes. The caller compares the hash before trusting `output`.
pub fn decode(
    how: &ContentHash,
    input: &mut dyn Read,
    output: &mut dyn Write,
    compression: Compression,
) -> io::Result<StreamStats> {
    let mut source = HashReader::new(ReadStack::new(input, compression)?, how);
    for_each_chunk(&mut source, |chunk| output.write_all(chunk))?;
    let (stored, original) = source.finish();
    Ok(StreamStats::new(original, stored.stored_size()))
}

/// Content id of a stream, without compressing (the fast path for duplicate checks).
pub fn hash(how: &ContentHash, head: &[u8], input: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut source = HashReader::new(head.chain(input), how);
    for_each_chunk(&mut source, |_| Ok(()))?;
    let (_, original) = source.finish();
    Ok((original.sha256, original.size))
}

/// Feed every chunk of `input` to `f`.
fn for_each_chunk(
    input: &mut dyn Read,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match read_retrying(input, &mut buf)? {
            0 => return Ok(()),
            n => f(buf.get(..n).ok_or_else(overrun)?)?,
        }
    }
}

/// One read, retried while it is interrupted.
fn read_retrying(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}
