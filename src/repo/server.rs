//! The repository as a whole: opening it, its root file, and the registration of
//! each server (`server.json`). See `docs/repository-format.md`.

use super::json::{now_rfc3339, parse_json, read_small, to_json};
use super::layout;
use crate::config::{Settings, PASSPHRASE_ENV};
use crate::crypto::{self, Argon2Cost, RepoKeys, Secret, WrappedKey, KEY_FILE};
use crate::error::{Error, ErrorKind, Result};
use crate::names::check_server_name;
use crate::storage::{self, layer::Encrypted, Overwrite, RepoUrl, Storage};
use serde::{Deserialize, Serialize};

/// The repository format this build reads and writes.
pub const FORMAT: u32 = 2;
/// Name of the root file that marks and versions a repository.
pub const ROOT_FILE: &str = "pgcellar.json";

/// Contents of `pgcellar.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFile {
    /// Format number; readers must refuse one they do not know.
    pub format: u32,
    /// When the repository was created (RFC 3339).
    pub created: String,
    /// Which program created it.
    pub created_by: String,
    /// Present when the repository is encrypted (chosen at creation, never changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<RootEncryption>,
}

/// How an encrypted repository is encrypted (`pgcellar.json`, field `encryption`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootEncryption {
    /// Cipher of stored files.
    pub cipher: String,
    /// How content is named.
    pub names: String,
    /// The file holding the wrapped master key.
    pub key_file: String,
}

const FILE_CIPHER: &str = "aes-256-gcm-stream-be32-64k-hkdf-file-key";
const NAME_HASH: &str = "hmac-sha256-of-sha256";

impl RootEncryption {
    fn current() -> Self {
        RootEncryption {
            cipher: FILE_CIPHER.into(),
            names: NAME_HASH.into(),
            key_file: KEY_FILE.into(),
        }
    }
}

/// What `init` asks of a repository it may create.
pub struct Creation {
    /// Encrypt a new repository with this secret (none: unencrypted).
    pub encrypt: Option<Secret>,
    /// Argon2id cost for a passphrase.
    pub cost: Argon2Cost,
}

impl Creation {
    /// An unencrypted repository.
    pub fn plain() -> Self {
        Creation {
            encrypt: None,
            cost: Argon2Cost::default(),
        }
    }
}

/// Contents of `<server>/server.json`: what the cluster behind a server name is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server name (same as the directory).
    pub name: String,
    /// `pg_control_system().system_identifier`, as a decimal string (JSON numbers lose
    /// precision above 2^53 in many readers).
    pub system_identifier: String,
    /// `server_version_num`, e.g. 150018.
    pub pg_version_num: u32,
    /// Major version, e.g. 15.
    pub pg_major: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Data block size in bytes.
    pub block_size: u32,
    /// When it was registered (RFC 3339).
    pub registered: String,
}

impl ServerInfo {
    /// Check every field a reader computes with; `file` names `server.json` in errors.
    /// A damaged registration must be one clear error here, never a panic (a segment
    /// size of 0 divides by zero) or a wrong answer further on.
    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, why: String| {
            Err(Error::corrupt(format!(
                "{file}: field {field:?} {why}; the server's registration is damaged \
                 (restore server.json from a copy, or re-register with 'pgcellar init')"
            )))
        };
        if let Err(e) = check_server_name(&self.name) {
            return bad("name", format!("is not valid ({e})"));
        }
        match self.system_identifier.parse::<u64>() {
            Ok(n) if n != 0 => {}
            _ => {
                return bad(
                    "system_identifier",
                    format!(
                        "is {:?}, not a non-zero decimal number",
                        crate::names::truncate_for_display(&self.system_identifier)
                    ),
                )
            }
        }
        if let Err(why) = crate::wal::check_segment_size(self.wal_segment_size) {
            return bad("wal_segment_size", why);
        }
        if !(self.block_size.is_power_of_two() && (1024..=32768).contains(&self.block_size)) {
            return bad(
                "block_size",
                format!(
                    "is {}, not a power of two from 1 KiB to 32 KiB",
                    self.block_size
                ),
            );
        }
        if !(1..=99).contains(&self.pg_major) {
            return bad(
                "pg_major",
                format!("is {}, not a PostgreSQL major version", self.pg_major),
            );
        }
        Ok(())
    }

    /// The system identifier as a number.
    pub fn system_id(&self) -> Result<u64> {
        self.system_identifier.parse().map_err(|_| {
            Error::corrupt(format!(
                "server.json of {}: system_identifier {:?} is not a number",
                self.name, self.system_identifier
            ))
        })
    }
}

