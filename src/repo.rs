//! The repository: its layout (one function per kind of path), the root file and the
//! per-server registration. See `docs/repository-format.md`.

use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{self, Overwrite, RepoUrl, Storage};
use crate::wal::WalName;
use serde::{Deserialize, Serialize};

/// The repository format this build reads and writes.
pub const FORMAT: u32 = 1;
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

/// Check a server name: 1-64 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn check_server_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "server name {:?} is not allowed: use 1-64 letters, digits, '_', '-' or '.', \
             starting with a letter or digit",
            crate::wal::truncate_for_display(name)
        )))
    }
}

/// Paths inside the repository. Every repository path is built here.
pub mod layout {
    use super::*;

    /// `<server>/server.json`
    pub fn server_file(server: &str) -> String {
        format!("{server}/server.json")
    }
    /// `<server>/wal`
    pub fn wal_root(server: &str) -> String {
        format!("{server}/wal")
    }
    /// The directory holding `name`: `<server>/wal/<first 16 hex>` or `<server>/wal`.
    pub fn wal_dir(server: &str, name: &WalName) -> String {
        match name.archive_subdir() {
            Some(sub) => format!("{server}/wal/{sub}"),
            None => wal_root(server),
        }
    }
    /// `<server>/backups`
    pub fn backups_dir(server: &str) -> String {
        format!("{server}/backups")
    }
    /// `<server>/locks`
    pub fn locks_dir(server: &str) -> String {
        format!("{server}/locks")
    }
    /// `<server>/backups/<id>` (the id must be validated by the caller).
    pub fn backup_dir(server: &str, id: &str) -> String {
        format!("{server}/backups/{id}")
    }
    /// `<server>/backups/<id>/backup.json`
    pub fn backup_manifest(server: &str, id: &str) -> String {
        format!("{server}/backups/{id}/{}", crate::manifest::MANIFEST_FILE)
    }
    /// `<server>/backups/<id>/keep`: present while the backup is pinned (`pgcellar keep`).
    pub fn backup_keep_marker(server: &str, id: &str) -> String {
        format!("{server}/backups/{id}/keep")
    }
    /// `<server>/locks/check-<token>.tmp`: the probe `pgcellar check` writes and removes.
    pub fn check_probe(server: &str, token: &str) -> String {
        format!("{server}/locks/check-{token}.tmp")
    }
    /// `<server>/locks/<name>.lock`
    pub fn lock_file(server: &str, name: &str) -> String {
        format!("{server}/locks/{name}.lock")
    }
}

/// An open repository.
pub struct Repository {
    storage: Box<dyn Storage>,
    url: RepoUrl,
}

impl Repository {
    /// Open an existing repository, refusing unknown formats.
    pub fn open(settings: &Settings) -> Result<Repository> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, settings)?;
        let repo = Repository { storage, url };
        repo.read_root()?;
        Ok(repo)
    }

    /// Open the repository and read the configured server's registration; a mistyped
    /// `--server` is then a configuration error, never an empty archive.
    pub fn open_server(settings: &Settings) -> Result<(Repository, ServerInfo)> {
        let repo = Repository::open(settings)?;
        let server = repo.server(settings.server_name()?)?;
        Ok((repo, server))
    }

    /// Open a repository, creating its root (0700) and `pgcellar.json` if missing.
    pub fn open_or_create(settings: &Settings) -> Result<(Repository, bool)> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, settings)?;
        let repo = Repository { storage, url };
        match repo.read_root() {
            Ok(_) => Ok((repo, false)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                repo.storage.create_dir_all("")?;
                let root = RootFile {
                    format: FORMAT,
                    created: now_rfc3339(),
                    created_by: format!("pgcellar {}", env!("CARGO_PKG_VERSION")),
                };
                let json = to_json(&root)?;
                repo.storage.write_all(ROOT_FILE, &json, Overwrite::Never)?;
                repo.read_root()?;
                Ok((repo, true))
            }
            Err(e) => Err(e),
        }
    }

    /// The storage driver.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// The repository's URL.
    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    fn read_root(&self) -> Result<RootFile> {
        let bytes = match self.storage.read_all(ROOT_FILE) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "{} is not a pgcellar repository (no {ROOT_FILE}); run 'pgcellar init' first",
                    self.url
                )))
            }
            Err(e) => return Err(e),
        };
        let root: RootFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("{}/{ROOT_FILE} is not valid: {e}", self.url)))?;
        if root.format != FORMAT {
            return Err(Error::config(format!(
                "{} uses repository format {}, but this pgcellar reads only format {FORMAT}; \
                 use a matching pgcellar version",
                self.url, root.format
            )));
        }
        Ok(root)
    }

    /// The registration of `server`, or a clear error if it is not registered.
    pub fn server(&self, server: &str) -> Result<ServerInfo> {
        check_server_name(server)?;
        let path = layout::server_file(server);
        let bytes = match self.storage.read_all(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::config(format!(
                    "server {server:?} is not registered in {}; run 'pgcellar init' for it",
                    self.url
                )))
            }
            Err(e) => return Err(e),
        };
        let info: ServerInfo = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("{}/{path} is not valid: {e}", self.url)))?;
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
        match self.server(&info.name) {
            Ok(existing) => {
                if existing.system_identifier != info.system_identifier {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "server {:?} in {} is registered to database system {}, but this \
                             cluster is {}; refusing to mix clusters (use another --server name)",
                            info.name, self.url, existing.system_identifier, info.system_identifier
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
            Err(e) if e.kind() == ErrorKind::Config => {
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

/// Serialise for the repository: pretty JSON with a trailing newline, readable with `cat`.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::invalid(format!("cannot serialise JSON: {e}")))?;
    v.push(b'\n');
    Ok(v)
}

/// The current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
