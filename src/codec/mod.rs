//! Stored-file filters: hashing (plain or keyed) and compression, each a
//! pass-through `Read` or `Write` adapter, stacked in one place (`pipeline`) the same
//! way for every command.
//!
//! - `hash`: SHA-256 and byte counts of what passes ([`HashWriter`], [`HashReader`],
//!   [`CountWriter`], [`CountReader`]).
//! - `compress`: the algorithms ([`Compression`], [`Codec`]) and their filters
//!   ([`Encoder`], [`Decoder`]).
//! - `pipeline`: the write and read stacks ([`WriteStack`], [`ReadStack`]) and the
//!   entry points commands call ([`encode`], [`encode_pipelined`], [`decode`],
//!   [`hash`]).

mod compress;
mod hash;
mod pipeline;

pub use compress::{Codec, Compression, Decoder, Encoder};
pub use hash::{
    is_sha256_hex, ContentHash, CountReader, CountWriter, HashReader, HashWriter, Hashed,
};
pub use pipeline::{
    decode, encode, encode_pipelined, hash, ReadStack, StreamStats, WriteStack, BUF_SIZE,
};

// Last: the architecture check reads a file only up to its test module.
#[cfg(test)]
mod tests;
