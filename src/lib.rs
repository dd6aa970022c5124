//! pgcellar: a PostgreSQL backup and WAL-archive suite.
//!
//! The binaries (`wal-push`, `wal-get`, `pgcellar`, ...) are thin shells over this
//! library. Modules by concern:
//!
//! - [`wal`]: WAL file names and the segment page header.
//! - [`codec`]: streaming compression + SHA-256.
//! - [`storage`]: the storage trait and its drivers.
//! - [`repo`]: the repository layout and registration of servers.
//! - [`archive`]: pushing and getting WAL files.
//! - [`lookahead`] and [`prefetch`]: the speed-ups of `wal-push` and `wal-get`.
//! - [`config`]: settings from flags, environment and file.
//! - [`pg`]: connections to PostgreSQL.
//! - [`retry`]: bounded retries of transient (network) failures.
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
pub mod error;
pub mod names;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod storage;
pub mod util;
pub mod wal;

pub use error::{Error, ErrorKind, Result};
