//! The page-delta encoding: the changed 8 KiB pages of one file over its previous
//! state, and the streaming merge that rebuilds a file from a base and its deltas.
//!
//! ```text
//! magic "PGCDELT1" | u64 size | { u32 block, 8192 bytes } ascending ... | u32 0xFFFFFFFF
//! ```
//! All integers little-endian. Applying a delta truncates or extends the state to
//! `size` (a multiple of 8192) and overwrites the listed blocks; a block at or past
//! the previous state's end must be listed.

use std::io::{self, Read, Write};

/// PostgreSQL's page size, the unit of change detection.
pub const PAGE: usize = 8192;
const MAGIC: &[u8; 8] = b"PGCDELT1";
const END: u32 = u32::MAX;

fn corrupt(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Writes a delta encoding into `W`.
pub struct DeltaWriter<W: Write> {
    out: W,
    size: u64,
    last: Option<u32>,
    pages: u64,
}

impl<W: Write> DeltaWriter<W> {
    /// Start a delta for a file state of `size` bytes (a multiple of [`PAGE`]).
    pub fn new(mut out: W, size: u64) -> io::Result<Self> {
        if !size.is_multiple_of(PAGE as u64) {
            return Err(io::Error::other(format!(
                "a page delta needs a whole number of pages, not {size} bytes"
            )));
        }
        out.write_all(MAGIC)?;
        out.write_all(&size.to_le_bytes())?;
        Ok(DeltaWriter {
            out,
            size,
            last: None,
            pages: 0,
        })
    }

    /// Add page `block` (blocks must come in ascending order).
    pub fn page(&mut self, block: u32, page: &[u8]) -> io::Result<()> {
        let in_range = (u64::from(block) + 1) * PAGE as u64 <= self.size;
        if page.len() != PAGE || !in_range || block == END || self.last.is_some_and(|l| l >= block)
        {
            return Err(io::Error::other(format!(
                "page delta: block {block} out of order or range"
            )));
        }
        self.out.write_all(&block.to_le_bytes())?;
        self.out.write_all(page)?;
        self.last = Some(block);
        self.pages += 1;
        Ok(())
    }

    /// Pages added so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// End the encoding; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&END.to_le_bytes())?;
        Ok(self.out)
    }
}

/// Reads a delta encoding one record at a time.
pub struct DeltaReader<R: Read> {
    input: R,
    size: u64,
    next: Option<u32>,
}

impl<R: Read> DeltaReader<R> {
    /// Read the header and the first record's block number.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut head = [0u8; 16];
        input.read_exact(&mut head)?;
        if &head[..8] != MAGIC {
            return Err(corrupt("not a pgcellar page delta (bad magic)".into()));
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&head[8..]);
        let size = u64::from_le_bytes(size);
        if size % PAGE as u64 != 0 {
            return Err(corrupt(format!(
                "page delta of {size} bytes, not whole pages"
            )));
        }
        let mut r = DeltaReader {
            input,
            size,
            next: None,
        };
        r.next = r.read_block_number(None)?;
        Ok(r)
    }

    /// Size of the file state after this delta.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block number of the next record, if any.
    pub fn peek(&self) -> Option<u32> {
        self.next
    }

    fn read_block_number(&mut self, prev: Option<u32>) -> io::Result<Option<u32>> {
        let mut b = [0u8; 4];
        self.input.read_exact(&mut b)?;
        let block = u32::from_le_bytes(b);
        if block == END {
            return Ok(None);
        }
        if prev.is_some_and(|p| p >= block) || (u64::from(block) + 1) * PAGE as u64 > self.size {
            return Err(corrupt(format!(
                "page delta lists block {block} out of order or past its size {}",
                self.size
            )));
        }
        Ok(Some(block))
    }

    /// Read the page of the record [`DeltaReader::peek`] names into `buf` (or drop it
    /// when `buf` is `None`), and move to the next record.
    pub fn take(&mut self, buf: Option<&mut [u8; PAGE]>) -> io::Result<()> {
        let prev = self.next;
        let mut scratch = [0u8; PAGE];
        self.input.read_exact(buf.unwrap_or(&mut scratch))?;
        self.next = self.read_block_number(prev)?;
        Ok(())
    }
}

