//! What an ssh2 error means: SFTP statuses about a file versus a connection in
//! trouble (transient, retried on a fresh connection where the caller allows).

use crate::error::{Error, ErrorKind};
use ssh2::{ErrorCode, Session};
use std::io;

// SFTP status codes (draft-ietf-secsh-filexfer-02) that we branch on.
pub(super) const FX_NO_SUCH_FILE: i32 = 2;
pub(super) const FX_FAILURE: i32 = 4;
pub(super) const FX_OP_UNSUPPORTED: i32 = 8;
pub(super) const FX_NO_CONNECTION: i32 = 6;
pub(super) const FX_CONNECTION_LOST: i32 = 7;
pub(super) const FX_FILE_ALREADY_EXISTS: i32 = 11;

/// libssh2 session error codes that mean "the connection is in trouble": a retry on a
/// fresh connection may succeed.
pub(super) const TRANSIENT_SESSION_CODES: &[i32] = &[
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

/// The kind of an ssh2 error: SFTP statuses say what happened to the file; session
/// errors mean the connection failed.
pub(super) fn classify(e: &ssh2::Error) -> ErrorKind {
    match e.code() {
        ErrorCode::SFTP(FX_NO_SUCH_FILE) => ErrorKind::NotFound,
        ErrorCode::SFTP(FX_NO_CONNECTION | FX_CONNECTION_LOST) => ErrorKind::Transient,
        ErrorCode::SFTP(_) => ErrorKind::Io,
        ErrorCode::Session(c) if TRANSIENT_SESSION_CODES.contains(&c) => ErrorKind::Transient,
        ErrorCode::Session(_) => ErrorKind::Io,
    }
}

pub(super) fn is_sftp_status(e: &ssh2::Error, status: i32) -> bool {
    e.code() == ErrorCode::SFTP(status)
}

pub(super) fn ssh_error(loc: &str, what: impl std::fmt::Display, e: ssh2::Error) -> Error {
    let kind = classify(&e);
    let hint = if kind == ErrorKind::Transient {
        " (network or backup host problem; will be retried where allowed)"
    } else {
        ""
    };
    Error::new(kind, format!("{loc}: {what}: {}{hint}", e.message()))
}

pub(super) fn transient(msg: String) -> Error {
    Error::new(ErrorKind::Transient, msg)
}

/// Whether an io::Error from streaming on `session` came from the connection (rather
/// than an SFTP status such as "no space"): the session's last error tells.
pub(super) fn stream_error_kind(session: &Session, e: &io::Error) -> ErrorKind {
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
pub(super) fn stream_error(session: &Session, e: io::Error) -> io::Error {
    match stream_error_kind(session, &e) {
        ErrorKind::Transient => io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()),
        _ => e,
    }
}