/// An open repository.
pub struct Repository {
    storage: Box<dyn Storage>,
    url: RepoUrl,
    encrypted: Option<String>,
}

impl Repository {
    /// Open an existing repository, refusing unknown formats; an encrypted one opens
    /// with the configured secret, or not at all.
    pub fn open(settings: &Settings) -> Result<Repository> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, &settings.storage_options())?;
        let root = read_root(storage.as_ref(), &url)?;
        let keys = match (&root.encryption, settings.key.is_set()) {
            (Some(_), _) => {
                let secret = settings.key.read()?.ok_or_else(|| {
                    Error::config(format!(
                        "{url} is encrypted: give its secret with --passphrase-file FILE,                          {PASSPHRASE_ENV} or --key-file FILE (as chosen at 'pgcellar init                          --encrypt' or the last 'pgcellar key rotate')"
                    ))
                })?;
                Some(open_keys(storage.as_ref(), &url, &secret)?)
            }
            (None, true) => {
                return Err(Error::config(format!(
                    "{url} is not encrypted, but a passphrase or key file is configured;                      encryption is chosen when a repository is created: remove the setting,                      or create a new repository with 'pgcellar init --encrypt'"
                )))
            }
            (None, false) => None,
        };
        Ok(Repository::assemble(storage, url, keys))
    }

    fn assemble(storage: Box<dyn Storage>, url: RepoUrl, keys: Option<RepoKeys>) -> Repository {
        match keys {
            Some(keys) => Repository {
                encrypted: Some(keys.key_id.clone()),
                storage: Box::new(Encrypted::new(storage, keys, layout::in_clear)),
                url,
            },
            None => Repository {
                storage,
                url,
                encrypted: None,
            },
        }
    }

    /// The id of the master key of an encrypted repository (not secret).
    pub fn key_id(&self) -> Option<&str> {
        self.encrypted.as_deref()
    }

    /// Open the repository and read the configured server's registration; a mistyped
    /// `--server` is then a configuration error, never an empty archive.
    pub fn open_server(settings: &Settings) -> Result<(Repository, ServerInfo)> {
        let repo = Repository::open(settings)?;
        let server = repo.server(settings.server_name()?)?;
        Ok((repo, server))
    }

    /// Open a repository, creating its root (0700) and `pgcellar.json` if missing
    /// (encrypted when `create.encrypt` holds a secret).
    pub fn open_or_create(settings: &Settings, create: Creation) -> Result<(Repository, bool)> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, &settings.storage_options())?;
        match read_root(storage.as_ref(), &url) {
            Ok(root) => {
                if create.encrypt.is_some() && root.encryption.is_none() {
                    return Err(Error::config(format!(
                        "{url} already exists, unencrypted; encryption is chosen when a                          repository is created: use a new repository for --encrypt"
                    )));
                }
                drop(storage);
                Ok((Repository::open(settings)?, false))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if create.encrypt.is_none() && settings.key.is_set() {
                    return Err(Error::config(format!(
                        "a passphrase or key file is configured but {url} does not exist yet:                          add --encrypt to create it encrypted, or remove the setting"
                    )));
                }
                storage.create_dir_all("")?;
                let (encryption, keys) = match &create.encrypt {
                    Some(secret) => {
                        let (wrapped, keys) = crypto::keys::create(secret, create.cost)?;
                        // The key goes first, the root file last: until the root exists
                        // there is no repository, so a key left by a crash is replaced.
                        storage.write_all(KEY_FILE, &to_json(&wrapped)?, Overwrite::Replace)?;
                        (Some(RootEncryption::current()), Some(keys))
                    }
                    None => (None, None),
                };
                let root = RootFile {
                    format: FORMAT,
                    created: now_rfc3339(),
                    created_by: format!("pgcellar {}", env!("CARGO_PKG_VERSION")),
                    encryption,
                };
                storage.write_all(ROOT_FILE, &to_json(&root)?, Overwrite::Never)?;
                read_root(storage.as_ref(), &url)?;
                Ok((Repository::assemble(storage, url, keys), true))
            }
            Err(e) => Err(e),
        }
    }

    /// Rewrap the master key of the encrypted repository of `settings` under `new`,
    /// opening it with `old`; no stored file changes but `pgcellar.key`, replaced
    /// atomically. Returns the key id, the same before and after.
    pub fn rotate_key(
        settings: &Settings,
        old: &Secret,
        new: &Secret,
        cost: Argon2Cost,
    ) -> Result<String> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, &settings.storage_options())?;
        let root = read_root(storage.as_ref(), &url)?;
        if root.encryption.is_none() {
            return Err(Error::config(format!(
                "{url} is not encrypted; there is no key to rotate"
            )));
        }
        let wrapped = read_wrapped(storage.as_ref(), &url)?;
        let location = url.to_string();
        let rewrapped = crypto::keys::rewrap(&wrapped, old, new, cost, &location)?;
        storage.write_all(KEY_FILE, &to_json(&rewrapped)?, Overwrite::Replace)?;
        // Read back what is stored now: the new secret must open it.
        let keys = open_keys(storage.as_ref(), &url, new)?;
        Ok(keys.key_id)
    }

    /// The storage driver.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The repository's URL.
    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    /// Names of the servers registered in the repository, sorted.
    pub fn server_names(&self) -> Result<Vec<String>> {
        let storage = self.storage.as_ref();
        let mut names = Vec::new();
        for e in storage.list("")? {
            if !e.is_dir || e.name.starts_with(storage::TEMP_PREFIX) {
                continue;
            }
            if check_server_name(&e.name).is_err() {
                continue;
            }
            if storage.stat(&layout::server_file(&e.name))?.is_some() {
                names.push(e.name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The registration of `server`, or a clear error if it is not registered.
    pub fn server(&self, server: &str) -> Result<ServerInfo> {
        check_server_name(server)?;
        let path = layout::server_file(server);
        let bytes = match read_small(self.storage.as_ref(), &path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A typo in --server is the usual cause: name the ones that exist.
                let known = match self.server_names() {
                    Ok(names) if names.is_empty() => "it has no servers yet".to_string(),
                    Ok(names) => format!("its servers are {}", names.join(", ")),
                    Err(_) => "its servers could not be listed".to_string(),
                };
                return Err(Error::new(
                    ErrorKind::NotRegistered,
                    format!(
                        "server {server:?} is not registered in {} ({known}); check --server, \
                         or run 'pgcellar init' to register it",
                        self.url
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let file = format!("{}/{path}", self.url);
        let info: ServerInfo = parse_json(&bytes, &file)?;
        info.validate(&file)?;
        if info.name != server {
            return Err(Error::corrupt(format!(
                "{}/{path} names server {:?}, not {server:?}",
                self.url, info.name
            )));
        }
        Ok(info)
    }

    /// Register `info` under its name. Re-registering the same cluster is harmless;
    /// a different system identifier (or segment size) is refused.
    pub fn register_server(&self, info: &ServerInfo) -> Result<bool> {
        check_server_name(&info.name)?;
        info.validate(&format!("registration of server {:?}", info.name))?;
        match self.server(&info.name) {
            Ok(existing) => {
                if existing.system_identifier != info.system_identifier {
                    // pg_upgrade makes a new system identifier, restarts at timeline 1
                    // and would share timeline history files with the old cluster: a
                    // new name keeps both recoverable.
                    let upgrade = if info.pg_major > existing.pg_major {
                        format!(
                            "; this looks like pg_upgrade from {} to {}: register the upgraded \
                             cluster under a new name (e.g. --server {}-{}), take a full backup \
                             of it, and keep the old server's backups for PostgreSQL {} \
                             (docs/versions.md)",
                            existing.pg_major,
                            info.pg_major,
                            info.name,
                            info.pg_major,
                            existing.pg_major
                        )
                    } else {
                        " (use another --server name)".to_string()
                    };
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "server {:?} in {} is registered to database system {} (PostgreSQL \
                             {}), but this cluster is {} (PostgreSQL {}); refusing to mix \
                             clusters{upgrade}",
                            info.name,
                            self.url,
                            existing.system_identifier,
                            existing.pg_major,
                            info.system_identifier,
                            info.pg_major
                        ),
                    ));
                }
                if existing.wal_segment_size != info.wal_segment_size {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "server {:?} is registered with WAL segment size {}, the cluster reports {}",
                            info.name, existing.wal_segment_size, info.wal_segment_size
                        ),
                    ));
                }
                if existing.pg_major != info.pg_major {
                    // pg_upgrade keeps nothing of the old WAL stream usable; a new name is safer.
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "server {:?} is registered as PostgreSQL {}, the cluster runs {}; \
                             register the upgraded cluster under a new server name",
                            info.name, existing.pg_major, info.pg_major
                        ),
                    ));
                }
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::NotRegistered => {
                for dir in [
                    layout::wal_root(&info.name),
                    layout::backups_dir(&info.name),
                    layout::locks_dir(&info.name),
                ] {
                    self.storage.create_dir_all(&dir)?;
                }
                let json = to_json(info)?;
                self.storage.write_all(
                    &layout::server_file(&info.name),
                    &json,
                    Overwrite::Never,
                )?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

fn read_root(storage: &dyn Storage, url: &RepoUrl) -> Result<RootFile> {
    let bytes = match read_small(storage, ROOT_FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "{} is not a pgcellar repository (no {ROOT_FILE}); run 'pgcellar init' first",
                url
            )))
        }
        Err(e) => return Err(e),
    };
    let root: RootFile = parse_json(&bytes, &format!("{}/{ROOT_FILE}", url))?;
    if root.format == 1 {
        // Format 1 stored hard-linked copies per backup; its backups cannot be read
        // as objects, and converting in place would rewrite every byte.
        return Err(Error::new(
            ErrorKind::UnsupportedFormat,
            format!(
                "{}/{ROOT_FILE}: the repository uses format 1 (hard-linked backup copies), \
                 this pgcellar reads only format {FORMAT}; it cannot be converted in place: \
                 create a new repository with 'pgcellar init' and take a full backup, and keep \
                 the old one with the pgcellar that wrote it until its backups expire",
                url
            ),
        ));
    }
    if root.format != FORMAT {
        return Err(Error::new(
            ErrorKind::UnsupportedFormat,
            format!(
                "{}/{ROOT_FILE}: the repository uses format {}, but this pgcellar reads only \
             format {FORMAT}; use a matching pgcellar version",
                url, root.format
            ),
        ));
    }
    Ok(root)
}

