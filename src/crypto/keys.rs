//! The repository's keys. A random 256-bit master key is made once, at `init`, and
//! never changes; what is stored (`pgcellar.key`) is that key wrapped (encrypted with
//! AES-256-GCM) under a key-encryption key derived from the user's secret and a fresh
//! random salt (so a key-encryption key wraps once, and a random nonce is safe):
//! Argon2id for a passphrase, HKDF-SHA-256 for a key file (already high-entropy, so
//! opening costs nothing per call). Rotation rewraps the same master key under a new
//! secret, so no stored byte is re-encrypted. The keys actually used are derived
//! from the master key with HKDF, one per purpose.

use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Name of the wrapped-key file in the repository root.
pub const KEY_FILE: &str = "pgcellar.key";
/// Shortest key file accepted, in bytes (after a trailing newline is dropped).
pub const MIN_KEY_FILE_BYTES: usize = 32;
const WRAP_AAD: &[u8] = b"pgcellar.key v1 master key";

/// A 256-bit key for one purpose; zeroed when dropped.
#[derive(Clone)]
pub struct SubKey(Arc<Zeroizing<[u8; 32]>>);

impl SubKey {
    /// A key from raw bytes (tests, derivation).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        SubKey(Arc::new(Zeroizing::new(b)))
    }

    /// The raw key.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubKey(..)")
    }
}

/// The keys an open encrypted repository works with.
#[derive(Clone, Debug)]
pub struct RepoKeys {
    /// Encrypts stored files.
    pub data: SubKey,
    /// Keys the HMAC that names stored content.
    pub names: SubKey,
    /// Identifies the master key (not secret): equal before and after a rotation.
    pub key_id: String,
}

impl RepoKeys {
    fn derive(master: &[u8; 32]) -> Result<RepoKeys> {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"pgcellar repository v1"), master);
        let sub = |info: &[u8]| -> Result<SubKey> {
            let mut out = [0u8; 32];
            hk.expand(info, &mut out)
                .map_err(|_| Error::invalid("key derivation failed"))?;
            Ok(SubKey::from_bytes(out))
        };
        let id = sub(b"key id")?;
        Ok(RepoKeys {
            data: sub(b"data")?,
            names: sub(b"names")?,
            key_id: hex::encode(&id.bytes()[..8]),
        })
    }
}

/// The user's secret that opens the master key.
pub enum Secret {
    /// A passphrase (stretched with Argon2id).
    Passphrase(Zeroizing<String>),
    /// The contents of a key file (at least [`MIN_KEY_FILE_BYTES`]).
    KeyFile(Zeroizing<Vec<u8>>),
}

impl Secret {
    /// Read a key file's secret: its bytes without a trailing newline.
    pub fn key_file(bytes: Vec<u8>, file: &str) -> Result<Secret> {
        let mut bytes = Zeroizing::new(bytes);
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_FILE_BYTES {
            return Err(Error::config(format!(
                "key file {file} holds {} bytes; a key file needs at least \
                 {MIN_KEY_FILE_BYTES} random bytes (make one with 'pgcellar key generate FILE')",
                bytes.len()
            )));
        }
        Ok(Secret::KeyFile(bytes))
    }

    /// A passphrase, refusing an empty one.
    pub fn passphrase(mut p: Zeroizing<String>, from: &str) -> Result<Secret> {
        while p.ends_with('\n') || p.ends_with('\r') {
            p.pop();
        }
        if p.is_empty() {
            return Err(Error::config(format!(
                "the passphrase from {from} is empty"
            )));
        }
        Ok(Secret::Passphrase(p))
    }

    fn kind(&self) -> &'static str {
        match self {
            Secret::Passphrase(_) => "passphrase",
            Secret::KeyFile(_) => "key-file",
        }
    }
}

