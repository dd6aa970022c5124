//! The WAL archive: push one file in, look one up, get one out.

mod get;
pub mod localdir;
pub mod lookahead;
pub mod prefetch;
mod push;
pub mod spool;
mod stored;
pub mod timeline;

pub use get::{fetch_verified, get, pick_single, write_verified};
pub use push::{
    check_source, prepare, push, push_overlapped, push_source, settle, Destination, PushOutcome,
    WalSource, OVERLAP_BUFFER,
};
pub use stored::{lookup, parse_stored_name, stored_name, StoredWal};
