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
//! [`Overwrite::Never`] uses plain `SSH_FXP_RENAME`. OpenSSH implements it as
//! `link(2)` + `unlink(2)` and fails when the target exists, so it never replaces an
//! existing name, even between racing writers (the test suite checks this against the
//! real server). [`Overwrite::Replace`] uses the `posix-rename@openssh.com` extension
//! (`rename(2)` on the server: atomic replacement) through libssh2's
//! `libssh2_sftp_posix_rename_ex`, on a second SFTP channel opened only when needed;
//! if the server lacks the extension it falls back to `mv -f` (also `rename(2)`) over
//! an exec channel.
//!
//! # Hard links and tree removal
//!
//! SFTP v3 has no hard-link request, and libssh2 does not speak
//! `hardlink@openssh.com`. [`Storage::hard_link_all`] therefore sends one generated
//! shell script (every path single-quoted) over one exec channel to `sh -s`: one round
//! trip for any number of links, then `sync` of the touched directories.
//! [`Storage::remove_dir_all`] is one `rm -rf` the same way. Both need the login to
//! have a POSIX shell (an `internal-sftp`-only account cannot take incremental
//! backups or expire them; everything else works).

use super::{check_path, AtomicFile, Committed, DirEntry, FileInfo, Overwrite, Storage};
use crate::config::SshSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::util::{shell_quote, temp_name};
use crate::{log_debug, log_info, log_notice};
use ssh2::{CheckResult, ErrorCode, FileStat, HashType, HostKeyType, OpenFlags, OpenType};
use ssh2::{KnownHostFileKind, MethodType, RenameFlags, Session, Sftp};
use std::ffi::CString;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Host key algorithms in order of preference (OpenSSH's order for the common ones),
/// so that the key the server shows is the one a modern known_hosts holds.
const HOSTKEY_PREFS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";

/// Ciphers in order of preference (unknown names are ignored by libssh2).
const CIPHER_PREFS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr";

/// Idle sessions kept for reuse; more concurrent callers open more, then close them.
const MAX_IDLE: usize = 8;

/// Write buffer: large writes let libssh2 keep many SFTP write requests in flight.
const WRITE_BUF: usize = 1024 * 1024;

// SFTP status codes (draft-ietf-secsh-filexfer-02) that we branch on.
const FX_NO_SUCH_FILE: i32 = 2;
const FX_FAILURE: i32 = 4;
const FX_OP_UNSUPPORTED: i32 = 8;
const FX_NO_CONNECTION: i32 = 6;
const FX_CONNECTION_LOST: i32 = 7;
const FX_FILE_ALREADY_EXISTS: i32 = 11;

/// libssh2 session error codes that mean "the connection is in trouble": a retry on a
/// fresh connection may succeed.
const TRANSIENT_SESSION_CODES: &[i32] = &[
    -1,  // SOCKET_NONE
    -2,  // BANNER_RECV
    -3,  // BANNER_SEND
    -4,  // INVALID_MAC
    -7,  // SOCKET_SEND
    -9,  // TIMEOUT
    -12, // DECRYPT
    -13, // SOCKET_DISCONNECT
    -21, // CHANNEL_FAILURE (e.g. MaxSessions reached for a moment)
    -26, // CHANNEL_CLOSED
    -30, // SOCKET_TIMEOUT
    -43, // SOCKET_RECV
    -45, // BAD_SOCKET
];

/// Functions of the libssh2 that `libssh2-sys` builds and links, which the `ssh2`
/// crate does not wrap. Pointers are opaque here.
mod ffi {
    use std::os::raw::{c_char, c_int, c_uint, c_ulong, c_void};
    /// LIBSSH2_RECV_FUNC.
    pub type RecvFn = extern "C" fn(
        libc::c_int,
        *mut libc::c_void,
        libc::size_t,
        libc::c_int,
        *mut *mut libc::c_void,
    ) -> libc::ssize_t;
    extern "C" {
        pub fn libssh2_session_callback_set2(
            session: *mut c_void,
            cbtype: c_int,
            callback: RecvFn,
        ) -> *mut c_void;
        pub fn libssh2_sftp_init(session: *mut c_void) -> *mut c_void;
        pub fn libssh2_sftp_shutdown(sftp: *mut c_void) -> c_int;
        pub fn libssh2_sftp_last_error(sftp: *mut c_void) -> c_ulong;
        pub fn libssh2_sftp_posix_rename_ex(
            sftp: *mut c_void,
            source: *const c_char,
            source_len: c_uint,
            dest: *const c_char,
            dest_len: c_uint,
        ) -> c_int;
    }
}

/// Where the repository is: login, host, port and the absolute root path.
#[derive(Debug, Clone)]
struct Target {
    user: String,
    host: String,
    port: u16,
    root: String,
}

impl Target {
    fn url(&self) -> String {
        super::RepoUrl::Ssh {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.root.clone(),
        }
        .to_string()
    }

    /// The host as known_hosts names it: `host` on port 22, else `[host]:port`.
    fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

struct Shared {
    target: Target,
    settings: SshSettings,
    idle: Mutex<Vec<Conn>>,
    /// [`DIR_FSYNC_UNKNOWN`], [`DIR_FSYNC_OK`] or [`DIR_FSYNC_UNSUPPORTED`].
    dir_fsync: Arc<AtomicU8>,
}

const DIR_FSYNC_UNKNOWN: u8 = 0;
const DIR_FSYNC_OK: u8 = 1;
const DIR_FSYNC_UNSUPPORTED: u8 = 2;

/// A repository on a backup host, over SFTP. Cheap to share between threads.
pub struct SshStorage {
    shared: Arc<Shared>,
}

/// One authenticated session with its SFTP channel.
struct Conn {
    /// A second SFTP channel (raw libssh2 pointer) for `posix-rename@openssh.com`,
    /// opened on first use; `Some(null)` would never be stored.
    posix: Option<*mut std::os::raw::c_void>,
    sftp: Sftp,
    session: Session,
    /// A clone of the session's socket: shutting it down makes every pending or later
    /// libssh2 call on a hung connection fail at once instead of waiting again.
    socket: TcpStream,
    /// Whether fsync of a directory handle works on this server (shared by the pool).
    dir_fsync: Arc<AtomicU8>,
}

// SAFETY: the raw `posix` pointer is only used by the thread that holds the `Conn`
// (a Conn is owned by exactly one Lease or sits in the idle list), and only while
// holding the session lock that libssh2 needs; ssh2's own types are Send.
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(p) = self.posix.take() {
            let _session_lock = self.session.raw();
            // SAFETY: `p` came from libssh2_sftp_init on this session, which is alive
            // and locked; it is shut down exactly once.
            unsafe {
                ffi::libssh2_sftp_shutdown(p);
            }
        }
    }
}

