//! `restore`: materialise a backup into a data directory and set up recovery.
//!
//! Order of work: check the destination (empty, or `--delta`; no running postmaster),
//! remove `global/pg_control` first (durably) when reusing a directory, create
//! directories with their modes and the tablespace links, write every file under a
//! temporary name with `--jobs` workers, verify its SHA-256 and only then rename it
//! into place, write `backup_label`, `tablespace_map`, the recovery settings and the
//! signal file, and rename `global/pg_control` into place last: a restore that fails
//! or is interrupted at any point leaves a directory PostgreSQL refuses to start.
//!
//! One file per concern: `run.rs` keeps that order; the options, the choice of backup,
//! ownership, the destination directory, the files and the recovery settings each
//! have their own module.

mod choose;
mod dest;
mod files;
mod options;
mod owner;
mod partial;
mod recovery;
mod run;

pub use choose::choose_backup;
pub use options::{
    parse_tablespace_mapping, ArchiveMode, RestoreOptions, RestoreOutcome, Target, TargetAction,
    TimelineTarget,
};
pub use recovery::{restore_command, DISABLED_ARCHIVE_COMMAND};
pub use run::run;