/// Rebuild a file from its base stream and its deltas (in order) into `out`; returns
/// the number of bytes written. Every check here is about the structure; the caller
/// verifies the whole-file SHA-256 of what was written.
pub fn apply<B: Read, D: Read>(
    mut base: B,
    mut deltas: Vec<DeltaReader<D>>,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let Some(last) = deltas.last() else {
        return io::copy(&mut base, out);
    };
    let final_size = last.size();
    let blocks = final_size / PAGE as u64;
    let sizes: Vec<u64> = deltas.iter().map(DeltaReader::size).collect();
    let mut page = [0u8; PAGE];
    let mut base_page = [0u8; PAGE];
    let mut base_done = false;
    for b in 0..blocks {
        let start = b * PAGE as u64;
        // The newest delta listing b provides it, provided no later state cut it off.
        let mut source = None;
        for (k, d) in deltas.iter().enumerate() {
            if d.peek().is_some_and(|n| u64::from(n) == b) {
                source = Some(k);
            }
        }
        let survives_from = source.map_or(0, |k| k + 1);
        if sizes[survives_from..].iter().any(|&s| s <= start) {
            return Err(corrupt(format!(
                "page deltas leave block {b} undefined (truncated, then not written again)"
            )));
        }
        // Consume block b from the base stream whatever provides it, so the base stays
        // in step.
        let base_has = !base_done && read_page_or_eof(&mut base, &mut base_page)?;
        base_done |= !base_has;
        match source {
            None if !base_has => {
                return Err(corrupt(format!(
                    "page deltas leave block {b} undefined (the base has no such block)"
                )))
            }
            None => out.write_all(&base_page)?,
            Some(k) => {
                for (j, d) in deltas.iter_mut().enumerate() {
                    if d.peek().is_some_and(|n| u64::from(n) == b) {
                        d.take((j == k).then_some(&mut page))?;
                    }
                }
                out.write_all(&page)?;
            }
        }
    }
    // Records past the final size (cut off by a later truncation) are never read.
    Ok(final_size)
}

/// Fill `buf` with the next page; `false` at a clean end of stream. A partial last
/// page is an error: bases of page-level files are whole pages.
fn read_page_or_eof(r: &mut impl Read, buf: &mut [u8; PAGE]) -> io::Result<bool> {
    let mut got = 0;
    while got < PAGE {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match got {
        0 => Ok(false),
        PAGE => Ok(true),
        n => Err(corrupt(format!(
            "the base of a page-level file ends in a partial page ({n} bytes)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(seeds: &[u8]) -> Vec<u8> {
        seeds.iter().flat_map(|&s| vec![s; PAGE]).collect()
    }

    fn delta(size_pages: u64, recs: &[(u32, u8)]) -> Vec<u8> {
        let mut w = DeltaWriter::new(Vec::new(), size_pages * PAGE as u64).unwrap();
        for &(b, s) in recs {
            w.page(b, &[s; PAGE]).unwrap();
        }
        w.finish().unwrap()
    }

    fn run(base: &[u8], ds: &[Vec<u8>]) -> io::Result<Vec<u8>> {
        let readers = ds
            .iter()
            .map(|d| DeltaReader::new(&d[..]))
            .collect::<io::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        let n = apply(base, readers, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    #[test]
    fn deltas_overwrite_extend_and_truncate_in_order() {
        let base = pages(&[1, 2, 3]);
        // Change block 1, extend by block 3.
        let d1 = delta(4, &[(1, 9), (3, 4)]);
        assert_eq!(
            run(&base, std::slice::from_ref(&d1)).unwrap(),
            pages(&[1, 9, 3, 4])
        );
        // Then truncate to 2 blocks, then extend again with new blocks 2 and 3.
        let d2 = delta(2, &[]);
        let d3 = delta(4, &[(2, 7), (3, 8)]);
        assert_eq!(
            run(&base, &[d1.clone(), d2.clone(), d3]).unwrap(),
            pages(&[1, 9, 7, 8])
        );
        // Re-extending without writing the new block again is corrupt: its old content
        // was cut off.
        let bad = delta(3, &[]);
        assert!(run(&base, &[d1, d2, bad]).is_err());
        // A base shorter than the delta's size needs every block past it.
        assert!(run(&base, &[delta(4, &[])]).is_err());
        // No deltas: the base as it is.
        assert_eq!(run(&base, &[]).unwrap(), base);
    }

    #[test]
    fn damaged_encodings_are_refused() {
        let good = delta(2, &[(0, 1)]);
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        assert!(DeltaReader::new(&bad_magic[..]).is_err());
        // Cut off anywhere: an error, never a short file.
        for cut in [10, 20, good.len() - 1] {
            assert!(
                run(&pages(&[5, 5]), &[good[..cut].to_vec()]).is_err(),
                "{cut}"
            );
        }
        // Blocks out of order or past the size cannot be written or read.
        let mut w = DeltaWriter::new(Vec::new(), 2 * PAGE as u64).unwrap();
        w.page(1, &[0; PAGE]).unwrap();
        assert!(w.page(1, &[0; PAGE]).is_err());
        assert!(w.page(2, &[0; PAGE]).is_err());
        assert!(DeltaWriter::new(Vec::new(), 100).is_err());
        let mut past = delta(1, &[(0, 1)]);
        // Rewrite the size field to 0 pages: block 0 is then past it.
        past[8..16].copy_from_slice(&0u64.to_le_bytes());
        assert!(DeltaReader::new(&past[..]).is_err());
        // A partial base page.
        assert!(run(&[1u8; PAGE + 5], &[delta(2, &[])]).is_err());
    }
}