/// A connection taken from the pool; goes back on drop unless poisoned.
struct Lease {
    conn: Option<Conn>,
    shared: Arc<Shared>,
    poisoned: bool,
    /// Whether the connection came from the idle pool (it may have gone stale).
    reused: bool,
}

impl Lease {
    fn conn(&mut self) -> &mut Conn {
        // Only `drop` takes the connection out, so it is always there before that.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease used after drop"))
    }

    /// Never reuse this connection; cut its socket so nothing waits on it again.
    fn poison(&mut self) {
        self.poisoned = true;
        if let Some(c) = &self.conn {
            let _ = c.socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.poisoned {
                let _ = conn.socket.shutdown(Shutdown::Both);
                drop(conn);
                return;
            }
            let mut idle = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// The kind of an ssh2 error: SFTP statuses say what happened to the file; session
/// errors mean the connection failed.
fn classify(e: &ssh2::Error) -> ErrorKind {
    match e.code() {
        ErrorCode::SFTP(FX_NO_SUCH_FILE) => ErrorKind::NotFound,
        ErrorCode::SFTP(FX_NO_CONNECTION | FX_CONNECTION_LOST) => ErrorKind::Transient,
        ErrorCode::SFTP(_) => ErrorKind::Io,
        ErrorCode::Session(c) if TRANSIENT_SESSION_CODES.contains(&c) => ErrorKind::Transient,
        ErrorCode::Session(_) => ErrorKind::Io,
    }
}

fn is_sftp_status(e: &ssh2::Error, status: i32) -> bool {
    e.code() == ErrorCode::SFTP(status)
}

/// The home directory of the effective user, as OpenSSH finds `~` (the password
/// database, not `$HOME`, which `runuser` and cron may leave pointing elsewhere).
fn home_dir() -> Option<PathBuf> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwuid_r writes only into `pwd` and `buf`
    // (whose length we pass) and sets `result` to null or to `&pwd`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc == 0 && !result.is_null() && !pwd.pw_dir.is_null() {
            let dir = std::ffi::CStr::from_ptr(pwd.pw_dir);
            use std::os::unix::ffi::OsStrExt;
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())));
        }
    }
    std::env::var_os("HOME").map(PathBuf::from)
}

