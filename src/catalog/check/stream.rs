//! The check of `pgcellar receive-wal`: is the stream running, is its slot there,
//! how far behind is the repository, and what failed last.

use super::report::{CheckReport, Status};
use crate::repo::{Repository, ServerInfo};
use crate::stream::{status, ReceiverState, ReceiverStatus};
use chrono::{DateTime, Utc};

/// A repository further behind than this is a WARNING.
pub const LAG_WARNING_SECONDS: f64 = 60.0;

/// What the stream check found, for the checks of the cluster that follow.
#[derive(Debug, Clone)]
pub(super) struct StreamFinding {
    /// The stream is this server's WAL route: its slot exists (so the server keeps
    /// the WAL for it) or, the server not asked, a receiver is streaming now. Its
    /// health is the `stream` row's to report, not archive_mode's.
    pub(super) route: bool,
    /// A receiver is streaming now (fresh status, state streaming).
    pub(super) running: bool,
    /// Its slot, when one ever ran.
    pub(super) slot: Option<String>,
    /// The `stream` row, pushed last so the rows before keep their places.
    pub(super) row: (Status, String),
}

impl StreamFinding {
    /// A finding with no route: only the row to report.
    pub(super) fn only(status: Status, message: impl Into<String>) -> Self {
        StreamFinding {
            route: false,
            running: false,
            slot: None,
            row: (status, message.into()),
        }
    }
}

/// The `stream` check (its row comes last in the report; archive_mode needs the
/// finding first). No status object means no receiver ever ran: OK, archiving alone
/// is then checked by the other rows.
pub(super) fn check_stream(
    r: &mut CheckReport,
    repo: &Repository,
    server: &ServerInfo,
    client: Option<&mut postgres::Client>,
) -> StreamFinding {
    let st = match status::read(repo.storage(), &server.name) {
        Ok(Some(st)) => st,
        Ok(None) => {
            return StreamFinding::only(
                Status::Ok,
                "no receive-wal has run for this server (WAL by archive_command only)",
            )
        }
        Err(e) => return StreamFinding::only(Status::Unknown, e.to_string()),
    };
    let slot_on_server = client.and_then(|c| {
        c.query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&st.slot],
        )
        .ok()
        .map(|row| row.and_then(|row| row.try_get::<_, bool>(0).ok()))
    });
    let (status, message) = judge(&st, Utc::now(), slot_on_server);
    r.metrics.stream_lag_bytes = st.lag_bytes;
    r.metrics.stream_lag_seconds = st.lag_seconds;
    let route = match slot_on_server {
        Some(present) => present.is_some(),
        None => status == Status::Ok,
    };
    StreamFinding {
        route,
        running: status == Status::Ok,
        slot: Some(st.slot.clone()),
        row: (status, message),
    }
}

/// The verdict on a status seen at `now`; `slot` is what the server says of the
/// slot: `None` not asked, `Some(None)` missing, `Some(Some(active))`.
fn judge(st: &ReceiverStatus, now: DateTime<Utc>, slot: Option<Option<bool>>) -> (Status, String) {
    let who = format!(
        "receive-wal (slot {}, pid {} on {})",
        st.slot, st.pid, st.host
    );
    let age = st.age_seconds(now);
    let error = match (&st.last_error, &st.last_error_at) {
        (Some(e), Some(at)) => format!("; last error {}s ago: {e}", (now - *at).num_seconds()),
        (Some(e), None) => format!("; last error: {e}"),
        _ => String::new(),
    };
    if slot == Some(None) {
        return (
            Status::Critical,
            format!(
                "replication slot {} does not exist on the server: the stream cannot run and \
                 WAL after it is not kept for it; recreate it (receive-wal --create-slot)",
                st.slot
            ),
        );
    }
    if st.state != ReceiverState::Stopped && !st.running(now) {
        return (
            Status::Critical,
            format!("{who} last reported {age}s ago and is not running (killed or hung){error}"),
        );
    }
    match st.state {
        ReceiverState::Stopped => (
            Status::Warning,
            format!(
                "{who} was stopped at {}{error}",
                st.updated
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ),
        ReceiverState::Reconnecting => (
            Status::Warning,
            format!("{who} is not connected, retrying{error}"),
        ),
        ReceiverState::Streaming => {
            let lag = format!(
                "{} bytes, {:.1}s behind the server",
                st.lag_bytes.unwrap_or(0),
                st.lag_seconds.unwrap_or(0.0)
            );
            if st.lag_seconds.unwrap_or(0.0) > LAG_WARNING_SECONDS {
                (
                    Status::Warning,
                    format!("{who} is streaming but the repository is {lag}"),
                )
            } else if slot == Some(Some(false)) {
                (
                    Status::Warning,
                    format!("{who} reports streaming but slot {} is inactive", st.slot),
                )
            } else {
                (
                    Status::Ok,
                    format!(
                        "{who} is streaming ({}); the repository is {lag}",
                        if st.synchronous {
                            "synchronous"
                        } else {
                            "asynchronous"
                        }
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ReceiverState, updated: DateTime<Utc>) -> ReceiverStatus {
        ReceiverStatus {
            host: "db1".into(),
            pid: 42,
            slot: "pgcellar".into(),
            synchronous: false,
            spool: "/var/lib/pgcellar-receive-wal/main".into(),
            interval_seconds: 1,
            state,
            started: updated,
            updated,
            last_segment: None,
            partial: None,
            stored_lsn: None,
            server_lsn: None,
            lag_bytes: Some(100),
            lag_seconds: Some(0.5),
            slot_present: Some(true),
            last_error: None,
            last_error_at: None,
        }
    }

    #[test]
    fn missing_stalled_stopped_and_lagging_streams() {
        let now = Utc::now();
        let fresh = status(ReceiverState::Streaming, now);
        assert_eq!(judge(&fresh, now, None).0, Status::Ok);
        assert_eq!(judge(&fresh, now, Some(Some(true))).0, Status::Ok);
        assert_eq!(judge(&fresh, now, Some(Some(false))).0, Status::Warning);
        assert_eq!(judge(&fresh, now, Some(None)).0, Status::Critical);
        let stale = status(
            ReceiverState::Streaming,
            now - chrono::Duration::seconds(120),
        );
        let (s, m) = judge(&stale, now, None);
        assert_eq!(s, Status::Critical);
        assert!(m.contains("not running"), "{m}");
        let stopped = status(ReceiverState::Stopped, now - chrono::Duration::hours(3));
        assert_eq!(judge(&stopped, now, None).0, Status::Warning);
        let mut retrying = status(ReceiverState::Reconnecting, now);
        retrying.last_error = Some("could not connect".into());
        retrying.last_error_at = Some(now);
        let (s, m) = judge(&retrying, now, None);
        assert_eq!(s, Status::Warning);
        assert!(m.contains("could not connect"), "{m}");
        let mut behind = status(ReceiverState::Streaming, now);
        behind.lag_seconds = Some(600.0);
        assert_eq!(judge(&behind, now, None).0, Status::Warning);
    }
}
