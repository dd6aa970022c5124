//! Where the repository is: login, host, port and root from the URL, and absolute
//! paths on the backup host under that root.

use crate::storage::url::RepoUrl;

/// Where the repository is: login, host, port and the absolute root path.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) user: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) root: String,
}

impl Target {
    pub(super) fn url(&self) -> String {
        RepoUrl::Ssh {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.root.clone(),
        }
        .to_string()
    }

    /// The host as known_hosts names it: `host` on port 22, else `[host]:port`.
    pub(super) fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// `root` joined with a checked relative path.
pub(super) fn join_abs(root: &str, rel: &str) -> String {
    if root == "/" {
        format!("/{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

/// The directory holding `abs` (`/` for the root).
pub(super) fn parent_of(abs: &str) -> &str {
    match abs.rfind('/') {
        Some(0) => "/",
        Some(i) => &abs[..i],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(join_abs("/", "a"), "/a");
        assert_eq!(join_abs("/srv/r", "a/b"), "/srv/r/a/b");
        assert_eq!(parent_of("/srv/r/a"), "/srv/r");
        assert_eq!(parent_of("/srv"), "/");
        assert_eq!(parent_of("/"), "/");
    }
}
