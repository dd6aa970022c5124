//! Content-addressed objects: whole files, page deltas and page hashes, stored once
//! under `<server>/objects/` however many backups name them, and the rebuilding of a
//! file from them. A facade: the modules below import each other directly.

mod delta;
mod gc;
mod pages;
mod rebuild;
mod store;

pub use gc::{sweep, Sweep, CLOCK_SLACK};
pub use delta::{apply, DeltaReader, DeltaWriter, PAGE};
pub use pages::{page_hash, PageHash, PageHashes, PAGE_HASH_LEN};
pub use rebuild::{check_rebuilt, rebuild};
pub use store::{ObjectStore, ObjectWriter, Stored};
