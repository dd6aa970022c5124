//! Layers: a [`Storage`](super::Storage) around any driver, adding one cross-cutting
//! behaviour and passing the rest through, so every driver gets it the same way.

mod dry_run;
mod encrypted;

pub use dry_run::DryRun;
pub use encrypted::Encrypted;
