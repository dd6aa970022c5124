//! The configuration file (TOML): every key optional, unknown keys refused. Only
//! the resolvers of this folder read it.

use crate::codec::Compression;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The configuration file. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Repository URL.
    pub repo: Option<String>,
    /// Server name.
    pub server: Option<String>,
    /// Data directory.
    pub pgdata: Option<PathBuf>,
    /// libpq connection string.
    pub conninfo: Option<String>,
    /// Compression algorithm for new files.
    pub compression: Option<Compression>,
    /// Compression level.
    pub compression_level: Option<i32>,
    /// SSH private key.
    pub ssh_identity: Option<PathBuf>,
    /// SSH known_hosts file.
    pub ssh_known_hosts: Option<PathBuf>,
    /// Accept and remember an unknown (never a changed) SSH host key.
    pub ssh_accept_new_host_key: Option<bool>,
    /// Seconds to wait for an SSH connection.
    pub ssh_connect_timeout: Option<u64>,
    /// Seconds to wait for any single SSH read or write.
    pub ssh_io_timeout: Option<u64>,
    /// S3 endpoint URL.
    pub s3_endpoint: Option<String>,
    /// S3 signing region.
    pub s3_region: Option<String>,
    /// S3 path-style addressing.
    pub s3_path_style: Option<bool>,
    /// Allow a plain-HTTP S3 endpoint.
    pub s3_allow_http: Option<bool>,
    /// S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (keep the file 0600), or
    pub s3_secret_access_key: Option<String>,
    /// a file holding it.
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// S3 session token of temporary credentials, or
    pub s3_session_token: Option<String>,
    /// a file holding it.
    pub s3_session_token_file: Option<PathBuf>,
    /// File holding the passphrase of an encrypted repository.
    pub passphrase_file: Option<PathBuf>,
    /// Key file of an encrypted repository.
    pub key_file: Option<PathBuf>,
    /// Seconds to wait for a connection to the S3 store.
    pub s3_connect_timeout: Option<u64>,
    /// Seconds one S3 request attempt may take.
    pub s3_request_timeout: Option<u64>,
    /// How many times wal-push/wal-get retry a transient failure.
    pub retries: Option<u32>,
    /// wal-push: how many other `.ready` segments one call may push ahead (0 = off).
    pub push_lookahead: Option<u32>,
    /// wal-push: threads pushing in parallel during a look-ahead batch.
    pub push_parallel: Option<u32>,
    /// wal-push: local directory for look-ahead records (never inside pg_wal or the repository).
    pub wal_status_dir: Option<PathBuf>,
    /// wal-get: how many following segments one call may prefetch (0 = off).
    pub prefetch: Option<u32>,
    /// wal-get: threads fetching in parallel.
    pub prefetch_parallel: Option<u32>,
    /// wal-get: local spool directory for prefetched segments (outside the data directory).
    pub spool_dir: Option<PathBuf>,
    /// wal-get: upper bound of the spool's size in bytes.
    pub spool_max_bytes: Option<u64>,
    /// Parallel workers of base-backup and restore (default: number of cores).
    pub jobs: Option<usize>,
    /// Seconds without a heartbeat after which a repository lock is stale whoever holds it.
    pub lock_stale_after: Option<u64>,
    /// Seconds base-backup waits for the WAL of a backup to reach the repository.
    pub backup_wal_timeout: Option<u64>,
    /// Retention policy of `expire`/`cron`: `REDUNDANCY n` or `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`.
    pub retention: Option<String>,
    /// Fewest backups `expire` and `delete` may leave (default 0).
    pub minimum_redundancy: Option<u32>,
    /// `check` is CRITICAL when the newest backup is older than this (`n HOURS|DAYS|WEEKS`).
    pub last_backup_maximum_age: Option<String>,
    /// Seconds `check` and `switch-wal --wait` wait for a switched segment to be archived.
    pub archive_wait_timeout: Option<u64>,
    /// Seconds after which a backup directory without a manifest counts as aborted.
    pub aborted_backup_max_age: Option<u64>,
    /// Write a local repository even when running as root.
    pub allow_root: Option<bool>,
}

impl FileConfig {
    /// Read and parse a configuration file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read configuration file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| e.context(format!("configuration file {}", path.display())))
    }

    /// Parse configuration text.
    pub fn parse(text: &str) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line.
            Error::config(e.to_string().replace('\n', " ").trim().to_string())
        })
    }
}

/// The repository and server a configuration file names (`repo`, `server`), for
/// `check`'s reading of another command's `--config`.
pub fn repo_and_server(path: &Path) -> Result<(Option<String>, Option<String>)> {
    let f = FileConfig::load(path)?;
    Ok((f.repo, f.server))
}
