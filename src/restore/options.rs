//! What the user may ask `restore` for (recovery target, timeline, action, archive
//! mode, tablespace relocations), each parsed from its command-line text.

use crate::error::{Error, Result};
use crate::repo::manifest;
use crate::wal;
use chrono::{DateTime, FixedOffset};
use std::path::PathBuf;
use std::str::FromStr;

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `recovery_target_time` (the text as given, and its parsed instant).
    Time(String, DateTime<FixedOffset>),
    /// `recovery_target_xid`.
    Xid(u64),
    /// `recovery_target_lsn` (as given, and as a number).
    Lsn(String, u64),
    /// `recovery_target_name` (a restore point).
    Name(String),
    /// `recovery_target = 'immediate'`: as soon as the backup is consistent.
    Immediate,
}

impl Target {
    /// Parse a time target; it must carry a time zone, since we compare it with
    /// backup stop times and PostgreSQL would otherwise read it in its own zone.
    pub fn time(s: &str) -> Result<Target> {
        let t = s.trim();
        let parsed = DateTime::parse_from_rfc3339(t)
            .ok()
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z").ok())
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%#z").ok())
            .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f %#z").ok());
        match parsed {
            Some(dt) => Ok(Target::Time(t.to_string(), dt)),
            None => Err(Error::invalid(format!(
                "--target-time {:?} is not a timestamp with a time zone \
                 (e.g. '2026-11-03 13:00:00+00' or 2026-11-03T13:00:00Z)",
                crate::names::truncate_for_display(s)
            ))),
        }
    }

    /// Parse a transaction id target.
    pub fn xid(s: &str) -> Result<Target> {
        s.trim()
            .parse::<u64>()
            .map(Target::Xid)
            .map_err(|_| Error::invalid(format!("--target-xid {s:?} is not a transaction id")))
    }

    /// Parse an LSN target (`X/Y`).
    pub fn lsn(s: &str) -> Result<Target> {
        let n = wal::parse_lsn(s.trim())?;
        Ok(Target::Lsn(wal::format_lsn(n), n))
    }

    /// A restore point name target.
    pub fn name(s: &str) -> Result<Target> {
        if s.is_empty() || s.len() > 63 || s.contains(['\n', '\r', '\0']) {
            return Err(Error::invalid(
                "--target-name must be 1-63 characters on one line",
            ));
        }
        Ok(Target::Name(s.to_string()))
    }
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    /// Follow the newest timeline found in the archive.
    Latest,
    /// Stay on the backup's timeline.
    Current,
    /// A given timeline.
    Id(u32),
}

impl FromStr for TimelineTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "latest" => Ok(TimelineTarget::Latest),
            "current" => Ok(TimelineTarget::Current),
            n => match n.parse::<u32>() {
                Ok(id) if id > 0 => Ok(TimelineTarget::Id(id)),
                _ => Err(format!(
                    "{n:?} is not a timeline (expected latest, current or a positive number)"
                )),
            },
        }
    }
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Pause at the target (PostgreSQL's default).
    Pause,
    /// End recovery and open for writes.
    Promote,
    /// Shut down at the target.
    Shutdown,
}

impl FromStr for TargetAction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!(
                "{s:?} is not a target action (expected pause, promote or shutdown)"
            )),
        }
    }
}

impl TargetAction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// `--archive-mode`: what the restored cluster does with its source's archiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// Replace `archive_command` by one that archives nothing and fails, so a copy
    /// never pushes a new timeline into its source's repository.
    #[default]
    Off,
    /// Keep the source's archiving settings (a real failover).
    Preserve,
}

impl FromStr for ArchiveMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "off" => Ok(ArchiveMode::Off),
            "preserve" => Ok(ArchiveMode::Preserve),
            _ => Err(format!(
                "{s:?} is not an archive mode (expected off or preserve)"
            )),
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `--backup ID|latest|oldest`; default: chosen from the target.
    pub backup: Option<String>,
    /// Recovery target.
    pub target: Option<Target>,
    /// Stop just before the target instead of just after.
    pub exclusive: bool,
    /// Timeline to follow.
    pub target_timeline: Option<TimelineTarget>,
    /// What to do at the target.
    pub target_action: Option<TargetAction>,
    /// Start as a standby (`standby.signal`, `wal-get --standby`).
    pub standby: bool,
    /// A standby's `primary_conninfo`: stream from this primary once the archive
    /// is replayed.
    pub primary_conninfo: Option<String>,
    /// A standby's `primary_slot_name` on that primary.
    pub primary_slot_name: Option<String>,
    /// Reuse matching files of an existing directory, remove the others.
    pub delta: bool,
    /// `OID_OR_NAME=DIR` tablespace relocations.
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Parallel workers (default: `Settings::jobs`).
    pub jobs: Option<usize>,
    /// The data directory to restore into.
    pub dest: PathBuf,
    /// Show a progress bar (only effective on a terminal).
    pub progress: bool,
    /// Keep or disable the source's archiving in the restored cluster.
    pub archive_mode: ArchiveMode,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The backup restored.
    pub backup: manifest::BackupId,
    /// Files written.
    pub written: u64,
    /// Files kept as they were (`--delta`).
    pub kept: u64,
    /// Files or directories removed (`--delta`).
    pub removed: u64,
}

