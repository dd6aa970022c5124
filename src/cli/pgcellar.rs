//! The command line of `pgcellar`, the catalog command.

use crate::config::CommonArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Manage a pgcellar repository.
#[derive(Parser)]
#[command(name = "pgcellar", version)]
#[command(after_help = "Examples:
  pgcellar --config /etc/pgcellar.toml init            # create the repository, register the cluster
  pgcellar --config /etc/pgcellar.toml check --nagios
  pgcellar --config /etc/pgcellar.toml list
  pgcellar --repo /srv/pgcellar info                   # every server: backups, WAL, archiving
  pgcellar --config /etc/pgcellar.toml verify --all
  pgcellar --config /etc/pgcellar.toml expire --dry-run --retention 'REDUNDANCY 2'
  pgcellar --config /etc/pgcellar.toml cron            # from cron or a systemd timer
  pgcellar --config /etc/pgcellar.toml receive-wal --slot pgcellar --create-slot

Exit codes:
  0  success
  1  failure, with a one-line reason on stderr
  2  usage error
  check --nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")]
pub struct Args {
    /// Options shared by every binary
    #[command(flatten)]
    pub common: CommonArgs,
    /// The subcommand
    #[command(subcommand)]
    pub command: Command,
}

/// `pgcellar key ...`
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Rewrap the master key under a new passphrase or key file; no data is
    /// re-encrypted, and the old secret stops opening the repository
    Rotate {
        /// File holding the new passphrase (or PGCELLAR_NEW_PASSPHRASE, or a prompt)
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        /// New key file (at least 32 random bytes)
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// Argon2id memory for a new passphrase, in MiB
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        kdf_memory: u32,
        /// Argon2id passes for a new passphrase
        #[arg(long, value_name = "N", default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// Write a new random key file (mode 0600); never replaces a file
    Generate {
        /// Where to write it
        file: PathBuf,
    },
}

