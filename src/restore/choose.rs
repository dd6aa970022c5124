//! Which backup to restore: the given one, or the newest that ends before the target.

use super::options::{RestoreOptions, Target};
use crate::error::{Error, Result};
use crate::repo::manifest::{self, Manifest};
use crate::storage::Storage;
use crate::wal;
use chrono::Utc;

/// Whether `m` ends before `target`, so that PostgreSQL can stop at it; `None` when
/// the manifest cannot tell (an xid or a restore point: it records neither).
fn ends_before(m: &Manifest, target: &Option<Target>) -> Option<bool> {
    match target {
        Some(Target::Time(_, t)) => Some(m.stop_time < t.with_timezone(&Utc)),
        Some(Target::Lsn(_, lsn)) => Some(wal::parse_lsn(&m.stop_lsn).is_ok_and(|s| s <= *lsn)),
        Some(Target::Xid(_) | Target::Name(_)) => None,
        Some(Target::Immediate) | None => Some(true),
    }
}

fn describe_target(target: &Option<Target>) -> String {
    match target {
        Some(Target::Time(t, _)) => format!("--target-time {t}"),
        Some(Target::Lsn(l, _)) => format!("--target-lsn {l}"),
        Some(Target::Xid(x)) => format!("--target-xid {x}"),
        Some(Target::Name(n)) => format!("--target-name {n}"),
        Some(Target::Immediate) => "--target-immediate".into(),
        None => "the end of the archive".into(),
    }
}

fn describe_end(m: &Manifest) -> String {
    format!(
        "{} (ended at {} / LSN {})",
        m.id,
        m.stop_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        m.stop_lsn
    )
}

/// Pick the backup to restore: the given one, else the newest that ended before a
/// time or LSN target, else the newest. A given backup that ends after the target is
/// refused: PostgreSQL would replay it to its end, past the target, and say nothing.
pub fn choose_backup(
    storage: &dyn Storage,
    server: &str,
    opts: &RestoreOptions,
) -> Result<Manifest> {
    let newest_fitting = |all: &[Manifest]| -> Option<Manifest> {
        all.iter()
            .rev()
            .find(|m| ends_before(m, &opts.target) != Some(false))
            .cloned()
    };
    if let Some(spec) = &opts.backup {
        let id = manifest::resolve(storage, server, spec)?;
        let m = manifest::load(storage, server, &id)?;
        if ends_before(&m, &opts.target) != Some(false) {
            return Ok(m);
        }
        let all = manifest::load_all(storage, server)?;
        let hint = match newest_fitting(&all) {
            Some(f) => format!(
                "the newest backup that ended before it is {}; restore that one with \
                 --backup {}, or leave out --backup",
                describe_end(&f),
                f.id
            ),
            None => format!("no backup of server {server} ended before it"),
        };
        return Err(Error::invalid(format!(
            "backup {} ended after {}, so PostgreSQL would recover past the target; {hint}",
            describe_end(&m),
            describe_target(&opts.target)
        )));
    }
    let all = manifest::load_all(storage, server)?;
    let Some(oldest) = all.first() else {
        return Err(Error::not_found(format!(
            "server {server} has no complete backup in {}",
            storage.location()
        )));
    };
    newest_fitting(&all).ok_or_else(|| {
        Error::not_found(format!(
            "no backup of server {server} ended before {} (the oldest is {})",
            describe_target(&opts.target),
            describe_end(oldest)
        ))
    })
}
