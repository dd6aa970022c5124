//! The integration tests: one binary, one module per area, all sharing `common`.
//!
//! Tests run in parallel threads of this one process. Each uses its own temporary
//! directories, socket directory, ports and sshd; none changes the process
//! environment after the harness sets `PGCELLAR_ALLOW_ROOT` once, and the changes to
//! the host that sshd needs are taken and undone under one lock (common/sshd.rs), so
//! no test has to run alone.

mod common;

mod architecture;

mod backup_restore;
mod catalog;
mod encryption;
mod faults;
mod format2;
mod garage_cluster;
mod gc;
mod info;
mod lookahead;
mod matrix;
mod mistakes;
mod progress;
mod s3;
mod ssh;
mod standby;
mod storage_conformance;
mod stream;
mod summaries;
mod wal_archive;
