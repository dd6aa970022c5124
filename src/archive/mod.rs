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
    check_source, last_refusal, prepare, push, push_overlapped, push_source, record_refusal,
    settle, Destination, PushOutcome, PushRefusal, WalSource, OVERLAP_BUFFER,
    REFUSED_DIFFERENT_CONTENT, REFUSED_INVALID_SEGMENT,
};
pub use stored::{lookup, parse_stored_name, stored_name, StoredWal};
