//! Sessions through libpq-compatible settings (the `postgres` crate), and typed reads of
//! their results.

use crate::error::{Error, ErrorKind, Result};
use postgres::{Client, NoTls};
use std::time::Duration;

/// What identifies a running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    /// `pg_control_system().system_identifier`.
    pub system_id: u64,
    /// `server_version_num`.
    pub version_num: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Data block size in bytes.
    pub block_size: u32,
}

impl ClusterIdentity {
    /// Major version (15 for 150018).
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// Build a connection config from a keyword=value string, filling what it leaves out
/// from PGHOST/PGPORT/PGUSER/PGDATABASE/PGPASSWORD and libpq's defaults.
pub fn connect_config(conninfo: Option<&str>) -> Result<postgres::Config> {
    let text = conninfo.unwrap_or("");
    // The parser's own message is only "invalid connection string"; its cause names
    // the keyword or value that is wrong.
    let mut cfg: postgres::Config = text.parse().map_err(|e: postgres::Error| {
        Error::config(format!(
            "bad --conninfo {:?} (expected keyword=value pairs, e.g. 'host=/var/run/postgresql \
             port=5432 user=postgres'): {}",
            crate::names::truncate_for_display(text),
            describe(&e)
        ))
    })?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        let hosts = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".to_string());
        for h in hosts.split(',') {
            if h.starts_with('/') {
                cfg.host_path(h);
            } else {
                cfg.host(h);
            }
        }
    }
    if cfg.get_ports().is_empty() {
        if let Some(p) = env("PGPORT") {
            let port = p
                .parse()
                .map_err(|_| Error::config(format!("PGPORT={p:?} is not a port number")))?;
            cfg.port(port);
        }
    }
    if cfg.get_user().is_none() {
        let user = env("PGUSER").or_else(|| env("USER")).or_else(current_user);
        if let Some(u) = user {
            cfg.user(&u);
        }
    }
    if cfg.get_dbname().is_none() {
        if let Some(d) = env("PGDATABASE") {
            cfg.dbname(&d);
        } else {
            // libpq's default too, and always present.
            cfg.dbname("postgres");
        }
    }
    if cfg.get_password().is_none() {
        if let Some(p) = env("PGPASSWORD") {
            cfg.password(p);
        }
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    cfg.application_name("pgcellar");
    Ok(cfg)
}

fn current_user() -> Option<String> {
    // SAFETY: getpwuid returns a pointer to static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name);
        name.to_str().ok().map(str::to_string)
    }
}

/// Open a session.
pub fn connect(conninfo: Option<&str>) -> Result<Client> {
    let cfg = connect_config(conninfo)?;
    let tried = targets(&cfg).join(", then ");
    cfg.connect(NoTls).map_err(|e| {
        Error::new(
            ErrorKind::Postgres,
            format!(
                "cannot connect to PostgreSQL at {tried} as user {} (database {}): {}; check \
                 --conninfo (host, port) and that the server runs",
                cfg.get_user().unwrap_or("?"),
                cfg.get_dbname().unwrap_or("?"),
                describe(&e)
            ),
        )
    })
}

/// Each place a connection is tried, as libpq would: `host:port`, or the socket file
/// of a socket directory (the port names it).
fn targets(cfg: &postgres::Config) -> Vec<String> {
    let ports = cfg.get_ports();
    cfg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            // One port for every host, or one per host, as libpq takes them.
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match h {
                postgres::config::Host::Tcp(s) => format!("host {s} port {port}"),
                postgres::config::Host::Unix(p) => {
                    format!("socket {}", p.join(format!(".s.PGSQL.{port}")).display())
                }
            }
        })
        .collect()
}

/// A one-line description of a postgres error, including the server's message.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// Map a query error to ours with what we were doing.
pub fn query_error(what: &str, e: postgres::Error) -> Error {
    Error::new(ErrorKind::Postgres, format!("{what}: {}", describe(&e)))
}

/// Read the identity of the cluster behind `client`.
pub fn identity(client: &mut Client) -> Result<ClusterIdentity> {
    let row = client
        .query_one(
            "SELECT system_identifier::text, current_setting('server_version_num')::int4, \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')::int8, \
             current_setting('block_size')::int4 \
             FROM pg_control_system()",
            &[],
        )
        .map_err(|e| query_error("reading the cluster identity", e))?;
    let what = "the cluster identity";
    let sysid: String = column(&row, 0, what)?;
    let version: i32 = column(&row, 1, what)?;
    let seg: i64 = column(&row, 2, what)?;
    let block: i32 = column(&row, 3, what)?;
    let odd = |name: &str, v: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Postgres,
            format!("the server reports an impossible {name} {v}"),
        )
    };
    Ok(ClusterIdentity {
        system_id: sysid
            .parse()
            .map_err(|_| odd("system identifier", &format!("{sysid:?}")))?,
        version_num: u32::try_from(version).map_err(|_| odd("server_version_num", &version))?,
        wal_segment_size: u64::try_from(seg).map_err(|_| odd("wal_segment_size", &seg))?,
        block_size: u32::try_from(block).map_err(|_| odd("block_size", &block))?,
    })
}

/// Column `idx` of a result row of `what` (a query's purpose, for the message), as
/// `T`: a type mismatch or an unexpected NULL is an error naming the query and the
/// column, never a panic (`Row::get` panics). Read columns PostgreSQL may return as
/// NULL into an `Option`.
pub fn column<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    idx: usize,
    what: &str,
) -> Result<T> {
    row.try_get(idx).map_err(|e| {
        let name = row
            .columns()
            .get(idx)
            .map_or_else(|| format!("#{idx}"), |c| c.name().to_string());
        Error::new(
            ErrorKind::Postgres,
            format!(
                "unexpected result reading {what}: column {name}: {}",
                describe(&e)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_conninfo_names_the_part_that_is_wrong() {
        for (text, want) in [("prot=5432", "prot"), ("port=abc", "port")] {
            let msg = connect_config(Some(text)).unwrap_err().to_string();
            assert!(msg.contains(want) && msg.contains(text), "{text}: {msg}");
            assert!(msg.matches(want).count() >= 2, "{text}: {msg}");
        }
    }

    #[test]
    fn a_failed_connection_names_every_place_tried() {
        let cfg = connect_config(Some("host=/run/pg,db2 port=5433 user=u")).unwrap();
        assert_eq!(
            targets(&cfg),
            ["socket /run/pg/.s.PGSQL.5433", "host db2 port 5433"]
        );
        let cfg = connect_config(Some("host=db1 user=u")).unwrap();
        assert!(targets(&cfg)[0].starts_with("host db1 port "));
    }
}
