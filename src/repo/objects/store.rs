//! Writing and reading content-addressed objects in `<server>/objects/`.
//!
//! An object is written under a temporary name in `objects/`, hashed as it streams,
//! and committed without replacing as `<2 hex>/<id>.<ext>`: its name is known only
//! once its last byte is. An existing name means the same content is already there.

use super::super::layout;
use super::super::manifest::{FileEntry, ObjectRef};
use crate::codec::{Codec, HashReader, HashWriter, Hashed, ReadStack, WriteStack};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{AtomicFile, Committed, Overwrite, Storage};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::Mutex;

/// Largest page-hash object read into memory: the hashes of a 16 GiB file (a relation
/// segment is 1 GiB unless PostgreSQL was built otherwise).
const MAX_PAGE_HASHES: u64 = 32 << 20;

/// The objects of one server.
pub struct ObjectStore<'a> {
    storage: &'a dyn Storage,
    server: String,
    /// Fan-out directories known to exist (created at most once per process).
    made: Mutex<HashSet<String>>,
}

/// An object as committed.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The reference to put in a manifest.
    pub object: ObjectRef,
    /// Whether this write created it (`false`: it existed, nothing was added).
    pub created: bool,
    /// SHA-256 and size of its content.
    pub content: Hashed,
}

impl<'a> ObjectStore<'a> {
    /// The objects of `server` in `storage`.
    pub fn new(storage: &'a dyn Storage, server: &str) -> ObjectStore<'a> {
        ObjectStore {
            storage,
            server: server.to_string(),
            made: Mutex::new(HashSet::new()),
        }
    }

    /// The storage objects live in.
    pub fn storage(&self) -> &'a dyn Storage {
        self.storage
    }