/// OpenSSH's fingerprint text: `SHA256:` and unpadded base64 of the key's SHA-256.
pub fn fingerprint_sha256(digest: &[u8]) -> String {
    use base64::Engine;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// (known_hosts key type, OpenSSH's display name) of a host key type.
fn key_type_names(t: HostKeyType) -> Option<(&'static str, &'static str)> {
    Some(match t {
        HostKeyType::Rsa => ("ssh-rsa", "RSA"),
        HostKeyType::Dss => ("ssh-dss", "DSA"),
        HostKeyType::Ecdsa256 => ("ecdsa-sha2-nistp256", "ECDSA"),
        HostKeyType::Ecdsa384 => ("ecdsa-sha2-nistp384", "ECDSA"),
        HostKeyType::Ecdsa521 => ("ecdsa-sha2-nistp521", "ECDSA"),
        HostKeyType::Ed25519 => ("ssh-ed25519", "ED25519"),
        _ => return None,
    })
}

impl SshStorage {
    /// Connect to the repository at `url` (which must be `ssh://`) with `settings`.
    ///
    /// The first session is opened now, so host-key and authentication problems are
    /// reported here, with what to do about them.
    pub fn open(url: &super::RepoUrl, settings: &SshSettings) -> Result<SshStorage> {
        let super::RepoUrl::Ssh {
            user,
            host,
            port,
            path,
        } = url
        else {
            return Err(Error::config(format!("{url} is not an ssh:// repository")));
        };
        for (what, v) in [("user", user), ("host", host), ("path", path)] {
            if v.contains('\0') || v.contains('\n') {
                return Err(Error::config(format!(
                    "repository {url}: the {what} must not contain NUL or newline characters"
                )));
            }
        }
        let root = if path.len() > 1 {
            path.trim_end_matches('/').to_string()
        } else {
            path.clone()
        };
        let shared = Arc::new(Shared {
            target: Target {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                root,
            },
            settings: settings.clone(),
            idle: Mutex::new(Vec::new()),
            dir_fsync: Arc::new(AtomicU8::new(DIR_FSYNC_UNKNOWN)),
        });
        let storage = SshStorage { shared };
        // Connect eagerly, then park the session for the first operation.
        drop(storage.lease()?);
        Ok(storage)
    }

    /// Whether this server let us fsync a directory: `None` until a commit tried it.
    /// (`Some(false)`: renames are durable only when its filesystem commits them; see
    /// the module documentation.)
    pub fn directory_fsync_works(&self) -> Option<bool> {
        match self.shared.dir_fsync.load(Ordering::Relaxed) {
            DIR_FSYNC_OK => Some(true),
            DIR_FSYNC_UNSUPPORTED => Some(false),
            _ => None,
        }
    }

    fn loc(&self) -> String {
        self.shared.target.url()
    }

    fn lease(&self) -> Result<Lease> {
        let idle = {
            let mut idle = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.pop()
        };
        let reused = idle.is_some();
        let conn = match idle {
            Some(c) => c,
            None => connect(
                &self.shared.target,
                &self.shared.settings,
                self.shared.dir_fsync.clone(),
            )?,
        };
        Ok(Lease {
            conn: Some(conn),
            shared: self.shared.clone(),
            poisoned: false,
            reused,
        })
    }

    /// Run `f` on a pooled connection; a transient failure retires the connection.
    ///
    /// Every `f` given here is idempotent, so when a connection that sat idle in the
    /// pool fails (the server may have dropped it meanwhile), `f` runs once more on a
    /// fresh connection before the failure is reported.
    fn with_conn<T>(&self, mut f: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let mut lease = self.lease()?;
        let r = f(lease.conn());
        match r {
            Err(e) if e.is_transient() => {
                lease.poison();
                if !lease.reused {
                    return Err(e);
                }
                drop(lease);
                log_debug!("{e}; retrying on a new connection");
                let mut lease = self.lease()?;
                let r = f(lease.conn());
                if r.as_ref().is_err_and(|e| e.is_transient()) {
                    lease.poison();
                }
                r
            }
            r => r,
        }
    }

    fn abs(&self, path: &str) -> Result<String> {
        if path.is_empty() {
            return Ok(self.shared.target.root.clone());
        }
        check_path(path)?;
        Ok(join_abs(&self.shared.target.root, path))
    }

    fn err(&self, what: impl std::fmt::Display, e: ssh2::Error) -> Error {
        ssh_error(&self.loc(), what, e)
    }
}

fn join_abs(root: &str, rel: &str) -> String {
    if root == "/" {
        format!("/{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

fn parent_of(abs: &str) -> &str {
    match abs.rfind('/') {
        Some(0) => "/",
        Some(i) => &abs[..i],
        None => "/",
    }
}

fn ssh_error(loc: &str, what: impl std::fmt::Display, e: ssh2::Error) -> Error {
    let kind = classify(&e);
    let hint = if kind == ErrorKind::Transient {
        " (network or backup host problem; will be retried where allowed)"
    } else {
        ""
    };
    Error::new(kind, format!("{loc}: {what}: {}{hint}", e.message()))
}

fn transient(msg: String) -> Error {
    Error::new(ErrorKind::Transient, msg)
}

/// libssh2's receive function plus `TCP_QUICKACK` after every read.
///
/// Why: sshd leaves Nagle's algorithm on for non-interactive sessions, and it often
/// sends two small packets in a row (e.g. its host-key announcement, then the reply
/// we wait for). The second waits until we acknowledge the first, and Linux delays
/// that acknowledgement by 40 ms, which measured as a third of a `wal-push` over
/// loopback. Re-arming quick-ack after each read removes that stall; the protocol
/// bytes are untouched.
extern "C" fn recv_quickack(
    socket: libc::c_int,
    buffer: *mut libc::c_void,
    length: libc::size_t,
    flags: libc::c_int,
    _abstract: *mut *mut libc::c_void,
) -> libc::ssize_t {
    // SAFETY: libssh2 passes a valid buffer of `length` bytes and its own socket.
    let rc = unsafe { libc::recv(socket, buffer, length, flags) };
    if rc < 0 {
        // Same contract as libssh2's own ssh2_recv: -errno, with EINTR and
        // EWOULDBLOCK reported as -EAGAIN.
        let err = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return if err == libc::EINTR || err == libc::EWOULDBLOCK {
            -(libc::EAGAIN as libc::ssize_t)
        } else {
            -(err as libc::ssize_t)
        };
    }
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int, whose size we pass, on libssh2's socket.
    unsafe {
        libc::setsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    rc
}

fn install_quickack_recv(session: &Session) {
    const LIBSSH2_CALLBACK_RECV: libc::c_int = 6;
    let mut raw = session.raw();
    let sess_ptr = &mut *raw as *mut _ as *mut std::os::raw::c_void;
    let cb: ffi::RecvFn = recv_quickack;
    // SAFETY: the session is valid and locked; the callback has the exact C
    // signature libssh2 expects for LIBSSH2_CALLBACK_RECV (LIBSSH2_RECV_FUNC).
    unsafe {
        ffi::libssh2_session_callback_set2(sess_ptr, LIBSSH2_CALLBACK_RECV, cb);
    }
}

/// Resolve `host`, bounded by `timeout`: getaddrinfo has no timeout of its own, and a
/// dead DNS server would otherwise hang archive_command for as long as the resolver's
/// retries last (resolv.conf's timeout x attempts x servers, a minute or more). A
/// lookup that overruns is left to finish on its own thread, which dies with the
/// process.
fn resolve(host: &str, port: u16, timeout: Duration) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect),
            );
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer from the name service within {}s (the connect timeout)",
                timeout.as_secs()
            ),
        )),
    }
}

