//! The S3 driver: the [`Storage`] trait over an S3-compatible bucket.
//!
//! Directories are key prefixes. `create_dir_all` leaves an empty marker object
//! (`dir/`) so that an empty directory exists for `stat` and `list`, as on a
//! filesystem. Hidden from every listing, `.pgcellar-claims/` under the root holds the
//! short-lived claim objects of the exclusive-create handshake (see [`S3Storage::exclusive`]).

use super::client::Conn;
use super::options::S3Options;
use crate::error::{Error, ErrorKind, Result};
use crate::log_debug;
use crate::storage::api::Committed;
use crate::storage::url::RepoUrl;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Directory (under the repository root) of the claims of the exclusive-create handshake.
pub(super) const CLAIMS: &str = ".pgcellar-claims";
/// A claim older than this (by the store's clock) was left by a writer that died
/// between claiming and releasing a name; it no longer blocks anyone.
const CLAIM_STALE: Duration = Duration::from_secs(60);
/// Rounds of the handshake before giving up on a name other writers keep claiming.
const CLAIM_ROUNDS: u32 = 25;

/// A repository in a bucket of an S3-compatible object store.
#[derive(Clone)]
pub struct S3Storage {
    pub(super) conn: Arc<Conn>,
}

/// One listed key: what a listing tells of an object.
pub(super) struct Listed {
    /// Key relative to the listed prefix.
    pub(super) name: String,
    /// Size in bytes.
    pub(super) size: u64,
    /// Last modification, by the store's clock.
    pub(super) mtime: SystemTime,
}

/// Where the bytes of a commit come from.
pub(super) enum Source {
    /// A small file, held in memory: one PUT (`Bytes`, so a PUT shares it, never copies).
    Bytes(Bytes),
    /// A large file, already uploaded (multipart) under this temporary key: one copy.
    Temp(String),
}

impl S3Storage {
    /// Open the bucket of an `s3://` URL. No request is made until the first operation.
    pub fn open(url: &RepoUrl, opts: &S3Options) -> Result<S3Storage> {
        let RepoUrl::S3 { bucket, prefix } = url else {
            return Err(Error::config(format!("{url} is not an s3:// repository")));
        };
        Ok(S3Storage {
            conn: Arc::new(Conn::new(bucket, prefix, opts)?),
        })
    }

