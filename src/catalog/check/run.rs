//! Every check for one server, in a fixed order; a check that cannot run is
//! `unknown`.

use super::backups::{check_catalog, check_unfinished};
use super::cluster::{check_cluster, Target};
use super::report::{CheckReport, Metrics, Status};
use super::stream::{check_stream, StreamFinding};
use crate::config::CatalogSettings;
use crate::config::Settings;
use crate::error::Result;
use crate::pg;
use crate::repo::{layout, Repository};
use crate::storage::Overwrite;

/// Run every check for the configured server. Fails only on bad settings; problems
/// with the repository or the server are findings in the report. Checks that need
/// only the running cluster (connection, archive_mode, archive_command,
/// pg_stat_archiver) run even when the repository is unavailable.
pub fn run(settings: &Settings) -> Result<CheckReport> {
    let cat = CatalogSettings::from_settings(settings)?;
    let name = settings.server_name()?.to_string();
    let repo_url = settings.repo_url()?.clone();
    let mut r = CheckReport {
        server: name.clone(),
        status: Status::Unknown,
        checks: Vec::new(),
        metrics: Metrics::default(),
    };

    // 1. The repository: reachable and writable.
    let repo = match Repository::open(settings) {
        Ok(repo) => Some(repo),
        Err(e) => {
            r.push("repository", Status::Critical, e.to_string());
            None
        }
    };
    // 2. The registration.
    let server = match &repo {
        Some(repo) => {
            let storage = repo.storage();
            let server = repo.server(&name);
            match &server {
                Ok(_) => {
                    let probe = layout::check_probe(&name, &format!("{}", std::process::id()));
                    match storage
                        .write_all(&probe, b"pgcellar check\n", Overwrite::Replace)
                        .and_then(|_| storage.remove_file(&probe))
                    {
                        Ok(()) => r.push(
                            "repository",
                            Status::Ok,
                            format!("{} is reachable and writable", storage.location()),
                        ),
                        Err(e) => {
                            r.push("repository", Status::Critical, format!("not writable: {e}"))
                        }
                    }
                }
                // Without a registration there is no server directory to probe in;
                // reading the root file already proved the repository is reachable.
                Err(_) => r.push(
                    "repository",
                    Status::Ok,
                    format!("{} is reachable", storage.location()),
                ),
            }
            match server {
                Ok(s) => {
                    r.push(
                        "server_registered",
                        Status::Ok,
                        format!(
                            "server {name} is database system {} (PostgreSQL {})",
                            s.system_identifier, s.pg_major
                        ),
                    );
                    Some(s)
                }
                Err(e) => {
                    r.push("server_registered", Status::Critical, e.to_string());
                    None
                }
            }
        }
        None => {
            r.push(
                "server_registered",
                Status::Unknown,
                "not checked: the repository is unavailable",
            );
            None
        }
    };

    // 3-8. The running cluster.
    let mut client = match pg::connect(settings.conninfo.as_deref()) {
        Ok(c) => {
            r.push("postgres_connection", Status::Ok, "connected");
            Some(c)
        }
        Err(e) => {
            r.push("postgres_connection", Status::Critical, e.to_string());
            None
        }
    };
    let stream = match (&repo, &server) {
        (Some(repo), Some(s)) => check_stream(&mut r, repo, s, client.as_mut()),
        _ => StreamFinding::only(
            Status::Unknown,
            "not checked: the repository or the registration is unavailable",
        ),
    };
    match &mut client {
        Some(c) => {
            let target = Target {
                repo_url: &repo_url,
                server_name: &name,
                repo: repo.as_ref(),
                server: server.as_ref(),
                stream: &stream,
            };
            check_cluster(&mut r, c, &target, &cat)
        }
        None => {
            for n in [
                "system_identifier",
                "archive_mode",
                "archive_command",
                "archiving",
                "archiver_failures",
            ] {
                r.push(
                    n,
                    Status::Unknown,
                    "not checked: no connection to PostgreSQL",
                );
            }
        }
    }

    // 9-11. The catalog.
    match (&repo, &server) {
        (Some(repo), Some(s)) => {
            check_catalog(&mut r, repo, s, &cat);
            check_unfinished(&mut r, repo, s, settings.lock_stale_after);
        }
        (repo, _) => {
            let why = if repo.is_none() {
                "not checked: the repository is unavailable"
            } else {
                "not checked: the server is not registered"
            };
            for n in [
                "backup_age",
                "minimum_redundancy",
                "wal_continuity",
                "aborted_backups",
            ] {
                r.push(n, Status::Unknown, why);
            }
        }
    }
    // 12. The stream, last: a row added after the others, which keep their places.
    let (status, message) = stream.row.clone();
    r.push("stream", status, message);
    Ok(r.finish())
}