/// Open and authenticate one session, verifying the host key first.
fn connect(t: &Target, s: &SshSettings, dir_fsync: Arc<AtomicU8>) -> Result<Conn> {
    let loc = t.url();
    let addrs = resolve(&t.host, t.port, s.connect_timeout)
        .map_err(|e| transient(format!("{loc}: cannot resolve {}: {e}", t.host)))?;
    let mut last_err = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, s.connect_timeout) {
            Ok(st) => {
                stream = Some(st);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        transient(format!(
            "{loc}: cannot connect to {}:{} (timeout {}s): {}",
            t.host,
            t.port,
            s.connect_timeout.as_secs(),
            last_err.map_or_else(|| "no address".to_string(), |e| e.to_string())
        ))
    })?;
    let _ = stream.set_nodelay(true);
    let socket = stream
        .try_clone()
        .map_err(|e| Error::io(format!("{loc}: cloning the socket"), e))?;
    let mut session = Session::new().map_err(|e| ssh_error(&loc, "starting libssh2", e))?;
    // The connect timeout bounds the whole establishment: banner, key exchange, auth.
    session.set_timeout(millis(s.connect_timeout));
    session
        .method_pref(MethodType::HostKey, HOSTKEY_PREFS)
        .map_err(|e| ssh_error(&loc, "setting host key preferences", e))?;
    install_quickack_recv(&session);
    // AES-GCM runs on the CPU's AES instructions through OpenSSL; libssh2's
    // chacha20-poly1305 is portable C and costs more per pushed byte.
    for m in [MethodType::CryptCs, MethodType::CryptSc] {
        session
            .method_pref(m, CIPHER_PREFS)
            .map_err(|e| ssh_error(&loc, "setting cipher preferences", e))?;
    }
    session.set_tcp_stream(stream);
    session.handshake().map_err(|e| {
        let kind = classify(&e);
        Error::new(
            kind,
            format!(
                "{loc}: SSH handshake failed: {} (is an SSH server answering on port {}?)",
                e.message(),
                t.port
            ),
        )
    })?;
    verify_host_key(&session, t, s)?;
    authenticate(&session, t, s)?;
    session.set_timeout(millis(s.io_timeout));
    let sftp = session.sftp().map_err(|e| {
        let kind = classify(&e);
        let msg = format!(
            "{loc}: cannot start SFTP: {} (the backup host's sshd needs a 'Subsystem sftp' line)",
            e.message()
        );
        Error::new(kind, msg)
    })?;
    log_debug!(
        "connected to {loc} (kex {}, host key {}, cipher {}, mac {})",
        session.methods(MethodType::Kex).unwrap_or("?"),
        session.methods(MethodType::HostKey).unwrap_or("?"),
        session.methods(MethodType::CryptCs).unwrap_or("?"),
        session.methods(MethodType::MacCs).unwrap_or("?")
    );
    Ok(Conn {
        posix: None,
        sftp,
        session,
        socket,
        dir_fsync,
    })
}

fn verify_host_key(session: &Session, t: &Target, s: &SshSettings) -> Result<()> {
    let loc = t.url();
    let (key, ktype) = session
        .host_key()
        .ok_or_else(|| Error::config(format!("{loc}: the server sent no host key")))?;
    let (type_name, display) = key_type_names(ktype).ok_or_else(|| {
        Error::config(format!(
            "{loc}: the server's host key type is not supported"
        ))
    })?;
    let fp = session
        .host_key_hash(HashType::Sha256)
        .map(fingerprint_sha256)
        .unwrap_or_else(|| "SHA256:?".to_string());
    let kh_path = match &s.known_hosts {
        Some(p) => p.clone(),
        None => home_dir()
            .map(|h| h.join(".ssh/known_hosts"))
            .ok_or_else(|| {
                Error::config(format!(
                    "{loc}: no home directory to find known_hosts in; use --ssh-known-hosts FILE"
                ))
            })?,
    };
    let mut kh = session
        .known_hosts()
        .map_err(|e| ssh_error(&loc, "initialising known_hosts", e))?;
    match std::fs::read_to_string(&kh_path) {
        Ok(text) => {
            // Line by line: libssh2 gives up on a whole file at the first line it
            // cannot parse (certificates, security-key types); we skip such lines.
            for line in text.lines() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                if kh.read_str(l, KnownHostFileKind::OpenSSH).is_err() {
                    log_debug!(
                        "{}: skipping a known_hosts line libssh2 cannot read",
                        kh_path.display()
                    );
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::config(format!(
                "{loc}: cannot read known_hosts file {}: {e}",
                kh_path.display()
            )))
        }
    }
    let name = t.known_hosts_name();
    match kh.check_port(&t.host, t.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound if s.accept_new_host_key => {
            append_known_host(&kh_path, &name, type_name, key).map_err(|e| {
                Error::config(format!(
                    "{loc}: cannot add the host key to {}: {e}",
                    kh_path.display()
                ))
            })?;
            log_notice!(
                "added {name} to {} ({display} key fingerprint is {fp}; ssh_accept_new_host_key is on)",
                kh_path.display()
            );
            Ok(())
        }
        CheckResult::NotFound => Err(Error::config(format!(
            "{loc}: host {name} is not in known_hosts file {}: its {display} key fingerprint is {fp}. \
             Check that fingerprint with the backup host's administrator, then add the key \
             (ssh-keyscan -p {} {} >> {}) or set ssh_accept_new_host_key = true",
            kh_path.display(),
            t.port,
            t.host,
            kh_path.display()
        ))),
        CheckResult::Mismatch => Err(Error::config(format!(
            "{loc}: HOST KEY MISMATCH for {name}: the server shows a {display} key with fingerprint \
             {fp}, which is not the key recorded in {} (someone may be intercepting the \
             connection, or the host was reinstalled; a key of another type in known_hosts also \
             counts). Refusing to connect. If the change is legitimate: ssh-keygen -R '{name}' -f {}",
            kh_path.display(),
            kh_path.display()
        ))),
        CheckResult::Failure => Err(Error::config(format!(
            "{loc}: cannot check the host key of {name} against {}",
            kh_path.display()
        ))),
    }
}

