//! Settings from flags, environment, the TOML file and defaults, in that order.
//!
//! clap already merges flags over environment variables (`#[arg(env)]`); this module
//! lays the file and the defaults underneath.

use crate::codec::{Codec, Compression};
use crate::error::{Error, Result};
use crate::storage::{RepoUrl, StorageOptions};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options every binary accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML)
    #[arg(long, env = "PGCELLAR_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Repository: /abs/path, file:///abs/path or ssh://user@host[:port]/abs/path
    #[arg(long, env = "PGCELLAR_REPO", value_name = "URL", global = true)]
    pub repo: Option<String>,
    /// Server name inside the repository
    #[arg(long, env = "PGCELLAR_SERVER", value_name = "NAME", global = true)]
    pub server: Option<String>,
    /// PostgreSQL data directory
    #[arg(long, env = "PGDATA", value_name = "DIR", global = true)]
    pub pgdata: Option<PathBuf>,
    /// libpq connection string (keyword=value ...); PGHOST/PGPORT/PGUSER also apply
    #[arg(long, env = "PGCELLAR_CONNINFO", value_name = "STR", global = true)]
    pub conninfo: Option<String>,
    /// SSH private key for ssh:// repositories
    #[arg(
        long,
        env = "PGCELLAR_SSH_IDENTITY",
        value_name = "FILE",
        global = true
    )]
    pub ssh_identity: Option<PathBuf>,
    /// known_hosts file used to verify the backup host's key
    #[arg(
        long,
        env = "PGCELLAR_SSH_KNOWN_HOSTS",
        value_name = "FILE",
        global = true
    )]
    pub ssh_known_hosts: Option<PathBuf>,
    /// Accept and remember an unknown (never a changed) SSH host key
    #[arg(
        long,
        env = "PGCELLAR_SSH_ACCEPT_NEW_HOST_KEY",
        value_name = "BOOL",
        global = true
    )]
    pub ssh_accept_new_host_key: Option<bool>,
    /// Seconds to wait for an SSH connection (default 10)
    #[arg(
        long,
        env = "PGCELLAR_SSH_CONNECT_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    pub ssh_connect_timeout: Option<u64>,
    /// Seconds to wait for any single SSH read or write (default 30)
    #[arg(
        long,
        env = "PGCELLAR_SSH_IO_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    pub ssh_io_timeout: Option<u64>,
    /// Retries of a transient (network) failure in wal-push/wal-get (default 3)
    #[arg(long, env = "PGCELLAR_RETRIES", value_name = "N", global = true)]
    pub retries: Option<u32>,
    /// More detail on stderr (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Write a local repository even when running as root (its files then belong to root)
    #[arg(long, env = "PGCELLAR_ALLOW_ROOT", global = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_root: bool,
    /// Seconds without a refresh after which a repository lock is stale (default 600)
    #[arg(
        long,
        env = "PGCELLAR_LOCK_STALE_AFTER",
        value_name = "SECS",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub lock_stale_after: Option<u64>,
    /// Seconds base-backup waits for its WAL to reach the repository (default 600)
    #[arg(
        long,
        env = "PGCELLAR_BACKUP_WAL_TIMEOUT",
        value_name = "SECS",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub backup_wal_timeout: Option<u64>,
    /// Fewest backups expire and delete may leave (default 0)
    #[arg(
        long,
        env = "PGCELLAR_MINIMUM_REDUNDANCY",
        value_name = "N",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub minimum_redundancy: Option<u32>,
    /// check is CRITICAL when the newest backup is older than this ('n HOURS|DAYS|WEEKS')
    #[arg(
        long,
        env = "PGCELLAR_LAST_BACKUP_MAXIMUM_AGE",
        value_name = "AGE",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub last_backup_maximum_age: Option<String>,
    /// Seconds check and switch-wal --wait wait for a switched segment (default 60)
    #[arg(
        long,
        env = "PGCELLAR_ARCHIVE_WAIT_TIMEOUT",
        value_name = "SECS",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub archive_wait_timeout: Option<u64>,
    /// Seconds after which a backup directory without a manifest is aborted (default 3600)
    #[arg(
        long,
        env = "PGCELLAR_ABORTED_BACKUP_MAX_AGE",
        value_name = "SECS",
        global = true,
        help_heading = "Catalog and lock options"
    )]
    pub aborted_backup_max_age: Option<u64>,
}