    /// The server whose objects these are.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn ensure_dir(&self, dir: String) -> Result<()> {
        let known = self.made.lock().map(|m| m.contains(&dir)).unwrap_or(false);
        if !known {
            self.storage.create_dir_all(&dir)?;
            if let Ok(mut m) = self.made.lock() {
                m.insert(dir);
            }
        }
        Ok(())
    }

    /// Start writing an object stored with `codec`. Its durability is deferred: the
    /// caller runs [`Storage::sync_deferred`] before a manifest names it.
    pub fn writer(&self, codec: Codec) -> Result<ObjectWriter<'_, 'a>> {
        let dir = layout::objects_dir(&self.server);
        self.ensure_dir(dir.clone())?;
        let file = self.storage.create_deferred(&dir)?;
        let stack = WriteStack::new(file, codec)
            .map_err(|e| Error::io(format!("starting an object in {}", self.where_()), e))?;
        Ok(ObjectWriter {
            store: self,
            codec,
            out: HashWriter::new(stack, &self.storage.content_hash()),
        })
    }

    fn where_(&self) -> String {
        format!(
            "{} of server {} in {}",
            layout::objects_dir(&self.server),
            self.server,
            self.storage.location()
        )
    }

    /// Stream an object's decompressed content. The caller checks the hash (the
    /// reader is wrapped in a [`HashReader`] for that).
    pub fn open(&self, object: &ObjectRef) -> Result<HashReader<ReadStack<Box<dyn Read + Send>>>> {
        let path = object.path(&self.server);
        let raw = match self.storage.open_read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::corrupt(format!(
                    "object {path} is missing from {}",
                    self.storage.location()
                )))
            }
            Err(e) => return Err(e),
        };
        let stack = ReadStack::new(raw, object.compression)
            .map_err(|e| Error::corrupt(format!("object {path} cannot be read: {e}")))?;
        Ok(HashReader::new(stack, &self.storage.content_hash()))
    }

    /// Read a small object whole and check it against its id.
    pub fn read_verified(&self, object: &ObjectRef) -> Result<Vec<u8>> {
        let path = object.path(&self.server);
        let mut r = self.open(object)?.take(MAX_PAGE_HASHES + 1);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| Error::corrupt(format!("object {path} cannot be read: {e}")))?;
        let (inner, hashed) = r.into_inner().finish();
        drop(inner);
        if hashed.sha256 != object.id {
            return Err(Error::corrupt(format!(
                "object {path} in {} is corrupt (its content hashes to {})",
                self.storage.location(),
                &hashed.sha256[..12]
            )));
        }
        Ok(buf)
    }

    /// SHA-256 of an object's decompressed content (streaming).
    pub fn read_hash(&self, object: &ObjectRef) -> Result<String> {
        let path = object.path(&self.server);
        let mut r = self.open(object)?;
        io::copy(&mut r, &mut io::sink())
            .map_err(|e| Error::corrupt(format!("object {path} cannot be read: {e}")))?;
        Ok(r.finish().1.sha256)
    }

    /// Store `bytes` as one object (small contents: page hashes).
    pub fn put(&self, bytes: &[u8], codec: Codec) -> Result<Stored> {
        let mut w = self.writer(codec)?;
        w.write_all(bytes)
            .map_err(|e| Error::io(format!("writing an object in {}", self.where_()), e))?;
        w.finish()
    }

    /// Whether `object` is present with its recorded stored size.
    pub fn check_present(&self, object: &ObjectRef) -> Result<bool> {
        Ok(self
            .storage
            .stat(&object.path(&self.server))?
            .is_some_and(|i| !i.is_dir && i.size == object.stored_size))
    }

    /// Whether every object `entry` references is present (a cheap check before
    /// reusing an entry unread).
    pub fn entry_present(&self, entry: &FileEntry) -> Result<bool> {
        for o in entry.all_objects() {
            if !self.check_present(o)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// An object being written: bytes go in, and [`ObjectWriter::finish`] names it.
pub struct ObjectWriter<'s, 'a> {
    store: &'s ObjectStore<'a>,
    codec: Codec,
    out: HashWriter<WriteStack<Box<dyn AtomicFile>>>,
}

impl Write for ObjectWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl ObjectWriter<'_, '_> {
    /// End the object and commit it under its content's name.
    pub fn finish(self) -> Result<Stored> {
        match self.finish_if(|_| true)? {
            Some(stored) => Ok(stored),
            None => Err(Error::invalid("an object was refused by its own writer")),
        }
    }

    /// End the object and commit it only if `keep` accepts its stored size; `None`
    /// (and no trace in the repository) otherwise.
    pub fn finish_if(self, keep: impl FnOnce(u64) -> bool) -> Result<Option<Stored>> {
        let store = self.store;
        let (stack, content) = self.out.finish();
        let (file, stored_size) = stack
            .finish_sink()
            .map_err(|e| Error::io(format!("writing an object in {}", store.where_()), e))?;
        if !keep(stored_size) {
            // Dropping the uncommitted file removes its temporary name.
            return Ok(None);
        }
        let ext = self.codec.compression.extension();
        let name = layout::object_name(&content.sha256, ext);
        let objects = layout::objects_dir(&store.server);
        store.ensure_dir(format!(
            "{objects}/{}",
            content.sha256.get(..2).unwrap_or("00")
        ))?;
        let mut object = ObjectRef {
            id: content.sha256.clone(),
            compression: self.codec.compression,
            stored_size,
        };
        let path = object.path(&store.server);
        // An existing object is the same content by its name, unless a crash before the
        // writer's sync left it short: its durability came from a sync that an aborted
        // backup may never have reached. A size other than ours is checked by reading.
        let created = match store.storage.stat(&path)? {
            Some(info) if info.size == stored_size => false,
            Some(info) => {
                let mut sound = object.clone();
                sound.stored_size = info.size;
                if store.read_hash(&sound).is_ok_and(|h| h == sound.id) {
                    object.stored_size = info.size;
                    false
                } else {
                    crate::log_warn!(
                        "object {path} in {} is damaged (left by an interrupted backup?): \
                         replacing it",
                        store.storage.location()
                    );
                    file.commit(&name, Overwrite::Replace)?;
                    true
                }
            }
            None => match file.commit(&name, Overwrite::IfAbsent)? {
                Committed::Created => true,
                // Another worker of this backup stored the same content meanwhile.
                Committed::AlreadyExists => {
                    match store.storage.stat(&path)? {
                        Some(info) => object.stored_size = info.size,
                        None => {
                            return Err(Error::new(
                                ErrorKind::Conflict,
                                format!("object {path} vanished while being stored"),
                            ))
                        }
                    }
                    false
                }
            },
        };
        Ok(Some(Stored {
            object,
            created,
            content,
        }))
    }
}
