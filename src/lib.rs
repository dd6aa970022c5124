//! pgcellar: a PostgreSQL backup and WAL-archive suite.
//!
//! The binaries (`wal-push`, `wal-get`, `pgcellar`, ...) are thin shells over this
//! library. The public surface is one module per concern (the code map in README.md
//! says what each may import), plus the error type at the root:
//!
//! - [`archive`]: WAL in the repository: `wal-push` (with look-ahead), `wal-get` (with
//!   prefetch), the archive index and timelines.
//! - [`backup`] and [`restore`]: `base-backup` and `restore`.
//! - [`catalog`]: commands over the whole repository (list, show, keep, check, verify,
//!   expire, delete, cron, switch-wal).
//! - [`repo`]: the repository layout, its JSON files, server registration, manifests
//!   and the one-writer lock.
//! - [`storage`]: the storage trait, its capabilities, drivers and layers.
//! - [`codec`]: the hash and compression filters every stored file passes through.
//! - [`config`]: every setting, resolved once from flags, environment and file.
//! - [`wal`], [`names`], [`pg`], [`util`], [`error`], [`cli`]: the leaves.
//!
//! ```no_run
//! use pgcellar::{archive, config::{CommonArgs, Settings}, repo::Repository};
//! let args = CommonArgs { repo: Some("/srv/pgcellar".into()), server: Some("main".into()), ..Default::default() };
//! let settings = Settings::resolve(&args, None)?;
//! let repo = Repository::open(&settings)?;
//! let server = repo.server(settings.server_name()?)?;
//! archive::push(&repo, &server, "pg_wal/000000010000000000000001".as_ref(), settings.codec)?;
//! # Ok::<(), pgcellar::Error>(())
//! ```
#![deny(missing_docs)]

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod error;
pub mod names;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod storage;
pub mod stream;
pub mod util;
pub mod wal;

pub use error::{Error, ErrorKind, Result};