/// Compression options of the binaries that write stored files.
#[derive(Debug, Clone, Default, Args)]
pub struct CompressionArgs {
    /// Compression: zstd (default), lz4, gzip or none
    #[arg(long, env = "PGCELLAR_COMPRESSION", value_name = "ALGO")]
    pub compression: Option<Compression>,
    /// Compression level (zstd -7..22, default 3; gzip 0..9, default 6)
    #[arg(
        long,
        env = "PGCELLAR_COMPRESSION_LEVEL",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub compression_level: Option<i32>,
}

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
    /// Codec for new files.
    pub codec: Codec,
    /// SSH settings.
    pub ssh: SshSettings,
    /// Retries of transient failures in wal-push/wal-get.
    pub retries: u32,
    /// The file the settings came from, if any (for messages).
    pub config_file: Option<PathBuf>,
    /// The raw file values, for modules that resolve their own flag > env > file keys.
    pub file: FileConfig,
    /// Parallel workers of base-backup and restore.
    pub jobs: usize,
    /// Time without a heartbeat after which a repository lock is stale whoever holds it.
    pub lock_stale_after: Duration,
    /// How long base-backup waits for the backup's WAL to be archived.
    pub backup_wal_timeout: Duration,
    /// Whether a local repository may be written while running as root.
    pub allow_root: bool,
    /// Catalog keys given by flag or environment (they override the file's; the
    /// catalog resolves them with the file in `CatalogSettings`).
    pub catalog_flags: CatalogFlags,
}

/// The catalog settings a flag or the environment gave, before the file's.
#[derive(Debug, Clone, Default)]
pub struct CatalogFlags {
    /// `--minimum-redundancy`.
    pub minimum_redundancy: Option<u32>,
    /// `--last-backup-maximum-age`.
    pub last_backup_maximum_age: Option<String>,
    /// `--archive-wait-timeout`.
    pub archive_wait_timeout: Option<u64>,
    /// `--aborted-backup-max-age`.
    pub aborted_backup_max_age: Option<u64>,
}

/// SSH connection settings: the SSH driver's own options, resolved here.
pub use crate::storage::SshOptions as SshSettings;

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

impl Settings {
    /// What the storage drivers need of these settings.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            allow_root: self.allow_root,
            ssh: self.ssh.clone(),
        }
    }

    /// Resolve flags/env (already merged by clap) over the file over defaults.
    pub fn resolve(args: &CommonArgs, comp: Option<&CompressionArgs>) -> Result<Settings> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let cfg = args.config.as_deref();
        let in_file = |key: &str| origin(key, false, cfg);
        let repo = match (&args.repo, &file.repo) {
            (Some(r), _) => {
                Some(RepoUrl::parse(r).map_err(|e| e.context(origin("repo", true, cfg)))?)
            }
            (None, Some(r)) => Some(RepoUrl::parse(r).map_err(|e| e.context(in_file("repo")))?),
            (None, None) => None,
        };
        let server = args.server.clone().or(file.server.clone());
        if let Some(s) = &server {
            crate::names::check_server_name(s)
                .map_err(|e| e.context(origin("server", args.server.is_some(), cfg)))?;
        }
        let codec = resolve_codec(comp, &file, cfg)?;
        // `flag`: the value given by a flag or the environment, if any.
        let timeout = |flag: Option<u64>, in_file: Option<u64>, default: u64, key: &str| match flag
            .or(in_file)
            .unwrap_or(default)
        {
            0 => Err(Error::config(format!(
                "{}: must be at least 1 second",
                origin(key, flag.is_some(), cfg)
            ))),
            s => Ok(Duration::from_secs(s)),
        };
        Ok(Settings {
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
                connect_timeout: timeout(
                    args.ssh_connect_timeout,
                    file.ssh_connect_timeout,
                    10,
                    "ssh_connect_timeout",
                )?,
                io_timeout: timeout(
                    args.ssh_io_timeout,
                    file.ssh_io_timeout,
                    30,
                    "ssh_io_timeout",
                )?,
            },
            retries: args.retries.or(file.retries).unwrap_or(3),
            config_file: args.config.clone(),
            jobs: match file.jobs {
                Some(0) => {
                    return Err(Error::config(format!(
                        "{}: must be at least 1",
                        in_file("jobs")
                    )))
                }
                Some(n) => n,
                None => default_jobs(),
            },
            lock_stale_after: timeout(
                args.lock_stale_after,
                file.lock_stale_after,
                600,
                "lock_stale_after",
            )?,
            backup_wal_timeout: timeout(
                args.backup_wal_timeout,
                file.backup_wal_timeout,
                600,
                "backup_wal_timeout",
            )?,
            catalog_flags: CatalogFlags {
                minimum_redundancy: args.minimum_redundancy,
                last_backup_maximum_age: args.last_backup_maximum_age.clone(),
                archive_wait_timeout: args.archive_wait_timeout,
                aborted_backup_max_age: args.aborted_backup_max_age,
            },
            allow_root: args.allow_root || file.allow_root.unwrap_or(false),
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
        origin(key, from_args, self.config_file.as_deref())
    }

    /// The server name, or an error telling how to set it.
    pub fn server_name(&self) -> Result<&str> {
        self.server.as_deref().ok_or_else(|| {
            Error::config("no server name given: use --server, PGCELLAR_SERVER or 'server' in the config file")
        })
    }
}

