//! Rebuilding one file of a backup from the objects its manifest entry names.

use super::delta::{apply, DeltaReader};
use super::store::ObjectStore;
use crate::codec::{HashWriter, Hashed, BUF_SIZE};
use crate::error::{Error, Result};
use crate::repo::manifest::FileEntry;
use std::cell::Cell;
use std::io::{self, Write};

/// Write the file `entry` describes into `out`, streaming, and return the SHA-256 and
/// size of what was written. Whether they match the entry is the caller's to judge
/// ([`check_rebuilt`]) before the output counts for anything.
pub fn rebuild(store: &ObjectStore<'_>, entry: &FileEntry, out: &mut dyn Write) -> Result<Hashed> {
    let Some((base, deltas)) = entry.objects.split_first() else {
        return Err(Error::corrupt(format!(
            "the manifest lists no objects for {}",
            entry.path
        )));
    };
    // An error of `out` is the destination's (a full disk, a closed pipe); any other
    // is the objects'.
    let out_failed = Cell::new(false);
    let failed = |e: io::Error| {
        if out_failed.get() {
            return Error::io(format!("writing {}", entry.path), e);
        }
        Error::corrupt(format!(
            "{} is corrupt: it cannot be rebuilt from objects {} of server {} in {}: {e}",
            entry.path,
            entry
                .objects
                .iter()
                .map(|o| o.id.get(..12).unwrap_or(&o.id))
                .collect::<Vec<_>>()
                .join(", "),
            store.server(),
            store.storage().location()
        ))
    };
    let marked = Marked {
        inner: out,
        failed: &out_failed,
    };
    let mut hashed = HashWriter::new(
        io::BufWriter::with_capacity(BUF_SIZE, marked),
        &store.storage().content_hash(),
    );
    let base_in = store.open(base)?;
    let mut readers = Vec::with_capacity(deltas.len());
    for d in deltas {
        readers.push(DeltaReader::new(store.open(d)?).map_err(failed)?);
    }
    apply(base_in, readers, &mut hashed).map_err(failed)?;
    let (mut buffered, written) = hashed.finish();
    buffered
        .flush()
        .map_err(|e| Error::io(format!("writing {}", entry.path), e))?;
    Ok(written)
}

/// A writer that remembers whether it failed.
struct Marked<'w, 'f> {
    inner: &'w mut dyn Write,
    failed: &'f Cell<bool>,
}

impl Write for Marked<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r.as_ref().err());
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r.as_ref().err());
        r
    }
}

impl Marked<'_, '_> {
    fn note(&self, e: Option<&io::Error>) {
        if e.is_some_and(|e| e.kind() != io::ErrorKind::Interrupted) {
            self.failed.set(true);
        }
    }
}

/// The error for a rebuilt file whose size or SHA-256 is not the manifest's, if so.
pub fn check_rebuilt(entry: &FileEntry, got: &Hashed, backup: &str) -> Result<()> {
    if got.sha256 == entry.sha256 && got.size == entry.size {
        return Ok(());
    }
    Err(Error::corrupt(format!(
        "{} of backup {backup} is corrupt: its objects rebuild {} bytes with sha256 {}, the \
         manifest says {} bytes with {}",
        entry.path,
        got.size,
        got.sha256.get(..12).unwrap_or(""),
        entry.size,
        entry.sha256.get(..12).unwrap_or("")
    )))
}
