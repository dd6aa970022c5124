//! Repository URLs: `/abs/path`, `file:///abs/path`, `ssh://user@host[:port]/abs/path`,
//! `s3://bucket[/prefix]`.

use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// A directory on this host (local disk or a mount).
    Local(PathBuf),
    /// A directory on a backup host reached over SSH/SFTP.
    Ssh {
        /// Login name on the backup host.
        user: String,
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
        /// Absolute path of the repository on that host.
        path: String,
    },
    /// A bucket (and key prefix inside it) of an S3-compatible object store.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix of the repository inside the bucket, without slashes at either
        /// end; empty for the bucket's root.
        prefix: String,
    },
}

impl RepoUrl {
    /// Parse a repository URL, refusing relative and ambiguous forms.
    pub fn parse(s: &str) -> Result<RepoUrl> {
        let bad = |why: &str| {
            Error::config(format!(
                "repository {s:?}: {why} (use /abs/path, file:///abs/path, ssh://user@host[:port]/abs/path or s3://bucket[/prefix])"
            ))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_end_matches('/');
            if !valid_bucket(bucket) {
                return Err(bad(
                    "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'",
                ));
            }
            if !prefix.is_empty() && super::path::check_path(prefix).is_err() {
                return Err(bad(
                    "the prefix must be relative and normal (no '.', '..' or '//')",
                ));
            }
            return Ok(RepoUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (authority, path) = rest
                .split_once('/')
                .ok_or_else(|| bad("missing the absolute path after the host"))?;
            let path = format!("/{path}");
            let (user, hostport) = authority
                .rsplit_once('@')
                .ok_or_else(|| bad("missing user@ before the host"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                // [::1]:port
                let (h, rest) = h.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                let port = match rest.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                    None if rest.is_empty() => 22,
                    None => return Err(bad("bad host")),
                };
                (h.to_string(), port)
            } else {
                match hostport.split_once(':') {
                    Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                    None => (hostport.to_string(), 22),
                }
            };
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            check_abs(&path).map_err(|_| bad("the path must be absolute and normal"))?;
            return Ok(RepoUrl::Ssh {
                user: user.to_string(),
                host,
                port,
                path,
            });
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if s.contains("://") && !s.starts_with("file://") {
            return Err(bad("unknown scheme"));
        }
        check_abs(path).map_err(|_| bad("the path must be absolute and normal"))?;
        Ok(RepoUrl::Local(PathBuf::from(path)))
    }
}

/// S3's bucket naming rules (the DNS-safe subset every store accepts).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && b.as_bytes()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && !b.contains("..")
}

fn check_abs(path: &str) -> std::result::Result<(), ()> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(());
    }
    if path.split('/').skip(1).any(|c| c == "." || c == "..") {
        return Err(());
    }
    Ok(())
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::Local(p) => write!(f, "{}", p.display()),
            RepoUrl::Ssh {
                user,
                host,
                port,
                path,
            } => {
                if host.contains(':') {
                    write!(f, "ssh://{user}@[{host}]:{port}{path}")
                } else {
                    write!(f, "ssh://{user}@{host}:{port}{path}")
                }
            }
            RepoUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RepoUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            RepoUrl::parse("/srv/backup").unwrap(),
            RepoUrl::Local("/srv/backup".into())
        );
        assert_eq!(
            RepoUrl::parse("file:///srv/backup").unwrap(),
            RepoUrl::Local("/srv/backup".into())
        );
        assert_eq!(
            RepoUrl::parse("ssh://bk@host:2222/srv/r").unwrap(),
            RepoUrl::Ssh {
                user: "bk".into(),
                host: "host".into(),
                port: 2222,
                path: "/srv/r".into()
            }
        );
        assert_eq!(
            RepoUrl::parse("ssh://bk@[::1]/r").unwrap().to_string(),
            "ssh://bk@[::1]:22/r"
        );
        assert_eq!(
            RepoUrl::parse("s3://pg-backups/prod/main/").unwrap(),
            RepoUrl::S3 {
                bucket: "pg-backups".into(),
                prefix: "prod/main".into()
            }
        );
        assert_eq!(
            RepoUrl::parse("s3://pg-backups").unwrap().to_string(),
            "s3://pg-backups"
        );
        for bad in [
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "s3://b-/x",
            "s3://bucket/a/../b",
            "s3://bucket//a",
            "relative/dir",
            "",
            "http://x/y",
            "ssh://host/r",
            "ssh://u@host",
            "ssh://u@h:x/r",
            "/a/../b",
            "file://rel",
        ] {
            assert!(RepoUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
