//! Settings from flags, environment, the TOML file and defaults, in that order,
//! resolved here and only here, into one struct per concern.
//!
//! clap already merges flags over environment variables (`#[arg(env)]`); this folder
//! lays the file and the defaults underneath. It may import only `error`, `util`,
//! `names`, `codec` and `storage` (for `RepoUrl`).
//!
//! - `args`: the clap options (common, compression, look-ahead, prefetch);
//! - `file`: the configuration file, read by nothing outside this folder;
//! - `resolve`: the precedence rule and `origin`, naming where a bad value came from;
//! - `settings`: what every binary shares (`Settings`, `BackupSettings`, `SshSettings`);
//! - `compression`: the codec of new stored files;
//! - `push`, `get`, `catalog`: wal-push's look-ahead, wal-get's prefetch, the
//!   catalog commands' keys, resolved when those commands run;
//! - `policy`: the grammar of a retention policy;
//! - `s3`: the S3 driver's options (endpoint, region, credentials, timeouts).

mod args;
mod catalog;
mod compression;
mod file;
mod get;
mod key;
mod policy;
mod push;
mod resolve;
mod s3;
mod settings;

pub use args::{CommonArgs, CompressionArgs, LookaheadArgs, PrefetchArgs};
pub use catalog::{parse_age, CatalogSettings};
pub use file::repo_and_server;
pub use get::{PrefetchSettings, DEFAULT_PARALLEL, DEFAULT_PREFETCH, DEFAULT_SPOOL_MAX};
pub use key::{prompt_passphrase, KeySource, PASSPHRASE_ENV};
pub use policy::{Policy, WindowUnit};
pub use push::{default_parallel, LookaheadSettings, DEFAULT_LOOKAHEAD};
pub use resolve::origin;
pub use settings::{default_jobs, BackupSettings, Settings, SshSettings};

#[cfg(test)]
mod tests;
