//! The servers of a repository: `init` registers one from its running cluster,
//! `servers` lists them with their backup and WAL counts.

use crate::archive::timeline::ArchiveIndex;
use crate::archive::StoredWal;
use crate::config::Settings;
use crate::crypto::Argon2Cost;
use crate::error::Result;
use crate::pg;
use crate::repo::manifest;
use crate::repo::{now_rfc3339, Creation, Repository, ServerInfo};
use serde::Serialize;

/// What `init` found and did.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// Whether the repository root was created now.
    pub created_repo: bool,
    /// Whether the server was registered now (false: it already was, same cluster).
    pub registered: bool,
    /// The registration.
    pub server: ServerInfo,
}

/// Create the repository if needed (encrypted when `encrypt`, with a passphrase
/// stretched at `cost`) and register the server from the running cluster.
pub fn init(settings: &Settings, encrypt: bool, cost: Argon2Cost) -> Result<InitOutcome> {
    let name = settings.server_name()?.to_string();
    // Connect first: a typo in --conninfo should not leave an empty repository behind.
    let mut client = pg::connect(settings.conninfo.as_deref())?;
    let id = pg::identity(&mut client)?;
    let create = Creation {
        encrypt: match encrypt {
            true => Some(super::key::secret_or_prompt(
                settings,
                "new repository passphrase",
                true,
            )?),
            false => None,
        },
        cost,
    };
    let (repo, created_repo) = Repository::open_or_create(settings, create)?;
    let info = ServerInfo {
        name,
        system_identifier: id.system_id.to_string(),
        pg_version_num: id.version_num,
        pg_major: id.major(),
        wal_segment_size: id.wal_segment_size,
        block_size: id.block_size,
        registered: now_rfc3339(),
    };
    let registered = repo.register_server(&info)?;
    let server = repo.server(&info.name)?;
    Ok(InitOutcome {
        created_repo,
        registered,
        server,
    })
}

/// One server of a repository (`pgcellar servers`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    /// Server name.
    pub name: String,
    /// System identifier (decimal string).
    pub system_identifier: String,
    /// PostgreSQL major version.
    pub pg_major: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Number of complete backups.
    pub backups: usize,
    /// Id of the newest complete backup.
    pub newest_backup: Option<String>,
    /// Number of stored WAL files (segments, history, partial and backup files).
    pub wal_files: usize,
    /// Bytes of stored WAL files.
    pub wal_stored_size: u64,
}

/// Names of the servers registered in the repository, sorted.
pub fn server_names(repo: &Repository) -> Result<Vec<String>> {
    repo.server_names()
}

/// Every server in the repository with its backup and WAL counts.
pub fn servers(settings: &Settings) -> Result<Vec<ServerSummary>> {
    let repo = Repository::open(settings)?;
    let storage = repo.storage();
    let mut out = Vec::new();
    for name in server_names(&repo)? {
        let info = repo.server(&name)?;
        let ids = manifest::list_ids(storage, &name)?;
        let index = ArchiveIndex::scan(storage, &name, info.wal_segment_size)?;
        out.push(ServerSummary {
            name,
            system_identifier: info.system_identifier,
            pg_major: info.pg_major,
            wal_segment_size: info.wal_segment_size,
            backups: ids.len(),
            newest_backup: ids.last().map(ToString::to_string),
            wal_files: index.file_count(),
            wal_stored_size: all_wal(&index).map(|w| w.stored_size).sum(),
        });
    }
    Ok(out)
}

fn all_wal(index: &ArchiveIndex) -> impl Iterator<Item = &StoredWal> {
    index
        .segments
        .values()
        .flat_map(|m| m.values())
        .chain(index.histories.values())
        .chain(index.others.iter())
}