/// Parse `OID_OR_NAME=DIR`.
pub fn parse_tablespace_mapping(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && v.starts_with('/') => {
            Ok((k.to_string(), PathBuf::from(v)))
        }
        _ => Err(format!("{s:?}: expected OID_OR_NAME=/absolute/directory")),
    }
}
/// Check `--primary-conninfo` and `--primary-slot-name` before anything is written:
/// they need `--standby`, the conninfo one line, the slot a replication slot name.
pub fn check_streaming_options(opts: &RestoreOptions) -> Result<()> {
    if !opts.standby && (opts.primary_conninfo.is_some() || opts.primary_slot_name.is_some()) {
        return Err(Error::invalid(
            "--primary-conninfo and --primary-slot-name need --standby",
        ));
    }
    if let Some(c) = &opts.primary_conninfo {
        if c.trim().is_empty() || c.contains(['\n', '\r', '\0']) {
            return Err(Error::invalid(
                "--primary-conninfo must be keyword=value pairs on one line",
            ));
        }
        if let Err(e) = c.parse::<postgres::Config>() {
            return Err(Error::invalid(format!(
                "--primary-conninfo is not a connection string: {e}"
            )));
        }
    }
    if let Some(s) = &opts.primary_slot_name {
        // PostgreSQL's own rule for replication slot names.
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::invalid(format!(
                "--primary-slot-name {:?} is not a slot name (1-63 of a-z, 0-9 and _)",
                crate::names::truncate_for_display(s)
            )));
        }
    }
    Ok(())
}

/// Refuse a `--target-time` after `now`: PostgreSQL would replay the whole archive and
/// then stop with "recovery ended before configured recovery target was reached",
/// usually a mistyped date or time zone.
pub fn check_target_not_in_future(
    opts: &RestoreOptions,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    if let Some(Target::Time(text, t)) = &opts.target {
        if *t > now {
            return Err(Error::invalid(format!(
                "--target-time {text:?} is in the future (it is now {} UTC): recovery could \
                 never reach it; check the date and the time zone, or leave out the target \
                 to recover everything archived",
                now.format("%Y-%m-%d %H:%M:%S")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_time_in_the_future_is_refused() {
        let opts = |target: Option<Target>| RestoreOptions {
            backup: None,
            target,
            exclusive: false,
            target_timeline: None,
            target_action: None,
            standby: false,
            primary_conninfo: None,
            primary_slot_name: None,
            delta: false,
            tablespace_map: Vec::new(),
            jobs: None,
            dest: PathBuf::from("/x"),
            progress: false,
            archive_mode: ArchiveMode::Off,
        };
        let now = DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let past = opts(Some(Target::time("2026-12-03 07:59:59+00").unwrap()));
        check_target_not_in_future(&past, now).unwrap();
        // 09:30 in Paris is 08:30 UTC: after now.
        let future = opts(Some(Target::time("2026-12-03 09:30:00+01").unwrap()));
        let msg = check_target_not_in_future(&future, now)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("in the future"), "{msg}");
        check_target_not_in_future(&opts(None), now).unwrap();
        check_target_not_in_future(&opts(Some(Target::Immediate)), now).unwrap();
    }

    #[test]
    fn targets_parse() {
        let Target::Time(_, t) = Target::time("2026-11-03 13:00:00+00").unwrap() else {
            panic!()
        };
        assert_eq!(t.to_rfc3339(), "2026-11-03T13:00:00+00:00");
        Target::time("2026-11-03T13:00:00.5Z").unwrap();
        Target::time("2026-11-03 13:00:00.123456+02:00").unwrap();
        assert!(Target::time("2026-11-03 13:00:00").is_err());
        assert!(Target::time("yesterday").is_err());
        assert_eq!(Target::xid("1234").unwrap(), Target::Xid(1234));
        assert!(Target::xid("12a").is_err());
        assert_eq!(
            Target::lsn("0/3000028").unwrap(),
            Target::Lsn("0/3000028".into(), 0x3000028)
        );
        assert!(Target::lsn("3000028").is_err());
        assert!(Target::name("a\nb").is_err());
        assert_eq!("latest".parse(), Ok(TimelineTarget::Latest));
        assert_eq!("3".parse(), Ok(TimelineTarget::Id(3)));
        assert!("0".parse::<TimelineTarget>().is_err());
        assert!("stop".parse::<TargetAction>().is_err());
        assert_eq!("preserve".parse(), Ok(ArchiveMode::Preserve));
        assert_eq!("off".parse(), Ok(ArchiveMode::Off));
        assert_eq!(ArchiveMode::default(), ArchiveMode::Off);
        assert!("on".parse::<ArchiveMode>().is_err());
        assert_eq!(
            parse_tablespace_mapping("ts1=/srv/ts").unwrap(),
            ("ts1".to_string(), PathBuf::from("/srv/ts"))
        );
        assert!(parse_tablespace_mapping("ts1=rel").is_err());
    }
}
