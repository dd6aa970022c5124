//! WAL as PostgreSQL writes it: file names, segment positions and LSNs ([`name`]),
//! and the page header that identifies a segment's cluster ([`header`]). A facade.

pub mod header;
pub mod name;

pub use header::*;
pub use name::*;
