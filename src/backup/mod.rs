//! `base-backup`: an online, non-exclusive physical backup into the repository.
//!
//! Order of work (each step only after the previous one succeeded):
//! 1. take the server's writer lock;
//! 2. `pg_backup_start` on a session kept open until the end;
//! 3. walk the data directory and tablespaces, store every file with `--jobs`
//!    workers (or hard-link it to the parent backup's copy when unchanged);
//! 4. `pg_backup_stop`, keeping `backup_label` and `tablespace_map`;
//! 5. wait (bounded) until every WAL segment from start to stop is in the repository;
//! 6. write `backup.json` atomically: only now does the backup exist.
//!
//! One file per concern: `run.rs` orchestrates the steps above; the session
//! with PostgreSQL, the walk of the data directory, the storing of files and the wait
//! for WAL each have their own module.

mod options;
mod progress;
mod run;
mod session;
mod store;
mod wal_wait;
mod walk;

pub use options::BackupOptions;
pub use run::run;
pub use store::SAFE_HORIZON_SECS;
pub use wal_wait::{missing_segments, segments_between};
pub use walk::EXCLUDED_CONTENTS;