fn append_known_host(path: &Path, name: &str, type_name: &str, key: &[u8]) -> io::Result<()> {
    use base64::Engine;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let line = format!(
        "{name} {type_name} {}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    // One append write: concurrent processes cannot interleave inside a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

fn authenticate(session: &Session, t: &Target, s: &SshSettings) -> Result<()> {
    let loc = t.url();
    let user = &t.user;
    if let Some(id) = &s.identity {
        if !id.is_file() {
            return Err(Error::config(format!(
                "{loc}: SSH identity file {} does not exist or is not a file (--ssh-identity)",
                id.display()
            )));
        }
        return match session.userauth_pubkey_file(user, None, id, None) {
            Ok(()) if session.authenticated() => Ok(()),
            Ok(()) => Err(refused(&loc, user, &t.host, &id.display().to_string(), "")),
            Err(e) if classify(&e) == ErrorKind::Transient => {
                Err(ssh_error(&loc, "authentication", e))
            }
            Err(e) => Err(refused(
                &loc,
                user,
                &t.host,
                &id.display().to_string(),
                e.message(),
            )),
        };
    }
    let mut tried = Vec::new();
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        tried.push("the SSH agent".to_string());
        match session.userauth_agent(user) {
            Ok(()) if session.authenticated() => return Ok(()),
            Err(e) if classify(&e) == ErrorKind::Transient => {
                return Err(ssh_error(&loc, "authentication", e))
            }
            _ => {}
        }
    }
    if let Some(home) = home_dir() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let p = home.join(".ssh").join(name);
            if !p.is_file() {
                continue;
            }
            tried.push(p.display().to_string());
            match session.userauth_pubkey_file(user, None, &p, None) {
                Ok(()) if session.authenticated() => return Ok(()),
                Err(e) if classify(&e) == ErrorKind::Transient => {
                    return Err(ssh_error(&loc, "authentication", e))
                }
                _ => {}
            }
        }
    }
    let tried = if tried.is_empty() {
        "no agent, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa".to_string()
    } else {
        tried.join(", ")
    };
    Err(Error::config(format!(
        "{loc}: public key authentication as {user} failed (tried {tried}). Give a key with \
         --ssh-identity FILE (unencrypted, or loaded in ssh-agent) whose public key is in \
         ~{user}/.ssh/authorized_keys on {}",
        t.host
    )))
}

fn refused(loc: &str, user: &str, host: &str, id: &str, detail: &str) -> Error {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    Error::config(format!(
        "{loc}: the backup host refused key {id} for user {user}{detail}. Is its public key in \
         ~{user}/.ssh/authorized_keys on {host}? (Passphrase-protected keys must be loaded in \
         ssh-agent instead.)"
    ))
}

impl Conn {
    /// fsync a directory through a read-only file handle on it (see the module docs).
    fn sync_dir(&mut self, loc: &str, dir: &str) -> Result<()> {
        if self.dir_fsync.load(Ordering::Relaxed) == DIR_FSYNC_UNSUPPORTED {
            return Ok(());
        }
        let res = self
            .sftp
            .open_mode(Path::new(dir), OpenFlags::READ, 0, OpenType::File)
            .and_then(|mut h| {
                let r = h.fsync();
                let _ = h.close();
                r
            });
        match res {
            Ok(()) => {
                self.dir_fsync.store(DIR_FSYNC_OK, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if classify(&e) == ErrorKind::Transient => {
                Err(ssh_error(loc, format!("fsync of directory {dir}"), e))
            }
            Err(e) => {
                // Not an error: SFTP has no directory sync, this server does not allow
                // our way around that. The module docs say what that means.
                self.dir_fsync
                    .store(DIR_FSYNC_UNSUPPORTED, Ordering::Relaxed);
                log_info!(
                    "{loc}: the server cannot fsync directories over SFTP ({}); renames are \
                     durable once its filesystem commits them",
                    e.message()
                );
                Ok(())
            }
        }
    }

    /// Run `command` on the backup host with `stdin`; returns (exit status, stderr).
    fn exec(&mut self, loc: &str, command: &str, stdin: &[u8]) -> Result<(i32, String)> {
        let mut ch = self
            .session
            .channel_session()
            .map_err(|e| ssh_error(loc, "opening an exec channel", e))?;
        ch.exec(command)
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let io_err = |e: io::Error| {
            Error::new(
                ErrorKind::Transient,
                format!("{loc}: talking to {command:?}: {e}"),
            )
        };
        ch.write_all(stdin).map_err(io_err)?;
        ch.send_eof()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let mut out = Vec::new();
        ch.read_to_end(&mut out).map_err(io_err)?;
        let mut err = Vec::new();
        ch.stderr().read_to_end(&mut err).map_err(io_err)?;
        ch.wait_close()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let code = ch
            .exit_status()
            .map_err(|e| ssh_error(loc, format!("running {command:?}"), e))?;
        let err = String::from_utf8_lossy(&err).trim().replace('\n', "; ");
        Ok((code, err))
    }

    /// Atomically rename `from` to `to`, replacing `to`.
    fn replace(&mut self, loc: &str, from: &str, to: &str) -> Result<()> {
        match self.posix_rename(from, to) {
            Ok(true) => return Ok(()),
            Ok(false) => {} // extension missing: fall back below
            Err(e) => {
                return Err(Error::new(
                    e.0,
                    format!("{loc}: renaming {from} to {to}: {}", e.1),
                ))
            }
        }
        let cmd = format!("mv -f -- {} {}", shell_quote(from), shell_quote(to));
        let (code, err) = self.exec(loc, &cmd, b"")?;
        if code != 0 {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{loc}: {cmd} failed with status {code}: {err}"),
            ));
        }
        Ok(())
    }

