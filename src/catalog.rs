//! Catalog commands that work on the repository as a whole (`pgcellar init`, ...).

use crate::config::Settings;
use crate::error::Result;
use crate::pg;
use crate::repo::{now_rfc3339, Repository, ServerInfo};

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

/// Create the repository if needed and register the server from the running cluster.
pub fn init(settings: &Settings) -> Result<InitOutcome> {
    let name = settings.server_name()?.to_string();
    // Connect first: a typo in --conninfo should not leave an empty repository behind.
    let mut client = pg::connect(settings.conninfo.as_deref())?;
    let id = pg::identity(&mut client)?;
    let (repo, created_repo) = Repository::open_or_create(settings)?;
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
