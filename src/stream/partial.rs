//! The segment `receive-wal` is still receiving, kept in the repository as
//! `<server>/stream/<segment>.partial-<sha256>.<ext>`.
//!
//! These copies live apart from `<server>/wal/`: a streamed partial changes every
//! interval, while a name in the archive holds one content for ever (and PostgreSQL's
//! own `.partial` after a promotion may differ from ours past the switch point). Each
//! refresh is written under its new hash before the older copies of that segment are
//! removed, so a crash leaves the old copy, the new one, or both, never neither.
//! `wal-get` never reads here; only `restore` does, to put the newest partial into
//! `pg_wal` where PostgreSQL looks for a segment its archive does not have.

use crate::archive::{self, parse_stored_name, stored_name, StoredWal};
use crate::codec::{self, Codec};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::{layout, ServerInfo};
use crate::storage::{self, Committed, Overwrite, Storage, TEMP_PREFIX};
use crate::wal::{self, Segment, WalKind, WalName};
use std::path::Path;

/// Every streamed partial stored for `server`, in no particular order.
pub fn list(storage: &dyn Storage, server: &str) -> Result<Vec<StoredWal>> {
    let dir = layout::stream_dir(server);
    let entries = match storage.list(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for e in entries {
        if e.is_dir || e.name.starts_with(TEMP_PREFIX) {
            continue;
        }
        if let Some((name, sha256, compression)) = parse_stored_name(&e.name) {
            if name.kind() == WalKind::Partial {
                found.push(StoredWal {
                    name,
                    sha256,
                    compression,
                    path: storage::join(&dir, &e.name),
                    stored_size: e.size,
                });
            }
        }
    }
    Ok(found)
}

/// The segment a partial's name stands for.
pub fn segment_of(p: &StoredWal) -> Option<Segment> {
    p.name.segment()
}

/// The partial furthest along: highest timeline, then highest segment.
pub fn newest(partials: &[StoredWal], segment_size: u64) -> Option<&StoredWal> {
    partials.iter().max_by_key(|p| {
        segment_of(p)
            .map(|s| (s.timeline, s.number(segment_size)))
            .unwrap_or((0, 0))
    })
}

/// Offset just past the last non-zero byte of a partial's bytes: where the WAL it
/// holds ends, to within the zeros its last record may end with.
pub fn received_len(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// What storing one refresh did.
#[derive(Debug, Clone)]
pub struct StoredPartial {
    /// The partial's name (`<segment>.partial`).
    pub name: WalName,
    /// Offset just past the last non-zero byte: how much WAL the copy holds.
    pub received: u64,
    /// Where it went.
    pub path: String,
}

/// Store the spool's partial at `path` (checked against the registration like any
/// segment), then remove older copies of the same segment.
pub fn store(
    storage: &dyn Storage,
    server: &ServerInfo,
    path: &Path,
    codec: Codec,
) -> Result<StoredPartial> {
    let bytes = std::fs::read(path).io_context(|| format!("reading {}", path.display()))?;
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = WalName::parse(base)?;
    let head = &bytes[..bytes.len().min(wal::LONG_PAGE_HEADER_LEN)];
    archive::check_source(&name, bytes.len() as u64, head, server)?;
    // pg_receivewal pads the file to a whole segment with zeros; the last non-zero
    // byte is where the received WAL ends (to a page or so).
    let received = received_len(&bytes);
    let dir = layout::stream_dir(&server.name);
    storage.create_dir_all(&dir)?;
    let mut out = storage.create(&dir)?;
    let mut input: &[u8] = &bytes;
    let stats = codec::encode_pipelined(&storage.content_hash(), &[], &mut input, &mut out, codec)
        .map_err(|e| {
            Error::io(
                format!("storing {} into {}", path.display(), storage.location()),
                e,
            )
        })?;
    let final_name = stored_name(&name, &stats.sha256, codec.compression);
    let full = storage::join(&dir, &final_name);
    // The same name is the same content: a copy already there is this refresh.
    match out.commit(&final_name, Overwrite::IfAbsent)? {
        Committed::Created | Committed::AlreadyExists => {}
    }
    for old in list(storage, &server.name)? {
        if old.name == name && old.path != full {
            remove(storage, &old)?;
        }
    }
    Ok(StoredPartial {
        name,
        received,
        path: full,
    })
}

/// Remove the streamed copies of `segment` (its complete segment is archived now).
pub fn remove_superseded(storage: &dyn Storage, server: &str, segment: &WalName) -> Result<()> {
    for p in list(storage, server)? {
        if p.name.segment_part() == segment.segment_part() {
            remove(storage, &p)?;
        }
    }
    Ok(())
}

fn remove(storage: &dyn Storage, p: &StoredWal) -> Result<()> {
    match storage.remove_file(&p.path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Decode the streamed partial `p` into `dest` (a segment name in `pg_wal`), verified
/// against its stored hash before it gets that name.
pub fn fetch(storage: &dyn Storage, p: &StoredWal, dest: &Path) -> Result<u64> {
    Ok(archive::fetch_verified(storage, p, dest)?.0)
}