/// Argon2id cost of a new passphrase wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommendation, on one core.
    fn default() -> Self {
        Argon2Cost {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// How the key-encryption key is derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum Kdf {
    /// From a passphrase.
    Argon2id(Argon2Cost),
    /// From a key file.
    HkdfSha256,
}

/// Contents of `pgcellar.key`: the master key, wrapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Format of this file.
    pub version: u32,
    /// What opens it: "passphrase" or "key-file".
    pub wrapped_by: String,
    /// How the key-encryption key is derived from the secret.
    pub kdf: Kdf,
    /// Random salt of the derivation, hex.
    pub salt: String,
    /// Cipher of the wrap.
    pub cipher: String,
    /// Random nonce of the wrap, hex.
    pub nonce: String,
    /// The wrapped master key and its tag, hex.
    pub wrapped_key: String,
    /// Identifies the master key (see [`RepoKeys::key_id`]).
    pub key_id: String,
    /// When this wrap was written (RFC 3339).
    pub written: String,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::invalid(format!("the system has no randomness to offer: {e}")))?;
    Ok(b)
}

fn kek(secret: &Secret, kdf: &Kdf, salt: &[u8], location: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (secret, kdf) {
        (Secret::Passphrase(p), Kdf::Argon2id(c)) => {
            let params =
                argon2::Params::new(c.memory_kib, c.iterations, c.parallelism, Some(32))
                    .map_err(|e| Error::corrupt(format!("{KEY_FILE}: bad Argon2id cost: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), salt, &mut *out)
                .map_err(|e| Error::corrupt(format!("{KEY_FILE}: Argon2id failed: {e}")))?;
        }
        (Secret::KeyFile(k), Kdf::HkdfSha256) => {
            hkdf::Hkdf::<Sha256>::new(Some(salt), k)
                .expand(b"pgcellar key-file kek v1", &mut *out)
                .map_err(|_| Error::invalid("key derivation failed"))?;
        }
        (Secret::Passphrase(_), Kdf::HkdfSha256) => {
            return Err(Error::config(format!(
                "the passphrase given does not open {location}/{KEY_FILE}: it is opened with \
                 a key file (rotated since?); give --key-file FILE"
            )))
        }
        (Secret::KeyFile(_), Kdf::Argon2id(_)) => {
            return Err(Error::config(format!(
                "the key file given does not open {location}/{KEY_FILE}: it is opened with a \
                 passphrase (rotated since?); give --passphrase-file FILE or PGCELLAR_PASSPHRASE"
            )))
        }
    }
    Ok(out)
}

/// A new random master key, wrapped under `secret`; also the keys it gives.
pub fn create(secret: &Secret, cost: Argon2Cost) -> Result<(WrappedKey, RepoKeys)> {
    let master = Zeroizing::new(random::<32>()?);
    let keys = RepoKeys::derive(&master)?;
    Ok((wrap(&master, &keys.key_id, secret, cost)?, keys))
}

fn wrap(master: &[u8; 32], key_id: &str, secret: &Secret, cost: Argon2Cost) -> Result<WrappedKey> {
    let kdf = match secret {
        Secret::Passphrase(_) => Kdf::Argon2id(cost),
        Secret::KeyFile(_) => Kdf::HkdfSha256,
    };
    let salt = random::<32>()?;
    let nonce = random::<12>()?;
    let kek = kek(secret, &kdf, &salt, "the new key")?;
    let wrapped = Aes256Gcm::new((&*kek).into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: master,
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| Error::invalid("wrapping the master key failed"))?;
    Ok(WrappedKey {
        version: 1,
        wrapped_by: secret.kind().to_string(),
        kdf,
        salt: hex::encode(salt),
        cipher: "aes-256-gcm".to_string(),
        nonce: hex::encode(nonce),
        wrapped_key: hex::encode(wrapped),
        key_id: key_id.to_string(),
        written: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn unwrap_master(w: &WrappedKey, secret: &Secret, location: &str) -> Result<Zeroizing<[u8; 32]>> {
    let field = |name: &str, v: &str, len: usize| -> Result<Vec<u8>> {
        hex::decode(v)
            .ok()
            .filter(|b| b.len() == len)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "{location}/{KEY_FILE}: field {name:?} is not {len} bytes of hex; the key \
                     file is damaged (restore it from your copy)"
                ))
            })
    };
    if w.version != 1 || w.cipher != "aes-256-gcm" {
        return Err(Error::new(
            ErrorKind::UnsupportedFormat,
            format!(
                "{location}/{KEY_FILE}: version {} with cipher {:?} is not known to this pgcellar",
                w.version, w.cipher
            ),
        ));
    }
    let salt = field("salt", &w.salt, 32)?;
    let nonce = field("nonce", &w.nonce, 12)?;
    let wrapped = field("wrapped_key", &w.wrapped_key, 48)?;
    let kek = kek(secret, &w.kdf, &salt, location)?;
    let master = Aes256Gcm::new((&*kek).into())
        .decrypt(
            nonce.as_slice().into(),
            Payload {
                msg: &wrapped,
                aad: WRAP_AAD,
            },
        )
        .map_err(|_| {
            Error::config(format!(
                "the {} given does not open {location}/{KEY_FILE}: wrong {}, or the key was \
                 rotated since (use the current one)",
                match secret {
                    Secret::Passphrase(_) => "passphrase",
                    Secret::KeyFile(_) => "key file",
                },
                match secret {
                    Secret::Passphrase(_) => "passphrase",
                    Secret::KeyFile(_) => "key file",
                },
            ))
        })?;
    let master = Zeroizing::new(master);
    let mut out = Zeroizing::new([0u8; 32]);
    if master.len() != 32 {
        return Err(Error::corrupt(format!(
            "{location}/{KEY_FILE}: bad master key length"
        )));
    }
    out.copy_from_slice(&master);
    Ok(out)
}

/// Open the master key in `w` with `secret` and derive the working keys.
pub fn open(w: &WrappedKey, secret: &Secret, location: &str) -> Result<RepoKeys> {
    let master = unwrap_master(w, secret, location)?;
    let keys = RepoKeys::derive(&master)?;
    if keys.key_id != w.key_id {
        return Err(Error::corrupt(format!(
            "{location}/{KEY_FILE}: the key opened, but its id is {} where the file says {}; \
             the key file is damaged",
            keys.key_id, w.key_id
        )));
    }
    Ok(keys)
}

/// Rewrap the master key in `w` under `new`: opening it needs `old`.
pub fn rewrap(
    w: &WrappedKey,
    old: &Secret,
    new: &Secret,
    cost: Argon2Cost,
    location: &str,
) -> Result<WrappedKey> {
    let master = unwrap_master(w, old, location)?;
    let keys = RepoKeys::derive(&master)?;
    wrap(&master, &keys.key_id, new, cost)
}

/// A fresh random key file's contents: 32 random bytes as 64 hex digits and a newline.
pub fn generate_key_file() -> Result<Zeroizing<String>> {
    let b = Zeroizing::new(random::<32>()?);
    Ok(Zeroizing::new(format!("{}\n", hex::encode(*b))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Cost = Argon2Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn pass(p: &str) -> Secret {
        Secret::passphrase(Zeroizing::new(p.to_string()), "test").unwrap()
    }

    #[test]
    fn wrap_open_rotate() {
        let (w, keys) = create(&pass("correct horse"), CHEAP).unwrap();
        let again = open(&w, &pass("correct horse"), "R").unwrap();
        assert_eq!(again.data.bytes(), keys.data.bytes());
        assert_ne!(keys.data.bytes(), keys.names.bytes());
        let msg = open(&w, &pass("wrong"), "R").unwrap_err().to_string();
        assert!(msg.contains("does not open R/pgcellar.key"), "{msg}");

        let file = Secret::key_file(b"0123456789abcdef0123456789abcdef\n".to_vec(), "f").unwrap();
        let w2 = rewrap(&w, &pass("correct horse"), &file, CHEAP, "R").unwrap();
        assert_eq!(w2.kdf, Kdf::HkdfSha256);
        assert_eq!(
            open(&w2, &file, "R").unwrap().names.bytes(),
            keys.names.bytes()
        );
        assert!(open(&w2, &pass("correct horse"), "R").is_err());
        assert!(rewrap(&w, &pass("nope"), &file, CHEAP, "R").is_err());

        let mut bad = w.clone();
        bad.wrapped_key.replace_range(
            0..1,
            if bad.wrapped_key.starts_with('0') {
                "1"
            } else {
                "0"
            },
        );
        assert!(open(&bad, &pass("correct horse"), "R").is_err());
    }

    #[test]
    fn short_key_files_and_empty_passphrases_are_refused() {
        assert!(Secret::key_file(b"short\n".to_vec(), "f").is_err());
        assert!(Secret::passphrase(Zeroizing::new("\n".into()), "env").is_err());
        assert_eq!(generate_key_file().unwrap().len(), 65);
    }
}