    /// `posix-rename@openssh.com`: Ok(true) done, Ok(false) unsupported by the server.
    fn posix_rename(
        &mut self,
        from: &str,
        to: &str,
    ) -> std::result::Result<bool, (ErrorKind, String)> {
        let (Ok(cfrom), Ok(cto)) = (CString::new(from), CString::new(to)) else {
            return Err((ErrorKind::Invalid, "path contains NUL".into()));
        };
        let mut raw = self.session.raw();
        let sess_ptr = &mut *raw as *mut _ as *mut std::os::raw::c_void;
        let sftp = match self.posix {
            Some(p) => p,
            None => {
                // SAFETY: the session pointer is valid and locked for this call.
                let p = unsafe { ffi::libssh2_sftp_init(sess_ptr) };
                if p.is_null() {
                    drop(raw);
                    let e = ssh2::Error::last_session_error(&self.session);
                    let kind = e.as_ref().map_or(ErrorKind::Transient, classify);
                    let msg = e.map_or_else(|| "unknown error".into(), |e| e.message().to_string());
                    return Err((kind, format!("opening a second SFTP channel: {msg}")));
                }
                self.posix = Some(p);
                p
            }
        };
        // SAFETY: `sftp` belongs to this locked session; the strings outlive the call
        // and their lengths are passed explicitly.
        let rc = unsafe {
            ffi::libssh2_sftp_posix_rename_ex(
                sftp,
                cfrom.as_ptr(),
                from.len() as std::os::raw::c_uint,
                cto.as_ptr(),
                to.len() as std::os::raw::c_uint,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        const LIBSSH2_ERROR_SFTP_PROTOCOL: i32 = -31;
        if rc == LIBSSH2_ERROR_SFTP_PROTOCOL {
            // SAFETY: as above.
            let status = unsafe { ffi::libssh2_sftp_last_error(sftp) } as i32;
            if status == FX_OP_UNSUPPORTED {
                return Ok(false);
            }
            let kind = classify(&ssh2::Error::from_errno(ErrorCode::SFTP(status)));
            return Err((kind, format!("SFTP status {status}")));
        }
        drop(raw);
        let e = ssh2::Error::last_session_error(&self.session);
        let kind = e.as_ref().map_or(ErrorKind::Transient, classify);
        let msg = e.map_or_else(
            || format!("libssh2 error {rc}"),
            |e| e.message().to_string(),
        );
        Err((kind, msg))
    }

    fn stat(&mut self, loc: &str, abs: &str) -> Result<Option<FileStat>> {
        match self.sftp.stat(Path::new(abs)) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(None),
            Err(e) => Err(ssh_error(loc, format!("stat {abs}"), e)),
        }
    }

    fn mkdir_p(&mut self, loc: &str, abs: &str, depth: usize) -> Result<()> {
        if let Some(st) = self.stat(loc, abs)? {
            return if st.is_dir() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Io,
                    format!("{loc}: {abs} exists and is not a directory"),
                ))
            };
        }
        if depth > 64 {
            return Err(Error::invalid(format!("{loc}: {abs}: too deep")));
        }
        let parent = parent_of(abs).to_string();
        if parent != abs {
            self.mkdir_p(loc, &parent, depth + 1)?;
        }
        match self.sftp.mkdir(Path::new(abs), 0o700) {
            Ok(()) => self.sync_dir(loc, &parent),
            Err(e) if classify(&e) == ErrorKind::Transient => {
                Err(ssh_error(loc, format!("creating directory {abs}"), e))
            }
            // A concurrent creator may have won: fine if it is a directory now.
            Err(e) => match self.stat(loc, abs)? {
                Some(st) if st.is_dir() => Ok(()),
                _ => Err(ssh_error(loc, format!("creating directory {abs}"), e)),
            },
        }
    }
}

/// Whether an io::Error from streaming on `session` came from the connection (rather
/// than an SFTP status such as "no space"): the session's last error tells.
fn stream_error_kind(session: &Session, e: &io::Error) -> ErrorKind {
    if e.kind() == io::ErrorKind::TimedOut {
        return ErrorKind::Transient;
    }
    match ssh2::Error::last_session_error(session) {
        Some(se) => match se.code() {
            ErrorCode::Session(-31) => ErrorKind::Io, // SFTP_PROTOCOL: a status reply
            _ => classify(&se),
        },
        None => ErrorKind::Io,
    }
}

/// Map a streaming error to an io::Error whose kind `Error::io` classifies correctly.
fn stream_error(session: &Session, e: io::Error) -> io::Error {
    match stream_error_kind(session, &e) {
        ErrorKind::Transient => io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()),
        _ => e,
    }
}

