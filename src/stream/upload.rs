//! From the spool into the repository, once per interval: complete segments and
//! `.history` files through wal-push's own path (checked, deduplicated, durable),
//! the segment still being received as a streamed partial.

use super::partial;
use crate::archive::{self, PushOutcome};
use crate::codec::Codec;
use crate::error::{IoContext, Result};
use crate::repo::{Repository, ServerInfo};
use crate::wal::{WalKind, WalName};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the spool held, by kind, in WAL order.
#[derive(Debug, Default)]
struct SpoolFiles {
    history: Vec<(WalName, PathBuf)>,
    segments: Vec<(WalName, PathBuf)>,
    partials: Vec<(WalName, PathBuf)>,
}

fn scan(spool: &Path) -> Result<SpoolFiles> {
    let mut files = SpoolFiles::default();
    for entry in std::fs::read_dir(spool).io_context(|| format!("listing {}", spool.display()))? {
        let entry = entry.io_context(|| format!("listing {}", spool.display()))?;
        let Some(base) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // pg_receivewal's temporary files (`*.tmp`) and ours do not parse as WAL names.
        let Ok(name) = WalName::parse(&base) else {
            continue;
        };
        let path = entry.path();
        match name.kind() {
            WalKind::History => files.history.push((name, path)),
            WalKind::Segment => files.segments.push((name, path)),
            WalKind::Partial => files.partials.push((name, path)),
            WalKind::Backup => {}
        }
    }
    for v in [&mut files.history, &mut files.segments, &mut files.partials] {
        v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    }
    Ok(files)
}

/// What one pass stored.
#[derive(Debug, Default, Clone)]
pub struct Pass {
    /// Complete segments and history files newly in the repository this pass.
    pub archived: Vec<String>,
    /// Errors, one line each (the files stay in the spool and are tried again).
    pub errors: Vec<String>,
}

/// The spool's uploader; remembers what it already stored so a pass that finds
/// nothing new costs one directory listing.
pub struct Uploader<'a> {
    repo: &'a Repository,
    server: &'a ServerInfo,
    codec: Codec,
    spool: PathBuf,
    /// Complete segments kept in the spool and already archived.
    archived: HashSet<String>,
    /// Partials stored, with the modification time and size they had.
    stored_partials: HashMap<String, (SystemTime, u64)>,
    /// Newest complete segment archived.
    pub last_segment: Option<String>,
    /// The newest partial in the repository and the LSN its WAL reaches.
    pub partial: Option<(String, u64)>,
}

/// Where the received WAL ends: past the last non-zero byte of the copy, or at
/// `written` (what pg_receivewal had written, sampled before the copy was read) when
/// that lies further on in the same segment. The zeros a record may end with would
/// otherwise leave an idle server a few bytes "ahead" of the repository forever.
fn received_end(estimate: u64, segment_end: u64, written: Option<u64>) -> u64 {
    match written {
        Some(w) if w > estimate && w <= segment_end => w,
        _ => estimate,
    }
}

impl<'a> Uploader<'a> {
    /// An uploader for `spool`.
    pub fn new(repo: &'a Repository, server: &'a ServerInfo, codec: Codec, spool: &Path) -> Self {
        Uploader {
            repo,
            server,
            codec,
            spool: spool.to_path_buf(),
            archived: HashSet::new(),
            stored_partials: HashMap::new(),
            last_segment: None,
            partial: None,
        }
    }

    /// One pass over the spool. `written` is the position pg_receivewal had written
    /// before the pass began, when the server said. Fails only when the spool cannot
    /// be listed.
    pub fn pass(&mut self, written: Option<u64>) -> Result<Pass> {
        let files = scan(&self.spool)?;
        let mut pass = Pass::default();
        let storage = self.repo.storage();
        // History first: recovery needs a timeline's history before its segments.
        for (name, path) in &files.history {
            match archive::push(self.repo, self.server, path, self.codec) {
                Ok(outcome) => {
                    if matches!(outcome, PushOutcome::Stored { .. }) {
                        pass.archived.push(name.to_string());
                    }
                    // pg_receivewal fetches a missing history file again when it needs it.
                    remove_quietly(path);
                }
                Err(e) => pass.errors.push(format!("{name}: {e}")),
            }
        }
        let newest_segment = files.segments.last().map(|(n, _)| n.to_string());
        for (name, path) in &files.segments {
            if !self.archived.contains(name.as_str()) {
                match archive::push(self.repo, self.server, path, self.codec) {
                    Ok(outcome) => {
                        if matches!(outcome, PushOutcome::Stored { .. }) {
                            pass.archived.push(name.to_string());
                        }
                        self.archived.insert(name.to_string());
                        self.last_segment = Some(name.to_string());
                        if let Err(e) = partial::remove_superseded(storage, &self.server.name, name)
                        {
                            pass.errors
                                .push(format!("removing the partial of {name}: {e}"));
                        }
                    }
                    Err(e) => {
                        pass.errors.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
            // pg_receivewal resumes after the newest segment in its directory (older
            // servers have no slot position to resume from), so that one stays.
            if Some(name.to_string()) != newest_segment {
                remove_quietly(path);
                self.archived.remove(name.as_str());
            }
        }
        for (name, path) in &files.partials {
            let Ok(meta) = std::fs::metadata(path) else {
                continue; // completed and renamed since the listing
            };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            let start = name
                .segment()
                .and_then(|s| s.start_lsn(self.server.wal_segment_size))
                .unwrap_or(0);
            let segment_end = start + self.server.wal_segment_size;
            if self.stored_partials.get(name.as_str()) == Some(&stamp) {
                // Unchanged since it was stored, so the stored copy holds what the
                // file holds now, which is at least `written`.
                if let Some((n, lsn)) = &mut self.partial {
                    if n.as_str() == name.as_str() {
                        *lsn = received_end(*lsn, segment_end, written);
                    }
                }
                continue;
            }
            match partial::store(storage, self.server, path, self.codec) {
                Ok(stored) => {
                    self.stored_partials.insert(name.to_string(), stamp);
                    let newer = match &self.partial {
                        Some((n, _)) => n.as_str() <= name.as_str(),
                        None => true,
                    };
                    if newer {
                        let end = received_end(start + stored.received, segment_end, written);
                        self.partial = Some((name.to_string(), end));
                    }
                }
                // A partial renamed to its complete name mid-read is the next pass's.
                Err(e) if !path.exists() => crate::log_debug!("{name}: {e}"),
                Err(e) => pass.errors.push(format!("{name}: {e}")),
            }
        }
        self.stored_partials
            .retain(|n, _| files.partials.iter().any(|(p, _)| p.as_str() == n));
        Ok(pass)
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            crate::log_warn!("could not remove {} from the spool: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::received_end;

    #[test]
    fn the_written_position_counts_only_inside_the_segment() {
        // The copy of segment 0/3000000 ends at 0/3017411; the segment at 0/4000000.
        let (copy, end) = (0x301_7411, 0x400_0000);
        // Past the zeros a record ended with: the server's word wins.
        assert_eq!(received_end(copy, end, Some(0x301_7418)), 0x301_7418);
        // Not told, or told less than the copy holds: the copy's own end.
        assert_eq!(received_end(copy, end, None), 0x301_7411);
        assert_eq!(received_end(copy, end, Some(0x301_0000)), 0x301_7411);
        // A position in the next segment says nothing of this copy.
        assert_eq!(received_end(copy, end, Some(0x400_0010)), 0x301_7411);
    }
}
