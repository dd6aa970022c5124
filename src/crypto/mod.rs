//! Encryption at rest (DESIGN.md section 8): the repository's keys (`keys`) and the
//! stored-file cipher (`stream`). Everything comes from the RustCrypto crates
//! (`aes-gcm` with the `aead` STREAM construction, `argon2`, `hkdf`, `hmac`);
//! nothing here is a cipher of our own. The storage layer `storage::layer::Encrypted`
//! applies the cipher to every file; `codec::Digest` applies the name key.
//! Below `repo` and `storage`: it imports neither (only `error` and `util`).

pub mod keys;
pub mod stream;

pub use keys::{Argon2Cost, RepoKeys, Secret, SubKey, WrappedKey, KEY_FILE};
