//! Where the secret of an encrypted repository comes from: a passphrase file, the
//! `PGCELLAR_PASSPHRASE` variable, a key file (flags and their variables first, then
//! the configuration file), or, for `init` and `key rotate` only, a prompt on a
//! terminal. The secret itself never goes on a command line.

use super::args::CommonArgs;
use super::file::FileConfig;
use super::resolve::Layers;
use crate::crypto::Secret;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Variable that may hold the passphrase itself.
pub const PASSPHRASE_ENV: &str = "PGCELLAR_PASSPHRASE";

/// Where the repository secret is configured (not yet read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// None configured.
    #[default]
    None,
    /// A file holding the passphrase.
    PassphraseFile(PathBuf),
    /// `PGCELLAR_PASSPHRASE`.
    PassphraseEnv,
    /// A key file.
    KeyFile(PathBuf),
}

impl KeySource {
    /// Read the secret; `None` when nothing is configured.
    pub fn read(&self) -> Result<Option<Secret>> {
        match self {
            KeySource::None => Ok(None),
            KeySource::PassphraseFile(p) => {
                let text = read_file(p, "passphrase file")?;
                let text = String::from_utf8(text.to_vec()).map_err(|_| {
                    Error::config(format!("passphrase file {} is not UTF-8", p.display()))
                })?;
                Secret::passphrase(Zeroizing::new(text), &p.display().to_string()).map(Some)
            }
            KeySource::PassphraseEnv => {
                let v = std::env::var(PASSPHRASE_ENV)
                    .map_err(|_| Error::config(format!("{PASSPHRASE_ENV} is not valid UTF-8")))?;
                Secret::passphrase(Zeroizing::new(v), PASSPHRASE_ENV).map(Some)
            }
            KeySource::KeyFile(p) => {
                let bytes = read_file(p, "key file")?;
                Secret::key_file(bytes.to_vec(), &p.display().to_string()).map(Some)
            }
        }
    }

    /// Whether a secret is configured.
    pub fn is_set(&self) -> bool {
        *self != KeySource::None
    }

    /// The flags that hand this source to a child command (wal-get in a
    /// `restore_command`), with absolute paths; `None` when it cannot travel on a
    /// command line (the passphrase variable).
    pub fn forward_args(&self) -> Result<Option<Vec<String>>> {
        let abs = |p: &Path| -> Result<String> {
            std::path::absolute(p)
                .map(|a| a.display().to_string())
                .map_err(|e| Error::config(format!("{}: {e}", p.display())))
        };
        Ok(match self {
            KeySource::None => Some(Vec::new()),
            KeySource::PassphraseFile(p) => Some(vec!["--passphrase-file".into(), abs(p)?]),
            KeySource::KeyFile(p) => Some(vec!["--key-file".into(), abs(p)?]),
            KeySource::PassphraseEnv => None,
        })
    }
}

fn read_file(p: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(p).map(Zeroizing::new).map_err(|e| {
        Error::config(format!(
            "cannot read the {what} {}: {e} (it must be readable by the user running \
             this command, e.g. postgres for archive_command)",
            p.display()
        ))
    })
}

/// Resolve the key source: flags and variables over the file; two sources at once
/// are a configuration error, not a guess.
pub(super) fn resolve_key(
    args: &CommonArgs,
    file: &FileConfig,
    layers: Layers<'_>,
) -> Result<KeySource> {
    let env = std::env::var_os(PASSPHRASE_ENV).is_some();
    let from_args = [
        args.passphrase_file.clone().map(KeySource::PassphraseFile),
        env.then_some(KeySource::PassphraseEnv),
        args.key_file.clone().map(KeySource::KeyFile),
    ];
    let mut given: Vec<KeySource> = from_args.into_iter().flatten().collect();
    if given.is_empty() {
        given = [
            file.passphrase_file.clone().map(KeySource::PassphraseFile),
            file.key_file.clone().map(KeySource::KeyFile),
        ]
        .into_iter()
        .flatten()
        .collect();
    }
    match given.len() {
        0 => Ok(KeySource::None),
        1 => Ok(given.remove(0)),
        _ => Err(Error::config(format!(
            "more than one repository secret is configured (passphrase file, \
             {PASSPHRASE_ENV}, key file{}); give exactly one",
            layers
                .config
                .map(|c| format!(", or in {}", c.display()))
                .unwrap_or_default()
        ))),
    }
}

/// Ask for a passphrase on the terminal; `twice` for a new one.
pub fn prompt_passphrase(what: &str, twice: bool) -> Result<Secret> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::config(format!(
            "no {what} given: use --passphrase-file FILE, {PASSPHRASE_ENV} or --key-file FILE \
             (a prompt needs a terminal)"
        )));
    }
    let ask = |prompt: &str| -> Result<Zeroizing<String>> {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| Error::config(format!("reading the {what}: {e}")))
    };
    let first = ask(&format!("{what}: "))?;
    if twice {
        let again = ask(&format!("{what} again: "))?;
        if *first != *again {
            return Err(Error::config(
                "the two passphrases differ; nothing was changed",
            ));
        }
    }
    Secret::passphrase(first, "the terminal")
}
