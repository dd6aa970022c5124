//! The last WAL the stream received: the newest streamed partial, put into `pg_wal`
//! under its segment's name when the archive lacks that segment.
//!
//! PostgreSQL asks `restore_command` for each segment and, when the archive says it
//! has none, reads `pg_wal`: so recovery replays the partial's WAL and ends where
//! the stream ended, then starts a new timeline. `wal-get` itself never delivers a
//! streamed partial (PostgreSQL does not ask for one); only this step places it,
//! and only where recovery on the target timeline can use it.

use super::options::{RestoreOptions, TimelineTarget};
use super::owner::Owner;
use crate::archive::{lookup, parse_stored_name};
use crate::error::{ErrorKind, IoContext, Result};
use crate::repo::manifest::Manifest;
use crate::repo::{layout, ServerInfo};
use crate::storage::Storage;
use crate::stream::partial;
use crate::wal::{WalKind, WalName};
use std::path::Path;

/// Place the stream's newest partial in `dest/pg_wal` if recovery to `opts`' target
/// can use it; returns its segment name when placed.
pub(super) fn place_stream_partial(
    storage: &dyn Storage,
    server: &ServerInfo,
    m: &Manifest,
    dest: &Path,
    opts: &RestoreOptions,
    owner: &Owner,
) -> Result<Option<String>> {
    // A standby goes on fetching complete segments; it has no use for a partial.
    if opts.standby {
        return Ok(None);
    }
    let partials = partial::list(storage, &server.name)?;
    let Some(newest) = partial::newest(&partials, server.wal_segment_size) else {
        return Ok(None);
    };
    let Some(seg) = newest.name.segment() else {
        return Ok(None);
    };
    let wanted = match opts.target_timeline {
        Some(TimelineTarget::Id(t)) => t == seg.timeline,
        Some(TimelineTarget::Current) => m.timeline == seg.timeline,
        // latest (PostgreSQL's default): only if no newer timeline branched off since.
        Some(TimelineTarget::Latest) | None => {
            newest_history(storage, &server.name)?.is_none_or(|t| t <= seg.timeline)
        }
    };
    let start = WalName::parse(&m.start_wal)?;
    let before_backup = start.segment().is_some_and(|s| {
        (seg.timeline, seg.number(server.wal_segment_size))
            < (s.timeline, s.number(server.wal_segment_size))
    });
    if !wanted || seg.timeline < m.timeline || before_backup {
        return Ok(None);
    }
    let segment = WalName::parse(&seg.file_name())?;
    if !lookup(storage, &server.name, &segment)?.is_empty() {
        // The complete segment is archived: wal-get delivers it.
        return Ok(None);
    }
    let pg_wal = dest.join("pg_wal");
    let target = pg_wal.join(segment.as_str());
    // Two copies of one segment are a refresh whose predecessor a crash left behind:
    // take the one holding the most WAL, which only their content says.
    let copies: Vec<_> = partials.iter().filter(|p| p.name == newest.name).collect();
    let (mut best, mut most, mut in_place) = (newest, 0, false);
    if copies.len() > 1 {
        for copy in copies {
            partial::fetch(storage, copy, &target)?;
            let bytes =
                std::fs::read(&target).io_context(|| format!("reading {}", target.display()))?;
            let held = partial::received_len(&bytes);
            if held > most {
                (best, most) = (copy, held);
            }
            in_place = std::ptr::eq(best, copy);
        }
    }
    if !in_place {
        partial::fetch(storage, best, &target)?;
    }
    owner.apply(&target)?;
    crate::log_notice!(
        "placed the stream's partial segment {segment} in pg_wal: recovery replays the WAL \
         the stream received last"
    );
    Ok(Some(segment.to_string()))
}

/// The highest timeline with a history file in the archive.
fn newest_history(storage: &dyn Storage, server: &str) -> Result<Option<u32>> {
    let entries = match storage.list(&layout::wal_root(server)) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(entries
        .iter()
        .filter_map(|e| parse_stored_name(&e.name))
        .filter(|(n, _, _)| n.kind() == WalKind::History)
        .map(|(n, _, _)| n.timeline())
        .max())
}