    /// Every key directly under `prefix` (`delimiter`) or anywhere below it, and with
    /// `delimiter` the names of the "subdirectories" (common prefixes), paginated.
    pub(super) fn list_keys(
        &self,
        prefix: &str,
        delimiter: bool,
    ) -> Result<(Vec<Listed>, Vec<String>)> {
        let c = &self.conn;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = c
                .client
                .list_objects_v2()
                .bucket(&c.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take());
            if delimiter {
                req = req.delimiter("/");
            }
            let out = c
                .block_on(req.send())
                .map_err(|e| c.error(&format!("listing {prefix:?}"), e))?;
            for o in out.contents() {
                let Some(key) = o.key() else { continue };
                let Some(name) = key.strip_prefix(prefix) else {
                    continue;
                };
                files.push(Listed {
                    name: name.to_string(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    mtime: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            for p in out.common_prefixes() {
                if let Some(name) = p.prefix().and_then(|k| k.strip_prefix(prefix)) {
                    dirs.push(name.trim_end_matches('/').to_string());
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok((files, dirs))
    }

    /// Size and time of an object, or `None` when there is none under `key`.
    pub(super) fn head(&self, key: &str) -> Result<Option<(u64, SystemTime)>> {
        let c = &self.conn;
        match c.block_on(c.client.head_object().bucket(&c.bucket).key(key).send()) {
            Ok(out) => Ok(Some((
                out.content_length()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                out.last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ))),
            Err(e) => {
                let e = c.error(&format!("looking up {key}"), e);
                if e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete one key; a missing key is not an error (S3 answers 204 either way).
    pub(super) fn delete_key(&self, key: &str) -> Result<()> {
        let c = &self.conn;
        c.block_on(c.client.delete_object().bucket(&c.bucket).key(key).send())
            .map_err(|e| c.error(&format!("deleting {key}"), e))?;
        Ok(())
    }

    /// Abort the multipart upload `id` of `key`, dropping the parts already sent.
    pub(super) fn abort_upload(&self, key: &str, id: &str) -> Result<()> {
        let c = &self.conn;
        c.block_on(
            c.client
                .abort_multipart_upload()
                .bucket(&c.bucket)
                .key(key)
                .upload_id(id)
                .send(),
        )
        .map_err(|e| c.error(&format!("aborting the unfinished upload of {key}"), e))?;
        Ok(())
    }

    /// Put `source` under `key`. With `if_absent` the PUT is conditional
    /// (`If-None-Match: *`): a store that honours it answers 412 when the key exists,
    /// reported as [`Committed::AlreadyExists`]; one that ignores it (Garage) replaces.
    pub(super) fn put(&self, key: &str, source: &Source, if_absent: bool) -> Result<Committed> {
        let c = &self.conn;
        let result = match source {
            Source::Bytes(data) => {
                let mut req = c
                    .client
                    .put_object()
                    .bucket(&c.bucket)
                    .key(key)
                    .body(ByteStream::from(data.clone()));
                if if_absent {
                    req = req.if_none_match("*");
                }
                c.block_on(req.send())
                    .map(|_| ())
                    .map_err(|e| c.error(&format!("storing {key}"), e))
            }
            Source::Temp(temp) => c
                .block_on(
                    c.client
                        .copy_object()
                        .bucket(&c.bucket)
                        .copy_source(format!("{}/{temp}", c.bucket))
                        .key(key)
                        .send(),
                )
                .map(|_| ())
                .map_err(|e| c.error(&format!("copying {temp} to {key}"), e)),
        };
        match result {
            Ok(()) => Ok(Committed::Created),
            Err(e) if if_absent && e.kind() == ErrorKind::Conflict => Ok(Committed::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// Create `path` from `source` only if nothing has that name, atomically with
    /// respect to every other pgcellar writer, on a store without conditional writes.
    ///
    /// The handshake: a writer claims the name with an object of its own under
    /// `.pgcellar-claims/<path>/`, then lists the claims. It writes only if its claim
    /// is the only live one and the name is still free, and drops its claim after the
    /// write. S3 listings are strongly consistent after a PUT (AWS since 2020, Garage by
    /// its quorum reads), so of two writers the later to claim sees the earlier's claim;
    /// two that see each other both withdraw and retry after a random pause. A claim
    /// left by a writer that died counts for [`CLAIM_STALE`] only.
    pub(super) fn exclusive(&self, path: &str, source: &Source) -> Result<Committed> {
        let c = &self.conn;
        let key = c.key(path);
        let claims = c.dir_prefix(&format!("{CLAIMS}/{path}"));
        let mine = crate::util::temp_name();
        for round in 0..CLAIM_ROUNDS {
            if self.head(&key)?.is_some() {
                return Ok(Committed::AlreadyExists);
            }
            let claim = format!("{claims}{mine}");
            self.put(&claim, &Source::Bytes(Bytes::new()), false)?;
            let (listed, _) = self.list_keys(&claims, true)?;
            let my_time = listed.iter().find(|l| l.name == mine).map(|l| l.mtime);
            let live_others = listed
                .iter()
                .filter(|l| l.name != mine)
                .any(|l| match my_time {
                    Some(t) => t
                        .duration_since(l.mtime)
                        .map_or(true, |age| age < CLAIM_STALE),
                    None => true,
                });
            if !live_others {
                let result = if self.head(&key)?.is_some() {
                    Ok(Committed::AlreadyExists)
                } else {
                    self.put(&key, source, true)
                };
                if let Err(e) = self.delete_key(&claim) {
                    log_debug!("could not drop claim {claim}: {e}");
                }
                return result;
            }
            self.delete_key(&claim)?;
            std::thread::sleep(backoff(round));
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!(
                "creating {path} in {}: other writers kept claiming the same name; try again",
                c.location
            ),
        ))
    }
}

/// A random pause growing with the round: 20 ms up to about a second.
fn backoff(round: u32) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos ^ std::process::id().rotate_left(16)) % 100;
    Duration::from_millis((20 + 40 * u64::from(round)).min(1000) + jitter)
}
