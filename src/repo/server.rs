//! The repository as a whole: opening it, its root file, and the registration of
//! each server (`server.json`). See `docs/repository-format.md`.

use super::json::{now_rfc3339, parse_json, read_small, to_json};
use super::layout;
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Result};
use crate::names::check_server_name;
use crate::storage::{self, Overwrite, RepoUrl, Storage};
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
}

impl Repository {
    /// Open an existing repository, refusing unknown formats.
    pub fn open(settings: &Settings) -> Result<Repository> {
        let url = settings.repo_url()?.clone();
        let storage = storage::open_with(&url, &settings.storage_options())?;
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
        let storage = storage::open_with(&url, &settings.storage_options())?;
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
        let bytes = match read_small(self.storage.as_ref(), ROOT_FILE) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "{} is not a pgcellar repository (no {ROOT_FILE}); run 'pgcellar init' first",
                    self.url
                )))
            }
            Err(e) => return Err(e),
        };
        let root: RootFile = parse_json(&bytes, &format!("{}/{ROOT_FILE}", self.url))?;
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
                    self.url
                ),
            ));
        }
        if root.format != FORMAT {
            return Err(Error::new(
                ErrorKind::UnsupportedFormat,
                format!(
                    "{}/{ROOT_FILE}: the repository uses format {}, but this pgcellar reads only \
                 format {FORMAT}; use a matching pgcellar version",
                    self.url, root.format
                ),
            ));
        }
        Ok(root)
    }

    /// The registration of `server`, or a clear error if it is not registered.
    pub fn server(&self, server: &str) -> Result<ServerInfo> {
        check_server_name(server)?;
        let path = layout::server_file(server);
        let bytes = match read_small(self.storage.as_ref(), &path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotRegistered,
                    format!(
                        "server {server:?} is not registered in {}; run 'pgcellar init' for it",
                        self.url
                    ),
                ))
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