/// Where the value of `key` came from, as error messages name it. clap merges flags
/// and environment before we see them, so a value from either is told apart by
/// whether the flag is on the command line.
pub fn origin(key: &str, from_args: bool, config: Option<&Path>) -> String {
    if from_args {
        let flag = format!("--{}", key.replace('_', "-"));
        let with_value = format!("{flag}=");
        let on_command_line = std::env::args_os().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&with_value))
        });
        let env = env_name(key);
        if !on_command_line && std::env::var_os(&env).is_some() {
            return format!("{env} (environment)");
        }
        return flag;
    }
    match config {
        Some(p) => format!("{key} (from {})", p.display()),
        None => key.to_string(),
    }
}

/// The environment variable behind a setting's flag.
fn env_name(key: &str) -> String {
    match key {
        "pgdata" => "PGDATA".to_string(),
        k => format!("PGCELLAR_{}", k.to_uppercase()),
    }
}

/// Compression and level. A level belongs to the algorithm named beside it: one from
/// the file is ignored when a flag picks another algorithm (the file's `zstd` level
/// 19 means nothing to `--compression gzip`), and lz4/none take none at all, so a
/// shared `compression_level = 3` never makes `--compression lz4` fail.
fn resolve_codec(
    comp: Option<&CompressionArgs>,
    file: &FileConfig,
    cfg: Option<&Path>,
) -> Result<Codec> {
    let flag_compression = comp.and_then(|c| c.compression);
    let compression = flag_compression.or(file.compression).unwrap_or_default();
    let flag_level = comp.and_then(|c| c.compression_level);
    let file_level = file
        .compression_level
        .filter(|_| flag_compression.map_or(true, |c| c == file.compression.unwrap_or_default()));
    if flag_level.is_none() && file_level.is_none() && file.compression_level.is_some() {
        crate::log_info!(
            "compression_level in the configuration file belongs to {}, not {compression}: using {compression}'s default",
            file.compression.unwrap_or_default()
        );
    }
    if matches!(compression, Compression::Lz4 | Compression::None) {
        if let Some(l) = flag_level.or(file_level).filter(|&l| l != 0) {
            crate::log_info!("compression level {l} does not apply to {compression}: ignored");
        }
        return Ok(Codec {
            compression,
            level: 0,
        });
    }
    let level = match (flag_level, file_level) {
        (Some(l), _) => {
            compression
                .check_level(l)
                .map_err(|e| e.context(origin("compression_level", true, cfg)))?;
            l
        }
        (None, Some(l)) => {
            compression
                .check_level(l)
                .map_err(|e| e.context(origin("compression_level", false, cfg)))?;
            l
        }
        (None, None) => compression.default_level(),
    };
    Ok(Codec { compression, level })
}

