//! Opening one session: name resolution bounded by the connect timeout, TCP, the
//! SSH handshake with our algorithm preferences, then host key and authentication.

use super::auth::authenticate;
use super::conn::Conn;
use super::errors::{classify, ssh_error, transient};
use super::ffi::install_quickack_recv;
use super::host_key::verify_host_key;
use super::options::SshOptions;
use super::target::Target;
use crate::error::{Error, Result};
use crate::log_debug;
use ssh2::{MethodType, Session};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

/// Host key algorithms in order of preference (OpenSSH's order for the common ones),
/// so that the key the server shows is the one a modern known_hosts holds.
pub(super) const HOSTKEY_PREFS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";

/// Ciphers in order of preference (unknown names are ignored by libssh2).
pub(super) const CIPHER_PREFS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr";

pub(super) fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// Resolve `host`, bounded by `timeout`: getaddrinfo has no timeout of its own, and a
/// dead DNS server would otherwise hang archive_command for as long as the resolver's
/// retries last (resolv.conf's timeout x attempts x servers, a minute or more). A
/// lookup that overruns is left to finish on its own thread, which dies with the
/// process.
pub(super) fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<Vec<SocketAddr>> {
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
pub(super) fn connect(t: &Target, s: &SshOptions, dir_fsync: Arc<AtomicU8>) -> Result<Conn> {
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
