//! Pushing one WAL file in: checked against the registration, compressed into a
//! temporary file, committed durably, and never replacing what is archived.

use super::refusal::{record_refusal, REFUSED_DIFFERENT_CONTENT, REFUSED_INVALID_SEGMENT};
use super::stored::{lookup, short, stored_name, StoredWal};
use crate::codec::{self, Codec, ContentHash};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::repo::{layout, Repository, ServerInfo};
use crate::storage::{self, AtomicFile, Committed, Overwrite, Storage};
use crate::wal::{self, SegmentExpectation, WalKind, WalName};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file was compressed and stored.
    Stored {
        /// Content id of the original (its SHA-256, keyed when encrypted).
        sha256: String,
        /// Plain SHA-256 of the original.
        content_sha256: String,
        /// Original size.
        size: u64,
        /// Stored size.
        stored_size: u64,
    },
    /// An identical copy was already archived; nothing was written.
    AlreadyArchived {
        /// Content id of the original (its SHA-256, keyed when encrypted).
        sha256: String,
        /// Plain SHA-256 of the original.
        content_sha256: String,
    },
}

/// A WAL file opened for archiving, with its name validated and header checked.
pub struct WalSource {
    /// The validated name.
    pub name: WalName,
    /// Source path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    file: File,
    head: Vec<u8>,
}

impl WalSource {
    /// Open `path`, validate its name and, for segments, its size and page header.
    pub fn open(path: &Path, server: &ServerInfo) -> Result<WalSource> {
        let src = WalSource::open_unchecked(path)?;
        check_source(&src.name, src.size, &src.head, server)?;
        Ok(src)
    }

    /// Open `path` and validate its name; the header is read but checked only by
    /// [`check_source`], once the server's registration is known.
    pub fn open_unchecked(path: &Path) -> Result<WalSource> {
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(format!("{} has no usable file name", path.display())))?;
        let name = WalName::parse(base)?;
        let mut file = File::open(path).io_context(|| format!("opening {}", path.display()))?;
        let size = file
            .metadata()
            .io_context(|| format!("stat {}", path.display()))?
            .len();
        let mut head = Vec::new();
        if matches!(name.kind(), WalKind::Segment | WalKind::Partial) {
            head.resize(wal::LONG_PAGE_HEADER_LEN, 0);
            let n = crate::util::read_full(&mut file, &mut head)
                .io_context(|| format!("reading {}", path.display()))?;
            head.truncate(n);
        }
        Ok(WalSource {
            name,
            path: path.to_path_buf(),
            size,
            file,
            head,
        })
    }

    /// Content id (`how`) and plain SHA-256 of the whole file (used when a copy may
    /// already be archived), from wherever an interrupted encoder left the read position.
    pub fn hash(&mut self, how: &ContentHash) -> Result<(String, String)> {
        self.file
            .seek(SeekFrom::Start(self.head.len() as u64))
            .io_context(|| format!("reading {}", self.path.display()))?;
        let (sha, _) = codec::hash(&ContentHash::Sha256, &self.head, &mut self.file)
            .io_context(|| format!("reading {}", self.path.display()))?;
        let id = how.id_of_sha256(&sha).unwrap_or_default();
        Ok((id, sha))
    }
}

/// Refuse a segment (or partial) whose size or page header does not belong to `server`.
pub fn check_source(name: &WalName, size: u64, head: &[u8], server: &ServerInfo) -> Result<()> {
    if matches!(name.kind(), WalKind::Segment | WalKind::Partial) {
        let expect = SegmentExpectation {
            system_id: server.system_id()?,
            segment_size: server.wal_segment_size,
            major: server.pg_major,
        };
        if let wal::MagicCheck::NewerThanKnown(magic) =
            wal::check_segment(name, size, head, &expect)?
        {
            // Archiving must go on after an upgrade to a major newer than this build;
            // what that leaves unchecked goes to the server log with every call.
            crate::log_warn!(
                "{name}: PostgreSQL {} is newer than this pgcellar knows (up to {}): page \
                 magic {magic:#06X} was only checked to be newer than {}'s; system \
                 identifier, segment size and page address were checked; upgrade pgcellar",
                server.pg_major,
                wal::NEWEST_KNOWN_MAJOR,
                wal::NEWEST_KNOWN_MAJOR
            );
        }
    }
    Ok(())
}

