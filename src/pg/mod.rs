//! Talking to PostgreSQL: sessions and typed reads of results (`client.rs`), and the
//! WAL summaries of PostgreSQL 17+ that say which blocks changed between two LSNs
//! (`summaries.rs`).

mod client;
mod summaries;

pub use client::{
    column, connect, connect_config, describe, identity, query_error, ClusterIdentity,
};
pub use summaries::{
    blocks_per_segment, relation_file, summarized_changes, BlockChanges, RelChanges, RelKey,
};
