//! The S3 driver: a repository in a bucket of an S3-compatible object store (AWS,
//! Garage, MinIO, ...), through the AWS SDK for Rust (SigV4, retries, timeouts).
//!
//! What a filesystem gives and S3 does not, and how each guarantee still holds
//! (docs/repository-format.md, section "Object storage"):
//! - durability: a PUT, or a multipart completion, is durable when acknowledged;
//! - no replace: names of WAL files and objects carry their content's hash, so a
//!   second writer of one name writes the same bytes, and wal-push lists the name
//!   again after writing; other names (locks, manifests) are created through a claim
//!   handshake ([`S3Storage`]'s `exclusive`) instead of the `If-None-Match` that some
//!   stores (Garage 2.x) ignore;
//! - bounded waits: every request has a connect and an attempt timeout and bounded
//!   retries with backoff; a download has a bound between chunks.
//!
//! Files: `options` (what the driver is told), `client` (runtime, SDK client, errors),
//! `driver` (the trait), `file` (uploads and downloads).

mod client;
mod driver;
mod file;
mod options;
mod trait_impl;

pub use driver::S3Storage;
pub use file::PART_SIZE;
pub use options::{S3Credentials, S3Options};
