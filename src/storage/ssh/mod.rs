//! The SSH driver: a repository directory on a backup host, reached over SFTP.
//!
//! The backup host needs nothing but OpenSSH's `sshd` with the SFTP subsystem (plus a
//! POSIX shell for the two batch operations, see below). One process keeps a small
//! pool of authenticated sessions: the first operation connects, later ones reuse the
//! idle session, and concurrent callers (`--jobs` workers, parallel pushes) each get
//! their own session, so they really run in parallel (libssh2 serialises everything on
//! one session behind a single lock).
//!
//! # Durability over SFTP: what is promised, and what is not
//!
//! A committed file is written under a temporary name (`.tmp-…`, mode 0600) in its
//! target directory, then `fsync@openssh.com` is sent on the open handle (the server
//! calls `fsync(2)` on the file), then the file gets its final name, then the
//! directory itself is fsync'ed by opening it as a file (`SSH_FXP_OPEN`, read-only)
//! and sending `fsync@openssh.com` on that handle. OpenSSH's `sftp-server` (and
//! `internal-sftp`) accept this on Linux, so with an OpenSSH server on Linux the file's
//! bytes *and* its directory entry are on stable storage before we acknowledge.
//!
//! What SFTP cannot promise:
//! - SFTP (version 3, which OpenSSH speaks) has no directory-sync operation. The
//!   directory fsync above relies on the server opening a directory with `open(2)`;
//!   a server that refuses it (not OpenSSH, or a non-Linux host) leaves the *rename*
//!   durable only when the server's filesystem commits metadata on its own (ext4
//!   `data=ordered` journals it within seconds; XFS, ZFS likewise). We then log that
//!   the directory could not be synced and carry on: the file's *bytes* are still
//!   fsync'ed. A server without `fsync@openssh.com` is refused outright, because
//!   then not even the bytes can be made durable.
//! - Nothing is durable beyond what the backup host's own storage stack honours
//!   (disk write caches, NFS mounts behind sshd, ...).
//! - A crash leaves either nothing or a complete file under the final name; a
//!   temporary `.tmp-…` file may remain, which readers ignore.
//!
//! # Never replacing, and atomic replacement
//!
//! [`Overwrite::Never`](crate::storage::Overwrite::Never) uses plain `SSH_FXP_RENAME`. OpenSSH implements it as
//! `link(2)` + `unlink(2)` and fails when the target exists, so it never replaces an
//! existing name, even between racing writers (the test suite checks this against the
//! real server). [`Overwrite::Replace`](crate::storage::Overwrite::Replace) uses the `posix-rename@openssh.com` extension
//! (`rename(2)` on the server: atomic replacement) through libssh2's
//! `libssh2_sftp_posix_rename_ex`, on a second SFTP channel opened only when needed;
//! if the server lacks the extension it falls back to `mv -f` (also `rename(2)`) over
//! an exec channel.
//!
//! # Tree removal
//!
//! [`Storage::remove_dir_all`](crate::storage::Storage::remove_dir_all) is one `rm -rf`
//! over an exec channel, so removing a backup directory needs the login to have a
//! POSIX shell (an `internal-sftp`-only account can do everything else).
//!
//! # Files of this driver
//!
//! This file is only the facade. `options` ([`SshOptions`], `~/.ssh`), `target` (the
//! URL's host and root, remote paths), `driver` ([`SshStorage`] and its `Storage`
//! impl), `pool` (reusing and retiring sessions), `connect` (opening one),
//! `host_key`, `auth`, `conn` (multi-request operations on one session), `file`
//! (reader and atomic file), `errors` (what an ssh2 error means) and `ffi` (the raw
//! libssh2 calls).

mod auth;
mod conn;
mod connect;
mod driver;
mod errors;
mod ffi;
mod file;
mod host_key;
mod options;
mod pool;
mod target;

pub use driver::SshStorage;
pub use host_key::fingerprint_sha256;
pub use options::SshOptions;
