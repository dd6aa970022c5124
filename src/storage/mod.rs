//! Where repository bytes live: one small trait, and a local, an SSH and an S3 driver.
//!
//! Every path given to a [`Storage`] is relative to the repository root and is checked
//! by [`check_path`], so nothing built from user or repository input can leave the
//! repository. Writes are atomic and durable by default: a temporary name in the
//! target directory, fsync, then rename (or link, when the final name must not be
//! replaced), then an fsync of the directory.
//!
//! A driver says what it can do beyond the common operations in [`Capabilities`];
//! the repository needs nothing an object store lacks (no hard links, no directory
//! renames), so the same code serves every backend.
//! Cross-cutting behaviour wraps any driver as a [`layer`] (e.g. [`layer::DryRun`]).
//! Drivers take their own options ([`StorageOptions`]), never the program's settings.
//!
//! Files: `api` (the trait and its types), `path` (path checks), `local`, `ssh/` and
//! `s3/` (the drivers), `layer/` (wrappers around any driver), `url` (repository URLs).
//! Drivers and layers import `api` and `path`, never this facade, so no module here
//! imports one that imports it back.

mod api;
pub mod layer;
pub mod local;
mod path;
pub mod s3;
pub mod ssh;
pub mod url;

pub use api::{AtomicFile, Capabilities, Committed, DirEntry, FileInfo, Overwrite, Storage};
pub use local::LocalStorage;
pub use path::{check_final_name, check_path, join, split_path};
pub use s3::{S3Options, S3Storage};
pub use ssh::{SshOptions, SshStorage};
pub use url::RepoUrl;

use crate::error::Result;

pub use crate::util::TEMP_PREFIX;

/// What opening a repository's storage needs, whichever driver its URL names.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Whether a local repository may be written while running as root (see
    /// [`LocalStorage::refusing_root_writes`]).
    pub allow_root: bool,
    /// How to reach an `ssh://` repository.
    pub ssh: SshOptions,
    /// How to reach an `s3://` repository.
    pub s3: S3Options,
}

/// Open the storage a repository URL points to.
pub fn open_with(url: &RepoUrl, options: &StorageOptions) -> Result<Box<dyn Storage>> {
    match url {
        RepoUrl::Local(path) => {
            let local = LocalStorage::new(path.clone());
            Ok(Box::new(if options.allow_root {
                local
            } else {
                local.refusing_root_writes()
            }))
        }
        RepoUrl::Ssh { .. } => Ok(Box::new(SshStorage::open(url, &options.ssh)?)),
        RepoUrl::S3 { .. } => Ok(Box::new(S3Storage::open(url, &options.s3)?)),
    }
}
