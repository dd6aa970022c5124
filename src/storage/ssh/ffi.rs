//! The raw libssh2 calls the `ssh2` crate does not wrap: a receive callback that
//! re-arms TCP quick-ack, and `posix-rename@openssh.com` on a second SFTP channel
//! (with its shutdown when the connection goes). The SSH driver's `unsafe` code
//! that talks to libssh2 is all here.

use super::conn::Conn;
use super::errors::{classify, FX_OP_UNSUPPORTED};
use crate::error::ErrorKind;
use ssh2::{ErrorCode, Session};
use std::ffi::CString;
use std::io;

/// Functions of the libssh2 that `libssh2-sys` builds and links, which the `ssh2`
/// crate does not wrap. Pointers are opaque here.
mod sys {
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

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(p) = self.posix.take() {
            let _session_lock = self.session.raw();
            // SAFETY: `p` came from libssh2_sftp_init on this session, which is alive
            // and locked; it is shut down exactly once.
            unsafe {
                sys::libssh2_sftp_shutdown(p);
            }
        }
    }
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

pub(super) fn install_quickack_recv(session: &Session) {
    const LIBSSH2_CALLBACK_RECV: libc::c_int = 6;
    let mut raw = session.raw();
    let sess_ptr = &mut *raw as *mut _ as *mut std::os::raw::c_void;
    let cb: sys::RecvFn = recv_quickack;
    // SAFETY: the session is valid and locked; the callback has the exact C
    // signature libssh2 expects for LIBSSH2_CALLBACK_RECV (LIBSSH2_RECV_FUNC).
    unsafe {
        sys::libssh2_session_callback_set2(sess_ptr, LIBSSH2_CALLBACK_RECV, cb);
    }
}

impl Conn {
    /// `posix-rename@openssh.com`: Ok(true) done, Ok(false) unsupported by the server.
    pub(super) fn posix_rename(
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
                let p = unsafe { sys::libssh2_sftp_init(sess_ptr) };
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
            sys::libssh2_sftp_posix_rename_ex(
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
            let status = unsafe { sys::libssh2_sftp_last_error(sftp) } as i32;
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
}
