//! Catalog commands that work on the repository: `init`, `servers`, `list`, `show`,
//! `keep`, `cat`, `switch-wal`, and the settings they share. Removal (`delete`, `expire`,
//! `cron`) lives in [`crate::catalog::expire`], `check` in [`crate::catalog::check`], `verify` in
//! [`crate::catalog::verify`], `info` in [`crate::catalog::info`], the retention rules in
//! [`crate::catalog::retention`].
//!
//! Each command is one function returning a serialisable report; the `render_*`
//! functions turn reports into the human output (aligned tables), and
//! [`crate::catalog::document`] into the versioned `--json` documents described in
//! `docs/cli-json.md`.
//!
//! This file declares the modules and re-exports their commands: `servers.rs` (`init`,
//! `servers`), `backups.rs` (`list`, `show`, `keep`), `switch.rs` (WAL switch and wait),
//! `cat.rs` (one file of a backup to stdout), `render.rs` (human output). The catalog settings are resolved in
//! [`crate::config::CatalogSettings`].

mod backups;
mod cat;
pub mod check;
pub mod document;
pub mod expire;
pub mod info;
pub mod key;
mod render;
pub mod retention;
mod servers;
mod switch;
pub mod verify;

pub use backups::{
    is_kept, keep, list, show, unfinished_backups, BackupRow, KeepMarker, KeepOutcome, ShowReport,
    Unfinished, WalNeeded,
};
pub use cat::{cat, find_entry, CatOutcome};
pub use render::{human_bytes, render_list, render_servers, render_show, table};
pub use servers::{init, server_names, servers, InitOutcome, ServerSummary};
pub use switch::{switch, switch_wal, wait_archived, SwitchOutcome};
