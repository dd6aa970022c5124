//! `pgcellar info`: one screen per server of the repository (or only the configured
//! one): its backups with what they share, its WAL per timeline with the gaps, how
//! fast WAL arrives and the last archiving failure, a backup in progress, totals.
//!
//! The report is built from the repository alone, plus `pg_stat_archiver` when a
//! conninfo is given. Files: `shares.rs` (what each backup shares with others),
//! `wal.rs` (timeline ranges, gaps, throughput), `activity.rs` (a running backup, the
//! lock, the running cluster), `render.rs` (the screen), `report.rs` (the report's
//! types), `run.rs` (building it). The JSON is documented in
//! `docs/cli-json.md`.

mod activity;
mod render;
mod report;
mod run;
mod shares;
mod wal;

pub use render::render_info;
pub use report::*;
pub use run::info;