/// Archive the WAL file at `path` for `server`, durably, never replacing history.
pub fn push(
    repo: &Repository,
    server: &ServerInfo,
    path: &Path,
    codec: Codec,
) -> Result<PushOutcome> {
    let mut src = WalSource::open_unchecked(path)?;
    if let Err(e) = check_source(&src.name, src.size, &src.head, server) {
        return Err(refused_source(repo.storage(), &server.name, &src.name, e));
    }
    push_source(repo.storage(), server, &mut src, codec)
}

/// Where a push's bytes go, decided by one directory listing.
pub enum Destination {
    /// Nothing is archived under the name yet: write here.
    New(Box<dyn AtomicFile>),
    /// Copies already archived under the name (compare, never overwrite).
    Existing(Vec<StoredWal>),
}

/// Look the name up and, when it is not archived yet, start the temporary file.
pub fn prepare(storage: &dyn Storage, server: &ServerInfo, name: &WalName) -> Result<Destination> {
    let existing = lookup(storage, &server.name, name)?;
    if !existing.is_empty() {
        return Ok(Destination::Existing(existing));
    }
    let dir = layout::wal_dir(&server.name, name);
    storage.create_dir_all(&dir)?;
    Ok(Destination::New(storage.create(&dir)?))
}

/// Archive an opened source; shared by the direct and look-ahead paths.
pub fn push_source(
    storage: &dyn Storage,
    server: &ServerInfo,
    src: &mut WalSource,
    codec: Codec,
) -> Result<PushOutcome> {
    let mut out = match prepare(storage, server, &src.name)? {
        Destination::Existing(existing) => {
            // Only hash: compressing would waste time on a file we will not store.
            let (id, sha) = src.hash(&storage.content_hash())?;
            return compare_existing(&server.name, &src.name, &id, &sha, &existing, storage);
        }
        Destination::New(out) => out,
    };
    let stats = codec::encode_pipelined(
        &storage.content_hash(),
        &src.head,
        &mut src.file,
        &mut out,
        codec,
    )
    .map_err(|e| archiving_error(src, storage, e))?;
    finish(storage, server, src, out, stats, codec)
}