struct SshReader {
    file: Option<ssh2::File>,
    lease: Lease,
}

impl Read for SshReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("reader already failed"));
        };
        match f.read(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                let e = stream_error(&self.lease.conn().session, e);
                if e.kind() == io::ErrorKind::ConnectionAborted {
                    self.lease.poison();
                }
                Err(e)
            }
        }
    }
}

impl Drop for SshReader {
    fn drop(&mut self) {
        // The handle closes (one round trip) before the connection returns to the pool.
        self.file.take();
    }
}

struct SshAtomicFile {
    writer: Option<BufWriter<ssh2::File>>,
    lease: Lease,
    loc: String,
    dir: String,
    tmp: String,
    done: bool,
}

impl SshAtomicFile {
    /// Classify a streaming error; a broken connection is retired at once.
    fn fail(&mut self, e: io::Error) -> io::Error {
        let e = stream_error(&self.lease.conn().session, e);
        if e.kind() == io::ErrorKind::ConnectionAborted {
            self.lease.poison();
        }
        // SFTP version 3 has no "no space" status: sshd answers a write that hits a
        // full disk or a quota with the bare SSH_FX_FAILURE, which libssh2 words as
        // "failure". Say what it almost always means.
        if e.to_string().eq_ignore_ascii_case("failure") {
            return io::Error::new(
                e.kind(),
                "the backup host failed the write without a reason (SFTP reports none; \
                 usually its filesystem is full or over quota: check df there)",
            );
        }
        e
    }
}

impl Write for SshAtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => return Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.fail(e))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let r = match self.writer.as_mut() {
            Some(w) => w.write_all(buf),
            None => return Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.fail(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        };
        r.map_err(|e| self.fail(e))
    }
}

impl AtomicFile for SshAtomicFile {
    fn commit(mut self: Box<Self>, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        check_path(final_name)?;
        if final_name.contains('/') {
            return Err(Error::invalid(format!(
                "final name {final_name:?} must not contain '/'"
            )));
        }
        let r = self.commit_inner(final_name, overwrite);
        if let Err(e) = &r {
            if e.is_transient() {
                self.lease.poison();
            }
        }
        r
    }
}

impl SshAtomicFile {
    fn commit_inner(&mut self, final_name: &str, overwrite: Overwrite) -> Result<Committed> {
        let loc = self.loc.clone();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::invalid("file committed twice"))?;
        let mut file = match writer.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let err = stream_error(&self.lease.conn().session, e.into_error());
                return Err(Error::io(format!("{loc}: writing {}", self.tmp), err));
            }
        };
        file.fsync().map_err(|e| {
            if is_sftp_status(&e, FX_OP_UNSUPPORTED) {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "{loc}: the SSH server does not support fsync@openssh.com, so {} cannot \
                         be made durable; use an OpenSSH server (5.6 or later)",
                        self.tmp
                    ),
                )
            } else {
                ssh_error(&loc, format!("fsync {}", self.tmp), e)
            }
        })?;
        file.close()
            .map_err(|e| ssh_error(&loc, format!("closing {}", self.tmp), e))?;
        drop(file);
        crate::util::fault::pause_before_rename();
        crate::util::fault::crash_before_rename();
        let dest = join_abs(&self.dir, final_name);
        let conn = self.lease.conn();
        let outcome = match overwrite {
            Overwrite::Replace => {
                conn.replace(&loc, &self.tmp, &dest)?;
                Committed::Created
            }
            // OpenSSH's SSH_FXP_RENAME is link()+unlink(): it fails if `dest` exists,
            // so two racing writers can never replace each other's file.
            Overwrite::Never => {
                match conn.sftp.rename(
                    Path::new(&self.tmp),
                    Path::new(&dest),
                    Some(RenameFlags::ATOMIC | RenameFlags::NATIVE),
                ) {
                    Ok(()) => Committed::Created,
                    Err(e)
                        if is_sftp_status(&e, FX_FAILURE)
                            || is_sftp_status(&e, FX_FILE_ALREADY_EXISTS) =>
                    {
                        if conn.stat(&loc, &dest)?.is_none() {
                            return Err(ssh_error(
                                &loc,
                                format!("renaming {} to {dest}", self.tmp),
                                e,
                            ));
                        }
                        let _ = conn.sftp.unlink(Path::new(&self.tmp));
                        self.done = true;
                        return Ok(Committed::AlreadyExists);
                    }
                    Err(e) => {
                        return Err(ssh_error(
                            &loc,
                            format!("renaming {} to {dest}", self.tmp),
                            e,
                        ))
                    }
                }
            }
        };
        self.done = true;
        let dir = self.dir.clone();
        self.lease.conn().sync_dir(&loc, &dir)?;
        Ok(outcome)
    }
}

impl Drop for SshAtomicFile {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.lease.poisoned {
            // Nothing can reach the server now; the temporary name is ignored by readers.
            if let Some(w) = self.writer.take() {
                let (f, _unflushed) = w.into_parts();
                drop(f);
            }
            return;
        }
        if let Some(w) = self.writer.take() {
            // Drop the buffered tail unwritten: the file is being abandoned.
            let (f, _unflushed) = w.into_parts();
            drop(f);
        }
        let _ = self.lease.conn().sftp.unlink(Path::new(&self.tmp));
    }
}

fn to_file_info(st: &FileStat) -> FileInfo {
    FileInfo {
        size: if st.is_dir() { 0 } else { st.size.unwrap_or(0) },
        is_dir: st.is_dir(),
        mtime: UNIX_EPOCH + Duration::from_secs(st.mtime.unwrap_or(0)),
    }
}