/// `pgcellar <command>`
#[derive(Subcommand)]
pub enum Command {
    /// Create the repository if needed and register the server from the running cluster
    Init {
        /// Create the repository encrypted (secret from --passphrase-file,
        /// PGCELLAR_PASSPHRASE or --key-file, or a prompt on a terminal)
        #[arg(long)]
        encrypt: bool,
        /// Argon2id memory for a passphrase, in MiB (default 64)
        #[arg(long, value_name = "MIB", default_value_t = 64, requires = "encrypt")]
        kdf_memory: u32,
        /// Argon2id passes for a passphrase (default 3)
        #[arg(long, value_name = "N", default_value_t = 3, requires = "encrypt")]
        kdf_iterations: u32,
    },
    /// Manage the secret of an encrypted repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// List the servers in the repository
    Servers {
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// One screen per server (all without --server): backups, WAL, archiving, a running backup
    Info {
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// List the backups of the server, newest first
    List {
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// Show one backup: its manifest and the WAL it needs
    Show {
        /// Backup id, 'latest' or 'oldest'
        id: String,
        /// Machine-readable output, including the file list (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// Check the repository, the server's archiving and the backups
    Check {
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long, conflicts_with = "nagios")]
        json: bool,
        /// One Nagios plugin line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
        #[arg(long)]
        nagios: bool,
    },
    /// Re-read backups (size and SHA-256 of every file) and check their WAL
    Verify {
        /// Backup id, 'latest' or 'oldest' (default: latest)
        #[arg(conflicts_with = "all")]
        id: Option<String>,
        /// Verify every backup
        #[arg(long)]
        all: bool,
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// Apply the retention policy: remove expired backups and the WAL nothing needs
    Expire {
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Policy instead of 'retention' from the config file, e.g. 'REDUNDANCY 3'
        #[arg(long, env = "PGCELLAR_RETENTION", value_name = "POLICY")]
        retention: Option<String>,
        /// Machine-readable output (docs/cli-json.md)
        #[arg(long)]
        json: bool,
    },
    /// Remove one backup
    Delete {
        /// Backup id, 'latest' or 'oldest'
        id: String,
        /// Delete even if fewer than minimum_redundancy backups would remain
        #[arg(long)]
        force: bool,
    },
    /// Write one file of a backup to stdout, rebuilt from its objects and checked
    #[command(after_help = "\
The file streams to stdout and its SHA-256 is checked only at the end: if it does \
not match (or an object is damaged), pgcellar exits 1 and says on stderr that the \
output is NOT the file. So write to a file and use it only if the exit code is 0:

  pgcellar cat latest global/pg_control > pg_control || rm -f pg_control
  pgcellar cat 20261123T184500Z data/base/5/16384 > 16384 && cp 16384 /somewhere/")]
    Cat {
        /// Backup id, 'latest' or 'oldest'
        id: String,
        /// Manifest path (data/base/5/16384, tablespaces/OID/...) or a path inside the data directory (base/5/16384)
        path: String,
    },
    /// Pin a backup so that retention never removes it
    Keep {
        /// Backup id, 'latest' or 'oldest'
        id: String,
        /// Remove the pin instead
        #[arg(long)]
        release: bool,
    },
    /// Force a WAL switch on the server
    SwitchWal {
        /// Run CHECKPOINT first (so there is always something to switch)
        #[arg(long)]
        checkpoint: bool,
        /// Wait until the switched segment is in the repository
        #[arg(long)]
        wait: bool,
    },
    /// Periodic maintenance: retention and removal of aborted backups; silent when all is well
    Cron,
    /// Stream WAL over a physical replication slot into the repository; runs until stopped
    #[command(after_help = "\
Runs PostgreSQL's own pg_receivewal (of the server's major) into a local spool, stores \
every complete segment as wal-push would (an identical copy from archive_command is \
stored once, with no error) and keeps the segment in progress in the repository, \
refreshed every --partial-interval seconds and at once when the connection drops. \
It reconnects with backoff, follows timeline switches, and writes a status that \
`pgcellar check` and `pgcellar info` report. With --synchronous, name its \
application_name in synchronous_standby_names: a commit is acknowledged once it is \
durable in the spool (docs/streaming.md says what that means on each backend).

  pgcellar --config /etc/pgcellar.toml receive-wal --slot pgcellar --create-slot
  systemctl enable --now pgcellar-receive-wal.service

Exit codes: 0 stopped by SIGTERM or SIGINT, after storing what it had; 1 a refusal
that retrying cannot fix (another cluster at the conninfo, a missing slot without
--create-slot, no pg_receivewal of the server's major, the spool held by another
receiver); 2 usage. A server or network that goes away is retried, never an exit.")]
    ReceiveWal {
        /// Physical replication slot to stream from
        #[arg(long, value_name = "NAME", default_value = "pgcellar")]
        slot: String,
        /// Create the slot (reserving WAL at once) when the server does not have it
        #[arg(long)]
        create_slot: bool,
        /// Report each flush to the server as it happens (for synchronous_standby_names)
        #[arg(long)]
        synchronous: bool,
        /// Local directory pg_receivewal writes into (default /var/lib/pgcellar-receive-wal/SERVER)
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// Seconds between refreshes of the segment in progress in the repository
        #[arg(long, value_name = "SECONDS", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..=60))]
        partial_interval: u64,
        /// pg_receivewal to run (default: the one of the server's major)
        #[arg(long, value_name = "PATH", env = "PGCELLAR_PG_RECEIVEWAL")]
        pg_receivewal: Option<PathBuf>,
        /// application_name of the stream on the server (unless the conninfo sets one)
        #[arg(long, value_name = "NAME", default_value = "pgcellar")]
        application_name: String,
        /// Stop after this many seconds (for tests and benchmarks)
        #[arg(long, value_name = "SECONDS", hide = true)]
        run_for: Option<u64>,
    },
}