/// Archive the WAL file at `path` while the repository is still being opened.
///
/// Opening an SSH repository costs a handshake (tens of milliseconds, mostly on the
/// server). `open` runs on a second thread while this one already reads, hashes and
/// compresses; up to [`OVERLAP_BUFFER`] bytes of compressed output wait in memory
/// until the temporary file exists. The header is checked against the registration
/// and the name looked up before anything is written, exactly as in [`push_source`].
/// Returns the opened repository and registration for further work.
pub fn push_overlapped(
    path: &Path,
    codec: Codec,
    open: impl FnOnce() -> Result<(Repository, ServerInfo)> + Send,
) -> Result<(PushOutcome, Repository, ServerInfo)> {
    let mut src = WalSource::open_unchecked(path)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Destination>(1);
    let (encoded, opened) = std::thread::scope(|s| {
        let (name, size, head) = (&src.name, src.size, &src.head);
        let opener = s.spawn(move || -> Result<(Repository, ServerInfo)> {
            let (repo, server) = open()?;
            if let Err(e) = check_source(name, size, head, &server) {
                return Err(refused_source(repo.storage(), &server.name, name, e));
            }
            // A send error means the encoder already failed; its error is reported.
            let _ = tx.send(prepare(repo.storage(), &server, name)?);
            Ok((repo, server))
        });
        // A local repository answers within a millisecond: then nothing is buffered,
        // and a file that is archived already is only hashed, never compressed.
        let state = match rx.recv_timeout(std::time::Duration::from_millis(2)) {
            Ok(Destination::New(out)) => SinkState::Writing(out),
            Ok(Destination::Existing(existing)) => SinkState::Existing(existing),
            Err(_) => SinkState::Waiting(Vec::new()),
        };
        let mut sink = DeferredSink { rx, state };
        let mut encoded = match sink.state {
            SinkState::Existing(_) => Err(already_archived()),
            // The key is not known yet: hash plain, and key the digest once it is.
            _ => codec::encode_pipelined(
                &ContentHash::Sha256,
                &src.head,
                &mut src.file,
                &mut sink,
                codec,
            ),
        };
        if encoded.is_ok() {
            // The last byte was compressed before the repository answered: wait for it.
            if let Err(e) = sink.poll(true) {
                encoded = Err(e);
            }
        }
        let opened = opener
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("the repository opener panicked")));
        ((encoded, sink.state), opened)
    });
    // The opener's error (unreachable repository, foreign segment) explains any
    // failure of the encoder, which then only saw a closed channel.
    let (repo, server) = opened?;
    let storage = repo.storage();
    // In an encrypted repository the name carries the keyed id of the SHA-256 just
    // taken (docs/repository-format.md, 9B.3), so the encoder did not need the key.
    let encoded = match encoded {
        (Ok(mut stats), state) => {
            stats.sha256 = storage
                .content_hash()
                .id_of_sha256(&stats.content_sha256)
                .unwrap_or_default();
            (Ok(stats), state)
        }
        other => other,
    };
    let outcome = match encoded {
        (Ok(stats), SinkState::Writing(out)) => finish(storage, &server, &src, out, stats, codec)?,
        (Ok(stats), SinkState::Existing(existing)) => compare_existing(
            &server.name,
            &src.name,
            &stats.sha256,
            &stats.content_sha256,
            &existing,
            storage,
        )?,
        (Err(_), SinkState::Existing(existing)) => {
            // The sink stopped the encoder: a copy exists, so only the hash matters.
            let (id, sha) = src.hash(&storage.content_hash())?;
            compare_existing(&server.name, &src.name, &id, &sha, &existing, storage)?
        }
        (Err(e), _) => return Err(archiving_error(&src, storage, e)),
        (Ok(_), SinkState::Waiting(_)) => {
            return Err(Error::invalid(format!(
                "archiving {}: the repository gave no destination",
                src.path.display()
            )))
        }
    };
    Ok((outcome, repo, server))
}

/// Compressed bytes an overlapped push may hold while the repository opens.
pub const OVERLAP_BUFFER: usize = 4 << 20;

enum SinkState {
    /// No destination yet: compressed bytes so far.
    Waiting(Vec<u8>),
    /// Writing to the temporary file.
    Writing(Box<dyn AtomicFile>),
    /// The name is archived already; the rest of the output is not needed.
    Existing(Vec<StoredWal>),
}

/// The encoder's output until the repository says where it goes.
struct DeferredSink {
    rx: std::sync::mpsc::Receiver<Destination>,
    state: SinkState,
}

impl DeferredSink {
    /// Take the destination if it has arrived (or wait for it when `block`).
    fn poll(&mut self, block: bool) -> io::Result<()> {
        let SinkState::Waiting(buf) = &mut self.state else {
            return Ok(());
        };
        let got = if block {
            self.rx.recv().ok()
        } else {
            match self.rx.try_recv() {
                Ok(d) => Some(d),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        match got {
            // The opener failed; the caller reports its error, not this one.
            None => Err(io::Error::other("the repository could not be opened")),
            Some(Destination::New(mut out)) => {
                out.write_all(buf)?;
                self.state = SinkState::Writing(out);
                Ok(())
            }
            Some(Destination::Existing(existing)) => {
                self.state = SinkState::Existing(existing);
                // Stop compressing a file that will not be stored.
                Err(already_archived())
            }
        }
    }
}

impl Write for DeferredSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.poll(false)?;
        if let SinkState::Waiting(buf) = &self.state {
            if buf.len() + data.len() > OVERLAP_BUFFER {
                self.poll(true)?;
            }
        }
        match &mut self.state {
            SinkState::Waiting(buf) => {
                buf.extend_from_slice(data);
                Ok(data.len())
            }
            SinkState::Writing(out) => out.write(data),
            SinkState::Existing(_) => Err(already_archived()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            SinkState::Writing(out) => out.flush(),
            _ => Ok(()),
        }
    }
}

/// What the sink returns to stop the encoder once the name turned out archived.
fn already_archived() -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, "already archived")
}