impl Storage for SshStorage {
    fn location(&self) -> String {
        self.loc()
    }

    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let abs = self.abs(dir)?;
        self.with_conn(|c| match c.sftp.readdir(Path::new(&abs)) {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter_map(|(p, st)| {
                    let name = p.file_name()?.to_str()?.to_string();
                    Some(DirEntry {
                        name,
                        is_dir: st.is_dir(),
                        size: if st.is_dir() { 0 } else { st.size.unwrap_or(0) },
                    })
                })
                .collect()),
            Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(Vec::new()),
            Err(e) => Err(self.err(format!("listing {abs}"), e)),
        })
    }

    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.with_conn(|c| Ok(c.stat(&loc, &abs)?.as_ref().map(to_file_info)))
    }

    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let abs = self.abs(path)?;
        let mut lease = self.lease()?;
        match lease.conn().sftp.open(Path::new(&abs)) {
            Ok(file) => Ok(Box::new(SshReader {
                file: Some(file),
                lease,
            })),
            Err(e) => {
                let err = self.err(format!("opening {abs}"), e);
                if err.is_transient() {
                    lease.poison();
                }
                Err(err)
            }
        }
    }

    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        let dir = self.abs(dir)?;
        let tmp = join_abs(&dir, &temp_name());
        let mut lease = self.lease()?;
        let opened = lease.conn().sftp.open_mode(
            Path::new(&tmp),
            OpenFlags::WRITE | OpenFlags::EXCLUSIVE,
            0o600,
            OpenType::File,
        );
        match opened {
            Ok(file) => Ok(Box::new(SshAtomicFile {
                writer: Some(BufWriter::with_capacity(WRITE_BUF, file)),
                lease,
                loc: self.loc(),
                dir,
                tmp,
                done: false,
            })),
            Err(e) => {
                let err = self.err(format!("creating {tmp}"), e);
                if err.is_transient() {
                    lease.poison();
                }
                Err(err)
            }
        }
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        let abs = self.abs(dir)?;
        let loc = self.loc();
        self.with_conn(|c| c.mkdir_p(&loc, &abs, 0))
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        self.with_conn(|c| match c.sftp.unlink(Path::new(&abs)) {
            Ok(()) => Ok(()),
            Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => Ok(()),
            Err(e) => Err(self.err(format!("removing {abs}"), e)),
        })
    }

    fn remove_file_synced(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.with_conn(|c| {
            match c.sftp.unlink(Path::new(&abs)) {
                Ok(()) => {}
                Err(e) if is_sftp_status(&e, FX_NO_SUCH_FILE) => {}
                Err(e) => return Err(self.err(format!("removing {abs}"), e)),
            }
            c.sync_dir(&loc, parent_of(&abs))
        })
    }

    fn remove_dir_all(&self, path: &str) -> Result<()> {
        let abs = self.abs(path)?;
        let loc = self.loc();
        self.with_conn(|c| {
            let cmd = format!("rm -rf -- {}", shell_quote(&abs));
            let (code, err) = c.exec(&loc, &cmd, b"")?;
            if code != 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("{loc}: {cmd} failed with status {code}: {err}"),
                ));
            }
            c.sync_dir(&loc, parent_of(&abs))
        })
    }

    fn hard_link_all(&self, links: &[(String, String)]) -> Result<()> {
        if links.is_empty() {
            return Ok(());
        }
        let mut script = String::from(
            "l() { ln -- \"$1\" \"$2\" 2>/dev/null || [ -e \"$2\" ] || ln -- \"$1\" \"$2\"; }\n",
        );
        let mut dirs = std::collections::BTreeSet::new();
        for (src, dst) in links {
            let s = self.abs(src)?;
            let d = self.abs(dst)?;
            dirs.insert(parent_of(&d).to_string());
            script.push_str(&format!(
                "l {} {} || exit 1\n",
                shell_quote(&s),
                shell_quote(&d)
            ));
        }
        // `sync FILE...` fsyncs each named directory (coreutils 8.24+); where that is
        // not available, a global sync is the durable fallback.
        let quoted: Vec<String> = dirs.iter().map(|d| shell_quote(d)).collect();
        script.push_str(&format!(
            "sync -- {} 2>/dev/null || sync || exit 2\n",
            quoted.join(" ")
        ));
        let loc = self.loc();
        self.with_conn(|c| {
            let (code, err) = c.exec(&loc, "sh -s", script.as_bytes())?;
            if code != 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{loc}: creating {} hard links on the backup host failed (status {code}): {err}",
                        links.len()
                    ),
                ));
            }
            Ok(())
        })
    }
}

/// The trait requires it; fail the build, not a user, if that ever changes.
const _: () = {
    const fn is<T: Send + Sync>() {}
    is::<SshStorage>()
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn fingerprint_format_matches_openssh() {
        // ssh-keygen -lf prints SHA256:<43 chars of unpadded base64> for 32 bytes.
        let fp = fingerprint_sha256(&[0u8; 32]);
        assert_eq!(fp, "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    }

    #[test]
    fn paths() {
        assert_eq!(join_abs("/", "a"), "/a");
        assert_eq!(join_abs("/srv/r", "a/b"), "/srv/r/a/b");
        assert_eq!(parent_of("/srv/r/a"), "/srv/r");
        assert_eq!(parent_of("/srv"), "/");
        assert_eq!(parent_of("/"), "/");
    }
}
