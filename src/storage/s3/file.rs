//! Writing and reading one object with bounded memory.
//!
//! A file being written is held in memory up to [`PART_SIZE`]; a small file then goes
//! up in one PUT at commit. A larger one becomes a multipart upload to a temporary key
//! as it is written: one part is uploading while the next fills, so reading and
//! compressing overlap the network (at most two parts in memory per writer). It is
//! completed at commit and copied
//! to its final key, which is known only then (content-addressed names), and the
//! temporary key is deleted. An upload abandoned by a crash is aborted by
//! `pgcellar cron` ([`Storage::clean_incomplete_uploads`](crate::storage::Storage)).

use super::client::Conn;
use super::driver::{S3Storage, Source};
use crate::error::{Error, Result};
use crate::log_debug;
use crate::storage::api::{AtomicFile, Committed, Overwrite};
use crate::storage::path::{check_final_name, join};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use std::io::{self, Read, Write};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Size of one part of a multipart upload, and the largest file sent in one PUT.
pub const PART_SIZE: usize = 8 << 20;

/// A multipart upload in progress.
struct Multipart {
    key: String,
    id: String,
    parts: Vec<CompletedPart>,
    /// The part being uploaded, if any.
    inflight: Option<JoinHandle<Result<CompletedPart>>>,
    /// Set once the upload is completed: the temporary object then exists.
    completed: bool,
}

/// An object being written: see the module documentation.
pub(super) struct S3File {
    st: S3Storage,
    dir: String,
    buf: Vec<u8>,
    upload: Option<Multipart>,
    done: bool,
}

impl S3File {
    pub(super) fn new(st: S3Storage, dir: &str) -> S3File {
        S3File {
            st,
            dir: dir.to_string(),
            buf: Vec::new(),
            upload: None,
            done: false,
        }
    }

    fn conn(&self) -> &Conn {
        &self.st.conn
    }

    /// Send the buffer as the next part, starting the upload on the first one.
    fn send_part(&mut self, data: Vec<u8>) -> Result<()> {
        if self.upload.is_none() {
            let key = self.conn().key(&join(&self.dir, &crate::util::temp_name()));
            let c = self.conn();
            let out = c
                .block_on(
                    c.client
                        .create_multipart_upload()
                        .bucket(&c.bucket)
                        .key(&key)
                        .send(),
                )
                .map_err(|e| c.error(&format!("starting the upload of {key}"), e))?;
            let id = out.upload_id().unwrap_or_default().to_string();
            if id.is_empty() {
                return Err(Error::new(
                    crate::ErrorKind::Io,
                    format!("{}: the store gave no upload id for {key}", c.location),
                ));
            }
            self.upload = Some(Multipart {
                key,
                id,
                parts: Vec::new(),
                inflight: None,
                completed: false,
            });
        }
        self.wait_inflight()?;
        let conn = self.st.conn.clone();
        let Some(up) = self.upload.as_mut() else {
            return Ok(());
        };
        let number = i32::try_from(up.parts.len() + 1).unwrap_or(i32::MAX);
        let (key, id) = (up.key.clone(), up.id.clone());
        let task_conn = conn.clone();
        up.inflight = Some(conn.spawn(async move {
            let c = &task_conn;
            let out = c
                .client
                .upload_part()
                .bucket(&c.bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(number)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| c.error(&format!("uploading part {number} of {key}"), e))?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_string))
                .part_number(number)
                .build())
        }));
        Ok(())
    }

    /// Wait for the part in flight, if any, and record it.
    fn wait_inflight(&mut self) -> Result<()> {
        let conn = self.st.conn.clone();
        let Some(up) = self.upload.as_mut() else {
            return Ok(());
        };
        let Some(task) = up.inflight.take() else {
            return Ok(());
        };
        let part = conn.block_on(task).map_err(|e| {
            Error::new(
                crate::ErrorKind::Io,
                format!("{}: uploading a part of {}: {e}", conn.location, up.key),
            )
        })??;
        up.parts.push(part);
        Ok(())
    }

    /// Finish what was written: the bytes, or the key of the completed upload.
    fn finish(&mut self) -> Result<Source> {
        if self.upload.is_none() {
            return Ok(Source::Bytes(Bytes::from(std::mem::take(&mut self.buf))));
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send_part(last)?;
        }
        self.wait_inflight()?;
        crate::util::fault::crash_before_complete();
        let st = self.st.clone();
        let c = &st.conn;
        let Some(up) = self.upload.as_mut() else {
            return Ok(Source::Bytes(Bytes::new()));
        };
        c.block_on(
            c.client
                .complete_multipart_upload()
                .bucket(&c.bucket)
                .key(&up.key)
                .upload_id(&up.id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(up.parts.clone()))
                        .build(),
                )
                .send(),
        )
        .map_err(|e| c.error(&format!("completing the upload of {}", up.key), e))?;
        up.completed = true;
        Ok(Source::Temp(up.key.clone()))
    }

    /// Remove what an unfinished or finished temporary upload left (best effort).
    fn discard(&mut self) {
        // A part still uploading would land after the abort and keep the upload alive.
        if let Err(e) = self.wait_inflight() {
            log_debug!("a part upload failed while discarding: {e}");
        }
        let Some(up) = self.upload.take() else { return };
        let result = if up.completed {
            self.st.delete_key(&up.key)
        } else {
            self.st.abort_upload(&up.key, &up.id)
        };
        if let Err(e) = result {
            log_debug!("could not clean up temporary upload {}: {e}", up.key);
        }
    }
}

impl Write for S3File {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= PART_SIZE {
            let rest = self.buf.split_off(PART_SIZE);
            let part = std::mem::replace(&mut self.buf, rest);
            self.send_part(part).map_err(io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AtomicFile for S3File {
    fn commit(mut self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        check_final_name(final_name)?;
        let path = join(&self.dir, final_name);
        let key = self.conn().key(&path);
        let source = self.finish()?;
        crate::util::fault::crash_before_rename();
        let st = self.st.clone();
        let result = match overwrite {
            Overwrite::Replace => st.put(&key, &source, false),
            // The name is the content's hash: a copy already there holds the same
            // bytes, so a conditional PUT is enough even where it is ignored.
            Overwrite::IfAbsent => st.put(&key, &source, true),
            Overwrite::Never => st.exclusive(&path, &source),
        };
        self.done = true;
        self.discard();
        result
    }
}

impl Drop for S3File {
    fn drop(&mut self) {
        if !self.done {
            self.discard();
        }
    }
}

/// A download, read chunk by chunk as the store sends it.
pub(super) struct S3Reader {
    conn: Arc<Conn>,
    path: String,
    body: ByteStream,
    chunk: Bytes,
}

impl S3Reader {
    pub(super) fn new(conn: Arc<Conn>, path: &str, body: ByteStream) -> S3Reader {
        S3Reader {
            conn,
            path: path.to_string(),
            body,
            chunk: Bytes::new(),
        }
    }
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let wait = self.conn.chunk_timeout;
            let next = self
                .conn
                .block_on(async { tokio::time::timeout(wait, self.body.next()).await });
            match next {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "reading {} from {}: no data for {}s",
                            self.path,
                            self.conn.location,
                            wait.as_secs()
                        ),
                    ))
                }
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => {
                    return Err(io::Error::other(format!(
                        "reading {} from {}: {e}",
                        self.path, self.conn.location
                    )))
                }
                Ok(Some(Ok(b))) => self.chunk = b,
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}
