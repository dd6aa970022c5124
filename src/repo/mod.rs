//! The repository: its layout, its small JSON files, the registration of servers,
//! backup manifests and the one-writer lock. A facade: the modules below import each
//! other directly, never this file.

pub mod json;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod objects;
mod server;
pub mod status;

pub use json::{now_rfc3339, parse_json, read_small, to_json, MAX_SMALL_FILE};
pub use server::{Creation, Repository, RootEncryption, RootFile, ServerInfo, FORMAT, ROOT_FILE};
