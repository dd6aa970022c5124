//! Reading `archive_command`: the `wal-push` call in it and the repository and server
//! its words name, compared with the ones being checked.

use super::report::Status;

/// Where a `wal-push` command line sends WAL, as far as the line itself tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushTarget {
    /// The repository (`--repo`, `PGCELLAR_REPO=` before the command, or the config file).
    pub repo: Option<String>,
    /// The server name, likewise.
    pub server: Option<String>,
    /// The `--config` file (or `PGCELLAR_CONFIG=`), if any.
    pub config: Option<String>,
}

/// Split a shell command line into words (quotes and backslashes as `sh` reads
/// them), with `;`, `&`, `|` as words of their own.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ';' | '&' | '|' | '(' | ')' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                words.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Find the `wal-push` call in `archive_command` and the repository, server and
/// config file its own words name; `None` if it does not call `wal-push`.
pub fn parse_push_command(command: &str) -> Option<PushTarget> {
    let words = shell_words(command);
    let is_sep = |w: &str| matches!(w, ";" | "&" | "|" | "(" | ")");
    let at = words.iter().position(|w| {
        !is_sep(w)
            && std::path::Path::new(w)
                .file_name()
                .is_some_and(|n| n == "wal-push")
    })?;
    let mut t = PushTarget::default();
    // Environment assignments of the same simple command (`PGCELLAR_SERVER=x wal-push`,
    // `env PGCELLAR_REPO=y wal-push`).
    let cmd_start = words[..at]
        .iter()
        .rposition(|w| is_sep(w))
        .map_or(0, |p| p + 1);
    for w in &words[cmd_start..at] {
        if let Some((k, v)) = w.split_once('=') {
            match k {
                "PGCELLAR_REPO" => t.repo = Some(v.to_string()),
                "PGCELLAR_SERVER" => t.server = Some(v.to_string()),
                "PGCELLAR_CONFIG" => t.config = Some(v.to_string()),
                _ => {}
            }
        }
    }
    let args: Vec<&String> = words[at + 1..].iter().take_while(|w| !is_sep(w)).collect();
    let mut k = 0;
    while k < args.len() {
        let a = args[k].as_str();
        let mut take = |flag: &str, slot: &mut Option<String>| -> bool {
            if a == flag {
                if let Some(v) = args.get(k + 1) {
                    *slot = Some((*v).clone());
                    k += 1;
                }
                true
            } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                *slot = Some(v.to_string());
                true
            } else {
                false
            }
        };
        let _ = take("--repo", &mut t.repo)
            || take("--server", &mut t.server)
            || take("--config", &mut t.config);
        k += 1;
    }
    Some(t)
}

/// Whether two repository locations are the same place.
fn same_repo(a: &str, b: &crate::storage::RepoUrl) -> bool {
    use crate::storage::RepoUrl;
    match (RepoUrl::parse(a), b) {
        (Ok(RepoUrl::Local(x)), RepoUrl::Local(y)) => {
            let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
            canon(&x) == canon(y)
        }
        (Ok(x), y) => x == *y,
        (Err(_), _) => false,
    }
}

/// The `archive_command` row: does the command push to the repository and server
/// being checked?
pub(super) fn archive_command_check(
    command: &str,
    repo: Option<&crate::storage::RepoUrl>,
    server: &str,
) -> (Status, String) {
    let Some(mut t) = parse_push_command(command) else {
        return (
            Status::Critical,
            format!("archive_command = {command:?} does not call wal-push"),
        );
    };
    let mut notes = Vec::new();
    if let Some(cfg) = &t.config {
        match crate::config::repo_and_server(std::path::Path::new(cfg)) {
            Ok((repo, server)) => {
                t.repo = t.repo.or(repo);
                t.server = t.server.or(server);
            }
            Err(e) => notes.push(format!("cannot read its configuration file: {e}")),
        }
    }
    let mut problems = Vec::new();
    match (&t.server, server) {
        (Some(theirs), ours) if theirs != ours => problems.push(format!(
            "it pushes to server {theirs}, but this check is for server {ours}"
        )),
        _ => {}
    }
    match (&t.repo, repo) {
        (Some(theirs), Some(ours)) if !same_repo(theirs, ours) => problems.push(format!(
            "it pushes to repository {theirs}, but this check is for repository {ours}"
        )),
        _ => {}
    }
    if !problems.is_empty() {
        return (
            Status::Critical,
            format!(
                "archive_command = {command:?}: {}; WAL does not reach the repository checked",
                problems.join("; ")
            ),
        );
    }
    let mut unseen = Vec::new();
    if t.repo.is_none() {
        unseen.push("repository");
    }
    if t.server.is_none() {
        unseen.push("server");
    }
    if !unseen.is_empty() {
        notes.push(format!(
            "cannot see which {} it uses (not on its command line{}): PostgreSQL's \
             environment (PGCELLAR_REPO, PGCELLAR_SERVER, PGCELLAR_CONFIG) may set it; \
             name them with --repo/--server or --config in archive_command",
            unseen.join(" and "),
            if t.config.is_some() {
                " or in its --config file"
            } else {
                ""
            }
        ));
    }
    if notes.is_empty() {
        (
            Status::Ok,
            format!("archive_command = {command} (server {server})"),
        )
    } else {
        (
            Status::Warning,
            format!("archive_command = {command:?}: {}", notes.join("; ")),
        )
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_target_is_read_from_the_command_line() {
        let t = parse_push_command("/usr/local/bin/wal-push -v --repo /srv/r --server main %p")
            .unwrap();
        assert_eq!(t.repo.as_deref(), Some("/srv/r"));
        assert_eq!(t.server.as_deref(), Some("main"));
        let t = parse_push_command(
            "PGCELLAR_SERVER=db2 env 'wal-push' --repo='ssh://b@h/srv r' --config \"/etc/p c.toml\" \"%p\"",
        )
        .unwrap();
        assert_eq!(t.server.as_deref(), Some("db2"));
        assert_eq!(t.repo.as_deref(), Some("ssh://b@h/srv r"));
        assert_eq!(t.config.as_deref(), Some("/etc/p c.toml"));
        // Only the wal-push command's own words count.
        let t = parse_push_command("test -f /x; wal-push %p && echo --server=no").unwrap();
        assert_eq!(t, PushTarget::default());
        assert!(parse_push_command("cp %p /mnt/wal-push-dir/%f").is_none());
        assert!(parse_push_command("/bin/true").is_none());
    }

    #[test]
    fn a_command_for_another_server_or_repository_is_critical() {
        let ours = crate::storage::RepoUrl::parse("/srv/r").unwrap();
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/r --server main %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Ok, "{m}");
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/r --server other %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Critical);
        assert!(
            m.contains("server other") && m.contains("server main"),
            "{m}"
        );
        let (s, m) = archive_command_check(
            "wal-push --repo /srv/x --server main %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Critical);
        assert!(m.contains("/srv/x") && m.contains("/srv/r"), "{m}");
        let (s, m) = archive_command_check("wal-push %p", Some(&ours), "main");
        assert_eq!(s, Status::Warning);
        assert!(m.contains("PGCELLAR_REPO"), "{m}");
        let (s, m) = archive_command_check(
            "wal-push --config /nonexistent/p.toml %p",
            Some(&ours),
            "main",
        );
        assert_eq!(s, Status::Warning);
        assert!(m.contains("/nonexistent/p.toml"), "{m}");
    }
}
