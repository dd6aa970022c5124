//! Host key verification against OpenSSH's known_hosts, with opt-in accept-new.

use super::errors::ssh_error;
use super::options::{home_dir, SshOptions};
use super::target::Target;
use crate::error::{Error, Result};
use crate::{log_debug, log_notice};
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};
use std::io::{self, Write};
use std::path::Path;

/// OpenSSH's fingerprint text: `SHA256:` and unpadded base64 of the key's SHA-256.
pub fn fingerprint_sha256(digest: &[u8]) -> String {
    use base64::Engine;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// (known_hosts key type, OpenSSH's display name) of a host key type.
pub(super) fn key_type_names(t: HostKeyType) -> Option<(&'static str, &'static str)> {
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

pub(super) fn verify_host_key(session: &Session, t: &Target, s: &SshOptions) -> Result<()> {
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

pub(super) fn append_known_host(
    path: &Path,
    name: &str,
    type_name: &str,
    key: &[u8],
) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format_matches_openssh() {
        // ssh-keygen -lf prints SHA256:<43 chars of unpadded base64> for 32 bytes.
        let fp = fingerprint_sha256(&[0u8; 32]);
        assert_eq!(fp, "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    }
}
