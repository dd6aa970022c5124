//! The catalog command: `pgcellar init | servers | info | list | show | check | verify |
//! expire | delete | keep | cat | switch-wal | cron | receive-wal`. Parses, calls one library function,
//! prints, maps the outcome to an exit code (0 ok, 1 failure, 2 usage; `check
//! --nagios` uses the Nagios codes 0-3). Every `--json` document is versioned
//! (`catalog::document`).

use pgcellar::catalog::document::{document, list_document, servers_document, verify_document};
use pgcellar::catalog::verify::Selection;
use pgcellar::catalog::{self, check, expire, info, key, verify};
use pgcellar::cli::pgcellar::{Args, Command, KeyCommand};
use pgcellar::config::Settings;
use pgcellar::crypto::Argon2Cost;
use pgcellar::{cli, log_error, log_info, log_notice, stream};
use serde::Serialize;

/// Argon2id cost from the flags (memory in MiB).
fn cost(memory_mib: u32, iterations: u32) -> Argon2Cost {
    Argon2Cost {
        memory_kib: memory_mib.saturating_mul(1024),
        iterations,
        parallelism: 1,
    }
}

/// Write to stdout; a closed pipe (`pgcellar list | head`) ends the program quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Run the command; returns the exit code for outcomes that are not errors.
fn run(args: &Args) -> anyhow::Result<i32> {
    let settings = match Settings::resolve(&args.common, None) {
        Ok(s) => s,
        Err(e) => {
            if let Command::Check { json: true, .. } = &args.command {
                // The document is printed whatever happens; the exit code says it failed.
                log_error!("{}", e);
                let server = args.common.server.as_deref();
                print_json(&document(check::failed_report(server, &e.to_string())))?;
                return Ok(1);
            }
            return Err(e.into());
        }
    };
    match &args.command {
        Command::Init {
            encrypt,
            kdf_memory,
            kdf_iterations,
        } => {
            let out = catalog::init(&settings, *encrypt, cost(*kdf_memory, *kdf_iterations))?;
            let repo = settings.repo_url()?;
            if out.created_repo {
                log_notice!("created repository {repo}");
            }
            let s = &out.server;
            if out.registered {
                log_notice!(
                    "registered server {} (system identifier {}, PostgreSQL {}, WAL segment size {} bytes) in {repo}",
                    s.name, s.system_identifier, s.pg_major, s.wal_segment_size
                );
            } else {
                log_notice!(
                    "server {} is already registered in {repo} for this cluster",
                    s.name
                );
            }
        }
        Command::Servers { json } => {
            let rows = catalog::servers(&settings)?;
            if *json {
                print_json(&servers_document(&rows))?;
            } else {
                emit(&catalog::render_servers(&rows))?;
            }
        }
        Command::Info { json } => {
            let r = info::info(&settings)?;
            if *json {
                print_json(&document(&r))?;
            } else {
                emit(&info::render_info(&r))?;
            }
        }
        Command::List { json } => {
            let rows = catalog::list(&settings)?;
            if *json {
                print_json(&list_document(settings.server_name()?, &rows))?;
            } else {
                emit(&catalog::render_list(&rows))?;
            }
        }
        Command::Show { id, json } => {
            let r = catalog::show(&settings, id)?;
            if *json {
                print_json(&document(&r))?;
            } else {
                emit(&catalog::render_show(&r))?;
            }
        }
        Command::Check { json, nagios } => {
            let r = match check::run(&settings) {
                Ok(r) => r,
                Err(e) if *nagios => {
                    emit(&format!(
                        "PGCELLAR UNKNOWN - {}\n",
                        e.to_string().replace('|', " ")
                    ))?;
                    return Ok(check::Status::Unknown.nagios_code());
                }
                Err(e) if *json => {
                    log_error!("{e}");
                    let server = settings.server.as_deref();
                    print_json(&document(check::failed_report(server, &e.to_string())))?;
                    return Ok(1);
                }
                Err(e) => return Err(e.into()),
            };
            if *nagios {
                emit(&format!("{}\n", check::render_nagios(&r)))?;
                return Ok(r.status.nagios_code());
            }
            if *json {
                print_json(&document(&r))?;
            } else {
                emit(&check::render(&r))?;
            }
            return Ok(match r.status {
                check::Status::Ok | check::Status::Warning => 0,
                _ => 1,
            });
        }
        Command::Verify { id, all, json } => {
            let which = if *all {
                Selection::All
            } else {
                Selection::One(id.clone().unwrap_or_else(|| "latest".into()))
            };
            let reports = verify::run(&settings, &which)?;
            if *json {
                print_json(&verify_document(settings.server_name()?, &reports))?;
            } else {
                emit(&verify::render(&reports))?;
            }
            return Ok(if reports.iter().all(|r| r.ok()) { 0 } else { 1 });
        }
        Command::Expire {
            dry_run,
            retention,
            json,
        } => {
            let r = expire::expire(&settings, retention.as_deref(), *dry_run)?;
            if *json {
                print_json(&document(&r))?;
            } else {
                emit(&expire::render_expire(&r))?;
            }
        }
        Command::Delete { id, force } => {
            let out = expire::delete(&settings, id, *force)?;
            log_notice!(
                "deleted backup {} ({} backup(s) left; {} unreferenced object(s), {} stored \
                 bytes, freed; its WAL goes with the next expire)",
                out.id,
                out.remaining,
                out.objects.removed,
                out.objects.removed_size
            );
        }
        Command::Cat { id, path } => {
            let mut out = std::io::stdout().lock();
            let done = catalog::cat(&settings, id, path, &mut out)?;
            log_info!(
                "wrote {} of backup {} ({} bytes, sha256 {} checked)",
                done.path,
                done.id,
                done.size,
                done.sha256
            );
        }
        Command::Keep { id, release } => {
            let out = catalog::keep(&settings, id, *release)?;
            let what = match (out.kept, out.changed) {
                (true, true) => "is now kept: retention will never remove it",
                (true, false) => "was already kept",
                (false, true) => "is no longer kept: retention applies to it again",
                (false, false) => "was not kept",
            };
            log_notice!("backup {} {what}", out.id);
        }
        Command::SwitchWal { checkpoint, wait } => {
            let out = catalog::switch_wal(&settings, *checkpoint, *wait)?;
            emit(&format!("{}\n", out.segment))?;
        }
        Command::Key(KeyCommand::Rotate {
            new_passphrase_file,
            new_key_file,
            kdf_memory,
            kdf_iterations,
        }) => {
            let new = key::new_secret(new_passphrase_file.as_deref(), new_key_file.as_deref())?;
            let id = key::rotate(&settings, &new, cost(*kdf_memory, *kdf_iterations))?;
            log_notice!(
                "rotated the secret of {}: master key {id} is now opened only by the new secret; \
                 update --passphrase-file/--key-file wherever it is configured (archive_command, \
                 restore_command, cron)",
                settings.repo_url()?
            );
        }
        Command::Key(KeyCommand::Generate { file }) => {
            let path = key::generate(file)?;
            log_notice!(
                "wrote a new key file {} (mode 0600); keep a copy apart from the repository: \
                 without it no backup can be read",
                path.display()
            );
        }
        Command::Cron => {
            for line in expire::cron(&settings)? {
                emit(&format!("{line}\n"))?;
            }
        }
        Command::ReceiveWal {
            slot,
            create_slot,
            synchronous,
            spool,
            partial_interval,
            pg_receivewal,
            application_name,
            run_for,
        } => {
            let spool = match spool {
                Some(s) => s.clone(),
                None => stream::default_spool(settings.server_name()?),
            };
            stream::receive(
                &settings,
                &stream::ReceiveOptions {
                    slot: slot.clone(),
                    create_slot: *create_slot,
                    synchronous: *synchronous,
                    spool,
                    interval: std::time::Duration::from_secs(*partial_interval),
                    pg_receivewal: pg_receivewal.clone(),
                    application_name: application_name.clone(),
                    run_for: run_for.map(std::time::Duration::from_secs),
                },
            )?;
        }
    }
    Ok(0)
}

fn main() {
    cli::install_panic_hook("pgcellar", 1);
    let args: Args = cli::parse_or_exit(2);
    pgcellar::util::log::init("pgcellar", args.common.verbose, args.common.quiet);
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log_error!("{}", cli::one_line(&e));
            std::process::exit(1);
        }
    }
}
