//! Public key authentication: the configured identity, else the agent, else the
//! default `~/.ssh/id_*` keys, with a message that says what to fix.

use super::errors::{classify, ssh_error};
use super::options::{home_dir, SshOptions};
use super::target::Target;
use crate::error::{Error, ErrorKind, Result};
use ssh2::Session;

pub(super) fn authenticate(session: &Session, t: &Target, s: &SshOptions) -> Result<()> {
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

pub(super) fn refused(loc: &str, user: &str, host: &str, id: &str, detail: &str) -> Error {
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
