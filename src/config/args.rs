//! The command-line options behind the settings (clap merges each flag over its
//! environment variable); `Settings` lays the file and the defaults underneath.

use crate::codec::Compression;
use clap::Args;
use std::path::PathBuf;

/// Options every binary accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML)
    #[arg(long, env = "PGCELLAR_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Repository: /abs/path, file:///abs/path, ssh://user@host[:port]/abs/path or s3://bucket[/prefix]
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
    /// S3 endpoint URL (default: AWS for the region)
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL",
        value_name = "URL",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_endpoint: Option<String>,
    /// S3 signing region (default us-east-1)
    #[arg(
        long,
        env = "AWS_REGION",
        value_name = "NAME",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_region: Option<String>,
    /// Path-style addressing, endpoint/bucket/key (default: true when --s3-endpoint is set)
    #[arg(
        long,
        env = "PGCELLAR_S3_PATH_STYLE",
        value_name = "BOOL",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_path_style: Option<bool>,
    /// Allow a plain-HTTP endpoint (test stores on loopback only; default false)
    #[arg(
        long,
        env = "PGCELLAR_S3_ALLOW_HTTP",
        value_name = "BOOL",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_allow_http: Option<bool>,
    /// S3 access key id
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        value_name = "ID",
        global = true,
        hide_env_values = true,
        help_heading = "S3 options"
    )]
    pub s3_access_key_id: Option<String>,
    /// File holding the S3 secret access key (AWS_SECRET_ACCESS_KEY gives the key itself)
    #[arg(
        long,
        env = "PGCELLAR_S3_SECRET_ACCESS_KEY_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// File holding an S3 session token (AWS_SESSION_TOKEN gives the token itself)
    #[arg(
        long,
        env = "PGCELLAR_S3_SESSION_TOKEN_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_session_token_file: Option<PathBuf>,
    /// File holding the passphrase of an encrypted repository (or set PGCELLAR_PASSPHRASE)
    #[arg(
        long,
        env = "PGCELLAR_PASSPHRASE_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "Encryption options"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Key file of an encrypted repository (at least 32 random bytes; 'pgcellar key generate')
    #[arg(
        long,
        env = "PGCELLAR_KEY_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "Encryption options"
    )]
    pub key_file: Option<PathBuf>,
    /// Seconds to wait for a connection to the S3 store (default 10)
    #[arg(
        long,
        env = "PGCELLAR_S3_CONNECT_TIMEOUT",
        value_name = "SECS",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_connect_timeout: Option<u64>,
    /// Seconds one S3 request attempt may take, and a download may stall (default 60)
    #[arg(
        long,
        env = "PGCELLAR_S3_REQUEST_TIMEOUT",
        value_name = "SECS",
        global = true,
        help_heading = "S3 options"
    )]
    pub s3_request_timeout: Option<u64>,
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

/// wal-push's look-ahead options (flag > env > file > default).
#[derive(Debug, Clone, Default, Args)]
pub struct LookaheadArgs {
    /// Also push up to N other segments already marked .ready (0 turns look-ahead off)
    #[arg(long, env = "PGCELLAR_PUSH_LOOKAHEAD", value_name = "N")]
    pub push_lookahead: Option<u32>,
    /// Threads pushing in parallel during look-ahead
    #[arg(long, env = "PGCELLAR_PUSH_PARALLEL", value_name = "N")]
    pub push_parallel: Option<u32>,
    /// Local directory for look-ahead records (default: <data dir>.pgcellar-status beside the data directory)
    #[arg(long, env = "PGCELLAR_WAL_STATUS_DIR", value_name = "DIR")]
    pub wal_status_dir: Option<PathBuf>,
}

/// wal-get's prefetch options (flag > env > file > default).
#[derive(Debug, Clone, Default, Args)]
pub struct PrefetchArgs {
    /// Also fetch up to N following segments into the spool (0 turns prefetch off)
    #[arg(long, env = "PGCELLAR_PREFETCH", value_name = "N")]
    pub prefetch: Option<u32>,
    /// Threads fetching in parallel
    #[arg(long, env = "PGCELLAR_PREFETCH_PARALLEL", value_name = "N")]
    pub prefetch_parallel: Option<u32>,
    /// Spool directory (default: <data dir>.pgcellar-spool beside the data directory)
    #[arg(long, env = "PGCELLAR_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Upper bound of the spool's size in bytes
    #[arg(long, env = "PGCELLAR_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
}