fn archiving_error(src: &WalSource, storage: &dyn Storage, e: io::Error) -> Error {
    Error::io(
        format!(
            "archiving {} into {}",
            src.path.display(),
            storage.location()
        ),
        e,
    )
}

/// Check the size, give the temporary file its final name and make sure no different
/// copy appeared concurrently.
fn finish(
    storage: &dyn Storage,
    server: &ServerInfo,
    src: &WalSource,
    out: Box<dyn AtomicFile>,
    stats: codec::StreamStats,
    codec: Codec,
) -> Result<PushOutcome> {
    let name = &src.name;
    if stats.size != src.size {
        return Err(Error::invalid(format!(
            "{} changed size while being archived ({} then {} bytes)",
            src.path.display(),
            src.size,
            stats.size
        )));
    }
    let final_name = stored_name(name, &stats.sha256, codec.compression);
    let dir = layout::wal_dir(&server.name, name);
    // Same final name means same SHA-256: `AlreadyExists` is a concurrent push of
    // identical bytes that committed first. That file is not ours to withdraw.
    let owner = match out.commit(&final_name, Overwrite::IfAbsent)? {
        Committed::Created => Some(storage::join(&dir, &final_name)),
        Committed::AlreadyExists => None,
    };
    settle(storage, &server.name, name, &stats.sha256, owner.as_deref())?;
    Ok(PushOutcome::Stored {
        sha256: stats.sha256,
        content_sha256: stats.content_sha256,
        size: stats.size,
        stored_size: stats.stored_size,
    })
}

/// The one rule that keeps at most one content acknowledged under a WAL name, on
/// every backend (docs/repository-format.md, section 4.1): after our copy is
/// committed, list the name again; acknowledge only if our content is there and no
/// other content is. Otherwise withdraw our copy (when we created it; `own_path`)
/// durably and fail, so PostgreSQL retries. Every path that commits a WAL file
/// (direct, overlapped and look-ahead pushes) ends here, through [`finish`].
pub fn settle(
    storage: &dyn Storage,
    server: &str,
    name: &WalName,
    sha256: &str,
    own_path: Option<&str>,
) -> Result<()> {
    let now = lookup(storage, server, name)?;
    let other = now.iter().find(|s| s.sha256 != sha256);
    let ours = now.iter().any(|s| s.sha256 == sha256);
    match other {
        None if ours => Ok(()),
        None => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{name} vanished from {} right after it was stored (a concurrent push withdrew \
                 it); not acknowledging, PostgreSQL will retry",
                storage.location()
            ),
        )),
        Some(other) => {
            let withdrawn = match own_path {
                Some(path) => {
                    storage.remove_file_synced(path).map_err(|e| {
                        e.context(format!(
                            "{name} was stored concurrently with different content (sha256 {} \
                             there, {} here) and this copy could not be withdrawn; remove \
                             {path} by hand",
                            short(&other.sha256),
                            short(sha256)
                        ))
                    })?;
                    "this copy was withdrawn"
                }
                None => "the identical copy is left to the push that created it",
            };
            let e = Error::new(
                ErrorKind::Conflict,
                format!(
                    "{name} was stored concurrently with different content in {} (sha256 {} \
                     there, {} here); {withdrawn}, nothing is acknowledged. Two clusters may be \
                     archiving under one server name: check --server and the timeline",
                    storage.location(),
                    short(&other.sha256),
                    short(sha256)
                ),
            );
            record_refusal(storage, server, name, REFUSED_DIFFERENT_CONTENT, &e);
            Err(e)
        }
    }
}