fn read_wrapped(storage: &dyn Storage, url: &RepoUrl) -> Result<WrappedKey> {
    let bytes = read_small(storage, KEY_FILE).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::corrupt(format!(
                "{url} is encrypted but {KEY_FILE} is missing: restore it from your copy \
                 (without it no backup can be read)"
            ))
        } else {
            e
        }
    })?;
    parse_json(&bytes, &format!("{url}/{KEY_FILE}"))
}

fn open_keys(storage: &dyn Storage, url: &RepoUrl, secret: &Secret) -> Result<RepoKeys> {
    let wrapped = read_wrapped(storage, url)?;
    crypto::keys::open(&wrapped, secret, &url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_server() -> serde_json::Value {
        serde_json::json!({
            "name": "main", "system_identifier": "7311497352830427321",
            "pg_version_num": 150018, "pg_major": 15, "wal_segment_size": 1048576,
            "block_size": 8192, "registered": "2026-11-23T19:45:00Z"
        })
    }

    fn parse_server(v: &serde_json::Value) -> Result<ServerInfo> {
        let info: ServerInfo = parse_json(&serde_json::to_vec(v).unwrap(), "R/main/server.json")?;
        info.validate("R/main/server.json")?;
        Ok(info)
    }

    #[test]
    fn damaged_server_files_name_the_file_and_the_field() {
        parse_server(&good_server()).unwrap();
        for (field, value) in [
            ("wal_segment_size", serde_json::json!(0)),
            ("wal_segment_size", serde_json::json!(1u64 << 62)),
            ("wal_segment_size", serde_json::json!(3 << 20)),
            ("wal_segment_size", serde_json::json!(2u64 << 30)),
            ("wal_segment_size", serde_json::json!("16777216")),
            ("wal_segment_size", serde_json::json!(-1)),
            ("wal_segment_size", serde_json::json!(1.5)),
            ("block_size", serde_json::json!(0)),
            ("block_size", serde_json::json!(3000)),
            ("system_identifier", serde_json::json!("abc")),
            ("system_identifier", serde_json::json!("0")),
            ("system_identifier", serde_json::json!(42)),
            ("name", serde_json::json!("../x")),
            ("name", serde_json::json!(null)),
            ("pg_major", serde_json::json!(0)),
        ] {
            let mut v = good_server();
            v[field] = value.clone();
            let msg = parse_server(&v).unwrap_err().to_string();
            assert!(
                msg.contains("R/main/server.json") && msg.contains(&format!("\"{field}\"")),
                "{field}={value}: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        let mut v = good_server();
        v.as_object_mut().unwrap().remove("wal_segment_size");
        let msg = parse_server(&v).unwrap_err().to_string();
        assert!(msg.contains("wal_segment_size"), "{msg}");
        for raw in [
            &b""[..],
            b"  \n",
            b"{",
            b"[1,2]",
            b"\x00\xff garbage",
            b"{\"name\": \"main\"",
        ] {
            let msg = parse_json::<ServerInfo>(raw, "R/main/server.json")
                .unwrap_err()
                .to_string();
            assert!(msg.contains("R/main/server.json"), "{msg}");
        }
    }

    #[test]
    fn the_files_needed_to_open_an_encrypted_repository_stay_in_clear() {
        assert!(layout::in_clear(ROOT_FILE) && layout::in_clear(KEY_FILE));
        assert!(layout::in_clear(&layout::lock_file("main", "server")));
        for path in [
            layout::server_file("main"),
            layout::backup_manifest("main", "20261202T213000"),
            layout::backup_keep_marker("main", "20261202T213000"),
            layout::object_file("main", &"ab".repeat(32), "zst"),
            format!("{}/x", layout::wal_root("main")),
        ] {
            assert!(!layout::in_clear(&path), "{path}");
        }
    }

    #[test]
    fn server_names() {
        for ok in ["main", "db-1", "pg15.prod", "A_b"] {
            check_server_name(ok).unwrap();
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "-x",
            "a b",
            &"x".repeat(65),
            "ü",
        ] {
            assert!(check_server_name(bad).is_err(), "{bad:?}");
        }
    }
}
