//! WAL streaming over a physical replication slot (`pgcellar receive-wal`).
//!
//! PostgreSQL's own pg_receivewal writes the stream into a local spool (`tool`); the
//! receiver moves complete segments into the archive through wal-push's path and keeps
//! the segment in progress in the repository as a streamed partial (`upload`,
//! `partial`), reconnects with backoff and publishes its state (`run`, `status`).
//! `restore` puts the newest partial into `pg_wal`, so recovery reaches the last WAL
//! the stream received.

pub mod partial;
mod run;
pub mod status;
pub mod tool;
mod upload;

pub use run::{check_slot_name, default_spool, receive, ReceiveOptions};
pub use status::{ReceiverState, ReceiverStatus};
pub use upload::{Pass, Uploader};
