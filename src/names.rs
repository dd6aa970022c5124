//! Validation of names that come from users, files or the repository, before they
//! become paths or reach a message. A leaf: it imports nothing of pgcellar but the
//! error type, so every layer may use it.

use crate::error::{Error, Result};

/// Check a server name: 1-64 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn check_server_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "server name {:?} is not allowed: use 1-64 letters, digits, '_', '-' or '.', \
             starting with a letter or digit",
            truncate_for_display(name)
        )))
    }
}

/// Shorten hostile input before echoing it in an error line.
pub fn truncate_for_display(s: &str) -> String {
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(80).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}
