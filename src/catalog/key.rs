//! `pgcellar init --encrypt`'s secret and `pgcellar key`: rotate the secret that
//! opens an encrypted repository's master key, or generate a key file.

use crate::config::{prompt_passphrase, KeySource, Settings};
use crate::crypto::{keys, Argon2Cost, Secret};
use crate::error::{Error, Result};
use crate::repo::Repository;
use std::path::{Path, PathBuf};

/// Variable that may hold the new passphrase of `pgcellar key rotate`.
pub const NEW_PASSPHRASE_ENV: &str = "PGCELLAR_NEW_PASSPHRASE";

/// The configured secret, or, on a terminal, one typed at a prompt (`what` names it;
/// `twice` asks again to confirm a new one).
pub fn secret_or_prompt(settings: &Settings, what: &str, twice: bool) -> Result<Secret> {
    match settings.key.read()? {
        Some(s) => Ok(s),
        None => prompt_passphrase(what, twice),
    }
}

/// The new secret of a rotation: a new passphrase file, a new key file,
/// `PGCELLAR_NEW_PASSPHRASE`, or a prompt on a terminal.
pub fn new_secret(passphrase_file: Option<&Path>, key_file: Option<&Path>) -> Result<Secret> {
    let source = match (passphrase_file, key_file) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "give one new secret: --new-passphrase-file or --new-key-file, not both",
            ))
        }
        (Some(p), None) => KeySource::PassphraseFile(p.to_path_buf()),
        (None, Some(k)) => KeySource::KeyFile(k.to_path_buf()),
        (None, None) => {
            if let Ok(p) = std::env::var(NEW_PASSPHRASE_ENV) {
                return Secret::passphrase(zeroize::Zeroizing::new(p), NEW_PASSPHRASE_ENV);
            }
            return prompt_passphrase("new passphrase", true);
        }
    };
    source
        .read()?
        .ok_or_else(|| Error::config("no new secret given"))
}

/// Rewrap the repository's master key under `new`; returns the key id.
pub fn rotate(settings: &Settings, new: &Secret, cost: Argon2Cost) -> Result<String> {
    let old = secret_or_prompt(settings, "current passphrase", false)?;
    Repository::rotate_key(settings, &old, new, cost)
}

/// Write a new random key file at `path` (mode 0600), refusing to replace one.
pub fn generate(path: &Path) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let contents = keys::generate_key_file()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::config(format!(
                "cannot create key file {}: {e} (an existing key file is never replaced)",
                path.display()
            ))
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))?;
    Ok(path.to_path_buf())
}
