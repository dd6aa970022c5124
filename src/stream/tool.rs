//! Finding PostgreSQL's own `pg_receivewal` for the server's major, and the command
//! line it runs with.
//!
//! We supervise pg_receivewal (as Barman does) rather than speak the replication
//! protocol: it is PostgreSQL's own, tested client of that protocol (slots, timeline
//! switches, synchronous feedback, every libpq authentication and TLS mode), while no
//! maintained Rust crate implements physical streaming replication (rust-postgres has
//! no CopyBoth; the crates that do are logical-only or unpublished forks).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pg_receivewal and the major it belongs to.
#[derive(Debug, Clone)]
pub struct Tool {
    /// Its path.
    pub path: PathBuf,
    /// Its major version (15 for "pg_receivewal (PostgreSQL) 15.14").
    pub major: u32,
}

/// The major in `pg_receivewal --version` output.
fn parse_version(out: &str) -> Option<u32> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "(PostgreSQL)")?;
    let v = words.next()?;
    let major: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    major.parse().ok()
}

fn probe(path: &Path) -> Option<Tool> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let major = parse_version(&String::from_utf8_lossy(&out.stdout))?;
    Some(Tool {
        path: path.to_path_buf(),
        major,
    })
}

/// The pg_receivewal to run for a server of `server_major`: `explicit` if given,
/// else the first of Debian's `/usr/lib/postgresql/<major>/bin`, `$PG_BINDIR` and
/// `$PATH` whose major is the server's. A newer client streams from an older
/// server (PostgreSQL supports that); an older one cannot stream from a newer one.
pub fn find(explicit: Option<&Path>, server_major: u32) -> Result<Tool> {
    if let Some(p) = explicit {
        let tool = probe(p).ok_or_else(|| {
            Error::config(format!(
                "{} is not a working pg_receivewal (its --version failed)",
                p.display()
            ))
        })?;
        if tool.major < server_major {
            return Err(Error::config(format!(
                "{} is pg_receivewal {}, older than the server (PostgreSQL {server_major}), \
                 which it cannot stream from; install postgresql-client-{server_major}",
                p.display(),
                tool.major
            )));
        }
        return Ok(tool);
    }
    let mut candidates = vec![PathBuf::from(format!(
        "/usr/lib/postgresql/{server_major}/bin/pg_receivewal"
    ))];
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        candidates.push(PathBuf::from(dir).join("pg_receivewal"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pg_receivewal")));
    }
    let mut seen = Vec::new();
    for c in candidates.iter().filter(|c| c.is_file()) {
        if let Some(tool) = probe(c) {
            if tool.major == server_major {
                return Ok(tool);
            }
            seen.push(format!("{} ({})", c.display(), tool.major));
        }
    }
    Err(Error::config(format!(
        "no pg_receivewal for PostgreSQL {server_major} found{}; install \
         postgresql-client-{server_major} or name one with --pg-receivewal",
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found {})", seen.join(", "))
        }
    )))
}

/// `conninfo` naming the stream to the server as `application_name`, which is what
/// `synchronous_standby_names` and `pg_stat_replication` match. A name the user
/// already set wins.
pub fn with_application_name(conninfo: &str, application_name: &str) -> String {
    if conninfo.contains("application_name") {
        return conninfo.to_string();
    }
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        let sep = if conninfo.contains('?') { '&' } else { '?' };
        return format!("{conninfo}{sep}application_name={application_name}");
    }
    format!("{conninfo} application_name={application_name}")
        .trim()
        .to_string()
}

/// What pg_receivewal is run with.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The spool directory.
    pub spool: &'a Path,
    /// Slot name.
    pub slot: &'a str,
    /// Connection string (application_name included).
    pub conninfo: &'a str,
    /// Flush and report every write.
    pub synchronous: bool,
    /// Seconds between status packets to the server.
    pub status_interval: u64,
}

/// The command that streams into the spool. `--no-loop`: the receiver itself
/// reconnects (with backoff, after checking the server is still the registered one).
pub fn command(tool: &Tool, inv: &Invocation<'_>) -> Command {
    let mut cmd = Command::new(&tool.path);
    cmd.arg("--directory")
        .arg(inv.spool)
        .arg("--slot")
        .arg(inv.slot)
        .arg("--dbname")
        .arg(inv.conninfo)
        .arg("--no-loop")
        .arg("--no-password")
        .arg("--verbose")
        .arg("--status-interval")
        .arg(inv.status_interval.to_string());
    if inv.synchronous {
        cmd.arg("--synchronous");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_application_names() {
        assert_eq!(
            parse_version("pg_receivewal (PostgreSQL) 15.14\n"),
            Some(15)
        );
        assert_eq!(
            parse_version("pg_receivewal (PostgreSQL) 17.2 (Debian 17.2-1)"),
            Some(17)
        );
        assert_eq!(parse_version("something else 16"), None);
        assert_eq!(
            parse_version("pg_receivewal (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(
            with_application_name("host=/tmp port=5", "pgcellar"),
            "host=/tmp port=5 application_name=pgcellar"
        );
        assert_eq!(with_application_name("", "x"), "application_name=x");
        assert_eq!(
            with_application_name("postgresql://h/db?sslmode=require", "x"),
            "postgresql://h/db?sslmode=require&application_name=x"
        );
        assert_eq!(
            with_application_name("host=h application_name=mine", "x"),
            "host=h application_name=mine"
        );
    }
}
