//! The WAL archive: push one file in, look one up, get one out.

mod get;
pub mod localdir;
pub mod lookahead;
pub mod prefetch;
mod push;
mod refusal;
pub mod spool;
mod stored;
pub mod timeline;

pub use get::{fetch_verified, get, pick_single, write_verified};
pub use push::{
    check_source, prepare, push, push_overlapped, push_source, settle, Destination, PushOutcome,
    WalSource, OVERLAP_BUFFER,
};
pub use refusal::{
    last_refusal, record_refusal, PushRefusal, REFUSED_DIFFERENT_CONTENT, REFUSED_INVALID_SEGMENT,
};
pub use stored::{lookup, parse_stored_name, stored_name, StoredWal};