/// The number of cores, the default for `jobs`.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_cfg(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let f = write_cfg("repo = '/from/file'\nserver = 'filesrv'\ncompression = 'lz4'\n");
        let args = CommonArgs {
            config: Some(f.path().into()),
            repo: Some("/from/flag".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, None).unwrap();
        assert_eq!(s.repo, Some(RepoUrl::Local("/from/flag".into())));
        assert_eq!(s.server.as_deref(), Some("filesrv"));
        assert_eq!(s.codec.compression, Compression::Lz4);
        assert_eq!(s.codec.level, 0);
        let comp = CompressionArgs {
            compression: Some(Compression::Gzip),
            compression_level: None,
        };
        let s = Settings::resolve(&args, Some(&comp)).unwrap();
        assert_eq!(
            s.codec,
            Codec {
                compression: Compression::Gzip,
                level: 6
            }
        );
        let none = Settings::resolve(&CommonArgs::default(), None).unwrap();
        assert_eq!(none.codec, Codec::default());
        assert_eq!(none.retries, 3);
        assert!(none.repo_url().is_err());
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = write_cfg("repo = '/r'\nreop = '/typo'\n");
        let args = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let msg = Settings::resolve(&args, None).unwrap_err().to_string();
        assert!(msg.contains("reop"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (text, key) in [
            ("compression = 'brotli'", "compression"),
            ("compression_level = 99", "compression_level"),
            ("repo = 'relative'", "repo"),
            ("server = '../x'", "server"),
            ("ssh_io_timeout = 0", "ssh_io_timeout"),
            ("retries = -1", "retries"),
        ] {
            let f = write_cfg(text);
            let args = CommonArgs {
                config: Some(f.path().into()),
                ..Default::default()
            };
            let msg = Settings::resolve(&args, None).unwrap_err().to_string();
            assert!(msg.contains(key) || msg.contains("brotli"), "{text}: {msg}");
        }
        let args = CommonArgs {
            config: Some("/nonexistent/pgcellar.toml".into()),
            ..Default::default()
        };
        assert!(Settings::resolve(&args, None)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/pgcellar.toml"));
    }

    #[test]
    fn a_level_belongs_to_its_algorithm() {
        let resolve = |text: &str, comp: CompressionArgs| {
            let f = write_cfg(text);
            let args = CommonArgs {
                config: Some(f.path().into()),
                ..Default::default()
            };
            Settings::resolve(&args, Some(&comp)).map(|s| s.codec)
        };
        let flag = |c: Compression, level: Option<i32>| CompressionArgs {
            compression: Some(c),
            compression_level: level,
        };
        // The example's shared level does not break --compression lz4.
        let c = resolve("compression_level = 3", flag(Compression::Lz4, None)).unwrap();
        assert_eq!((c.compression, c.level), (Compression::Lz4, 0));
        // A file's zstd level is not applied to a gzip chosen by flag.
        let c = resolve(
            "compression = 'zstd'\ncompression_level = 19",
            flag(Compression::Gzip, None),
        )
        .unwrap();
        assert_eq!((c.compression, c.level), (Compression::Gzip, 6));
        // The level beside the same algorithm still applies.
        let c = resolve("compression_level = 9", flag(Compression::Zstd, None)).unwrap();
        assert_eq!(c.level, 9);
        // lz4 ignores a flag level too; a bad level names where it came from.
        assert!(resolve("", flag(Compression::Lz4, Some(5))).is_ok());
        let msg = resolve("", flag(Compression::Zstd, Some(99)))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("--compression-level"), "{msg}");
        let msg = resolve("compression_level = 99", CompressionArgs::default())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("compression_level (from "), "{msg}");
    }

    #[test]
    fn errors_name_the_flag_not_the_file_for_flag_values() {
        let f = write_cfg("repo = '/r'\nssh_io_timeout = 5\n");
        let args = CommonArgs {
            config: Some(f.path().into()),
            repo: Some("relative".into()),
            ..Default::default()
        };
        let msg = Settings::resolve(&args, None).unwrap_err().to_string();
        assert!(msg.starts_with("--repo: "), "{msg}");
        let args = CommonArgs {
            config: Some(f.path().into()),
            ssh_io_timeout: Some(0),
            ..Default::default()
        };
        let msg = Settings::resolve(&args, None).unwrap_err().to_string();
        assert!(msg.starts_with("--ssh-io-timeout: "), "{msg}");
        let f = write_cfg("server = '../x'\n");
        let args = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let msg = Settings::resolve(&args, None).unwrap_err().to_string();
        assert!(msg.starts_with("server (from "), "{msg}");
    }

    #[test]
    fn every_catalog_and_lock_key_has_a_flag_over_the_file() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            c: CommonArgs,
        }
        let t = T::try_parse_from([
            "t",
            "--lock-stale-after",
            "30",
            "--backup-wal-timeout",
            "40",
            "--minimum-redundancy",
            "2",
            "--last-backup-maximum-age",
            "3 DAYS",
            "--archive-wait-timeout",
            "5",
            "--aborted-backup-max-age",
            "7",
        ])
        .unwrap();
        let f = write_cfg(
            "lock_stale_after = 1000\nbackup_wal_timeout = 1000\nminimum_redundancy = 9\n\
             last_backup_maximum_age = '9 WEEKS'\narchive_wait_timeout = 99\n\
             aborted_backup_max_age = 99\n",
        );
        let mut c = t.c;
        c.config = Some(f.path().into());
        let s = Settings::resolve(&c, None).unwrap();
        assert_eq!(s.lock_stale_after, Duration::from_secs(30));
        assert_eq!(s.backup_wal_timeout, Duration::from_secs(40));
        let cat = crate::catalog::CatalogSettings::from_settings(&s).unwrap();
        assert_eq!(cat.minimum_redundancy, 2);
        assert_eq!(cat.last_backup_maximum_age, Some(chrono::Duration::days(3)));
        assert_eq!(cat.archive_wait_timeout, Duration::from_secs(5));
        assert_eq!(cat.aborted_backup_max_age, Duration::from_secs(7));
        // Without the flags the file's values apply; a bad flag value names the flag.
        let file_only = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let s = Settings::resolve(&file_only, None).unwrap();
        assert_eq!(s.lock_stale_after, Duration::from_secs(1000));
        let cat = crate::catalog::CatalogSettings::from_settings(&s).unwrap();
        assert_eq!(cat.minimum_redundancy, 9);
        c.archive_wait_timeout = Some(0);
        let s = Settings::resolve(&c, None).unwrap();
        let msg = crate::catalog::CatalogSettings::from_settings(&s)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("--archive-wait-timeout: "), "{msg}");
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pgcellar.toml");
        FileConfig::load(&path).unwrap();
    }
}
