//! `pgcellar check`: is this server's backup chain healthy right now?
//!
//! Every check yields a status; the worst one is the result. The order is fixed and
//! the names are stable (scripts and `--json` consumers match on them). A check
//! that cannot run because an earlier one failed is `unknown`, never `ok`.
//!
//! One file per concern: the report and its statuses, the run in that fixed order,
//! the checks of the running cluster, of `archive_command`, of the stream, of the backups in the
//! repository, and the rendering.

mod archive_command;
mod backups;
mod cluster;
mod render;
mod report;
mod run;
mod stream;

pub use archive_command::{parse_push_command, PushTarget};
pub use render::{render, render_nagios};
pub use report::{failed_report, Check, CheckReport, Metrics, Status};
pub use run::run;
