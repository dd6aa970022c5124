//! The settings every binary shares, resolved from flags, environment, the TOML file
//! and defaults, in that order. The settings of one command family (look-ahead,
//! prefetch, catalog) are resolved from these by their sibling modules, when the
//! command that needs them runs, so a bad catalog key never stops `wal-push`.

use super::args::{CommonArgs, CompressionArgs};
use super::compression::resolve_codec;
use super::file::FileConfig;
use super::resolve::Layers;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::storage::{RepoUrl, S3Options, StorageOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Fully resolved settings shared by every binary.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repository location (required by every command that touches it).
    pub repo: Option<RepoUrl>,
    /// Server name.
    pub server: Option<String>,
    /// Data directory.
    pub pgdata: Option<PathBuf>,
    /// libpq connection string.
    pub conninfo: Option<String>,
    /// Codec for new files (wal-push, base-backup).
    pub codec: Codec,
    /// SSH settings.
    pub ssh: SshSettings,
    /// S3 settings (the defaults unless the repository is an `s3://` one).
    pub s3: S3Options,
    /// Retries of transient failures in wal-push/wal-get.
    pub retries: u32,
    /// The file the settings came from, if any (for messages).
    pub config_file: Option<PathBuf>,
    /// Workers and waits of base-backup (and the workers of restore and verify).
    pub backup: BackupSettings,
    /// Time without a heartbeat after which a repository lock is stale whoever holds it.
    pub lock_stale_after: Duration,
    /// Whether a local repository may be written while running as root.
    pub allow_root: bool,
    /// Where the secret of an encrypted repository comes from.
    pub key: super::key::KeySource,
    /// The flags and environment, for the command families resolved later.
    pub(super) args: CommonArgs,
    /// The raw file values, for the same; nothing outside `config` reads them.
    pub(super) file: FileConfig,
}

/// Settings of base-backup's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSettings {
    /// `jobs`: parallel workers of base-backup, restore and verify.
    pub jobs: usize,
    /// `backup_wal_timeout`: how long base-backup waits for the backup's WAL to be archived.
    pub backup_wal_timeout: Duration,
}

impl BackupSettings {
    /// The workers to use: a command's `--jobs` (`PGCELLAR_JOBS`) over `jobs`.
    pub fn workers(&self, flag: Option<usize>) -> usize {
        flag.unwrap_or(self.jobs).max(1)
    }
}

/// SSH connection settings: the SSH driver's own options, resolved here.
pub use crate::storage::SshOptions as SshSettings;

impl Settings {
    /// For an `s3://` repository, the flags that hand this command's S3 options from
    /// its command line and environment to a wal-get that PostgreSQL runs, and whether
    /// the secret is among them: not when it came only from `AWS_SECRET_ACCESS_KEY`,
    /// which can be handed on only through PostgreSQL's own environment (never on a
    /// command line).
    pub fn s3_forward_args(&self) -> Result<(Vec<String>, bool)> {
        if !matches!(self.repo, Some(RepoUrl::S3 { .. })) {
            return Ok((Vec::new(), true));
        }
        let args = super::s3::forward_args(&self.args)?;
        let secret_from_env_only = self.args.s3_secret_access_key_file.is_none()
            && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some();
        Ok((args, !secret_from_env_only))
    }

    /// What the storage drivers need of these settings.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            allow_root: self.allow_root,
            ssh: self.ssh.clone(),
            s3: self.s3.clone(),
        }
    }

    /// Resolve flags/env (already merged by clap) over the file over defaults.
    pub fn resolve(args: &CommonArgs, comp: Option<&CompressionArgs>) -> Result<Settings> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let layers = Layers {
            config: args.config.as_deref(),
        };
        let repo = layers.parsed("repo", args.repo.as_deref(), file.repo.as_deref(), |r| {
            RepoUrl::parse(r)
        })?;
        let server = args.server.clone().or(file.server.clone());
        if let Some(s) = &server {
            crate::names::check_server_name(s)
                .map_err(|e| e.context(layers.origin("server", args.server.is_some())))?;
        }
        let codec = resolve_codec(comp, &file, layers)?;
        let retries = args.retries.or(file.retries).unwrap_or(3);
        // Only an s3:// repository reads the secret (and may fail on its file).
        let s3 = match &repo {
            Some(RepoUrl::S3 { .. }) => super::s3::resolve_s3(args, &file, layers, retries)?,
            _ => S3Options::default(),
        };
        let key = super::key::resolve_key(args, &file, layers)?;
        Ok(Settings {
            key,
            s3,
            repo,
            server,
            pgdata: args.pgdata.clone().or(file.pgdata.clone()),
            conninfo: args.conninfo.clone().or(file.conninfo.clone()),
            codec,
            ssh: SshSettings {
                identity: args.ssh_identity.clone().or(file.ssh_identity.clone()),
                known_hosts: args
                    .ssh_known_hosts
                    .clone()
                    .or(file.ssh_known_hosts.clone()),
                accept_new_host_key: args
                    .ssh_accept_new_host_key
                    .or(file.ssh_accept_new_host_key)
                    .unwrap_or(false),
                connect_timeout: layers.secs(
                    "ssh_connect_timeout",
                    args.ssh_connect_timeout,
                    file.ssh_connect_timeout,
                    10,
                )?,
                io_timeout: layers.secs(
                    "ssh_io_timeout",
                    args.ssh_io_timeout,
                    file.ssh_io_timeout,
                    30,
                )?,
            },
            retries,
            config_file: args.config.clone(),
            // `--jobs` belongs to base-backup and restore; `BackupSettings::workers`
            // lays it over this.
            backup: BackupSettings {
                jobs: layers.positive("jobs", None, file.jobs, default_jobs())?,
                backup_wal_timeout: layers.secs(
                    "backup_wal_timeout",
                    args.backup_wal_timeout,
                    file.backup_wal_timeout,
                    600,
                )?,
            },
            lock_stale_after: layers.secs(
                "lock_stale_after",
                args.lock_stale_after,
                file.lock_stale_after,
                600,
            )?,
            allow_root: args.allow_root || file.allow_root.unwrap_or(false),
            args: args.clone(),
            file,
        })
    }

    /// The repository URL, or an error telling how to set it.
    pub fn repo_url(&self) -> Result<&RepoUrl> {
        self.repo.as_ref().ok_or_else(|| {
            Error::config(
                "no repository given: use --repo, PGCELLAR_REPO or 'repo' in the config file",
            )
        })
    }

    /// Where the value of `key` came from, as named in messages: `--flag`,
    /// `ENV (environment)` when `from_args` (clap took it from a flag or the
    /// environment), else the key in the configuration file.
    pub fn origin(&self, key: &str, from_args: bool) -> String {
        self.layers().origin(key, from_args)
    }

    /// The server name, or an error telling how to set it.
    pub fn server_name(&self) -> Result<&str> {
        self.server.as_deref().ok_or_else(|| {
            Error::config("no server name given: use --server, PGCELLAR_SERVER or 'server' in the config file")
        })
    }

    /// The layers under the flags, for the command families resolved later.
    pub(super) fn layers(&self) -> Layers<'_> {
        Layers {
            config: self.config_file.as_deref(),
        }
    }
}

/// The number of cores, the default for `jobs`.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