fn compare_existing(
    server: &str,
    name: &WalName,
    sha: &str,
    content_sha256: &str,
    existing: &[StoredWal],
    storage: &dyn Storage,
) -> Result<PushOutcome> {
    let Some(other) = existing.iter().find(|s| s.sha256 != sha) else {
        return Ok(PushOutcome::AlreadyArchived {
            sha256: sha.to_string(),
            content_sha256: content_sha256.to_string(),
        });
    };
    let e = Error::new(
        ErrorKind::Conflict,
        format!(
            "{name} is already archived in {} with different content (sha256 {} there, {} here); \
             refusing to overwrite history. If this server was restored or promoted, check \
             --server and the timeline",
            storage.location(),
            short(&other.sha256),
            short(sha)
        ),
    );
    record_refusal(storage, server, name, REFUSED_DIFFERENT_CONTENT, &e);
    Err(e)
}

/// [`record_refusal`] of a file [`check_source`] rejected, returning its error. A
/// registration that cannot be checked against (a configuration error) is not the
/// file's fault and is not recorded.
fn refused_source(storage: &dyn Storage, server: &str, name: &WalName, e: Error) -> Error {
    if e.kind() != ErrorKind::Config {
        record_refusal(storage, server, name, REFUSED_INVALID_SEGMENT, &e);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::refusal::last_refusal;
    use crate::codec::Compression;
    use std::fs;

    #[test]
    fn settle_acknowledges_only_a_lone_copy_and_withdraws_only_its_own() {
        use crate::storage::LocalStorage;
        let root =
            std::env::temp_dir().join(format!("pgcellar-settle-{}", crate::util::temp_name()));
        let st = LocalStorage::new(root.clone());
        let name = WalName::parse("000000010000000000000005").unwrap();
        let dir = layout::wal_dir("main", &name);
        st.create_dir_all(&dir).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let path = |sha: &str| storage::join(&dir, &stored_name(&name, sha, Compression::Zstd));
        let put = |sha: &str| {
            st.write_all(&path(sha), b"x", Overwrite::Never).unwrap();
        };
        // Not stored at all: never acknowledged.
        assert_eq!(
            settle(&st, "main", &name, &a, None).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        put(&a);
        settle(&st, "main", &name, &a, Some(&path(&a))).unwrap();
        put(&b);
        // A writer of b whose file already existed removes nothing.
        assert!(settle(&st, "main", &name, &b, None).is_err());
        assert_eq!(lookup(&st, "main", &name).unwrap().len(), 2);
        // The creator of b withdraws exactly its own copy.
        let msg = settle(&st, "main", &name, &b, Some(&path(&b)))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("withdrawn"), "{msg}");
        let left = lookup(&st, "main", &name).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].sha256, a);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_refusal_is_recorded_and_an_identical_push_records_nothing() {
        use crate::storage::LocalStorage;
        let root =
            std::env::temp_dir().join(format!("pgcellar-refusal-{}", crate::util::temp_name()));
        let st = LocalStorage::new(root.clone());
        st.create_dir_all(&layout::locks_dir("main")).unwrap();
        let name = WalName::parse("000000010000000000000007").unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let existing = vec![StoredWal {
            name: name.clone(),
            sha256: a.clone(),
            compression: Compression::Zstd,
            path: format!("main/wal/0000000100000000/{name}-{a}.zst"),
            stored_size: 1,
        }];
        // The same content again is fine and leaves no record.
        compare_existing("main", &name, &a, &a, &existing, &st).unwrap();
        assert_eq!(last_refusal(&st, "main").unwrap(), None);
        let err = compare_existing("main", &name, &b, &b, &existing, &st).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let rec = last_refusal(&st, "main")
            .unwrap()
            .expect("a refusal record");
        assert_eq!(rec.wal, name.as_str());
        assert_eq!(rec.reason, REFUSED_DIFFERENT_CONTENT);
        assert_eq!(rec.message.as_deref(), Some(err.to_string().as_str()));
        assert_eq!(rec.pid, std::process::id());
        // A repository whose locks directory cannot be written still gets the
        // refusal's own error, unchanged.
        let _ = fs::remove_dir_all(&root);
        fs::write(&root, b"not a directory").unwrap();
        let err = compare_existing("main", &name, &b, &b, &existing, &st).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let _ = fs::remove_file(root);
    }
}
