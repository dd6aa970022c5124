//! What the SSH driver is told ([`SshOptions`]), and where the defaults of those
//! options live: the local user's `~/.ssh`.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach and trust a backup host: what the SSH driver needs, nothing more.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Private key file; `None` means the agent, then `~/.ssh/id_*`.
    pub identity: Option<PathBuf>,
    /// known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// Accept and store an unknown host key.
    pub accept_new_host_key: bool,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Per-operation I/O timeout.
    pub io_timeout: Duration,
}

/// The home directory of the effective user, as OpenSSH finds `~` (the password
/// database, not `$HOME`, which `runuser` and cron may leave pointing elsewhere).
pub(super) fn home_dir() -> Option<PathBuf> {
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
