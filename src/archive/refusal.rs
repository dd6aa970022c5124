//! wal-push's last refusal, recorded in `<server>/locks/wal-push-refusal.json` for
//! `pgcellar info`: best effort, written only on the way to a failure.

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{layout, parse_json, read_small, to_json};
use crate::storage::{Overwrite, Storage};
use crate::wal::WalName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// [`PushRefusal::reason`] of a name already archived (or stored concurrently) with
/// other content.
pub const REFUSED_DIFFERENT_CONTENT: &str = "different_content";
/// [`PushRefusal::reason`] of a file whose size or page header does not belong to the
/// registered cluster (foreign system identifier, truncated or renamed segment).
pub const REFUSED_INVALID_SEGMENT: &str = "invalid_segment";

/// The last file wal-push refused, as recorded in the repository for `pgcellar info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRefusal {
    /// When it was refused.
    pub time: DateTime<Utc>,
    /// The WAL file refused.
    pub wal: String,
    /// Why: [`REFUSED_DIFFERENT_CONTENT`] or [`REFUSED_INVALID_SEGMENT`] (later
    /// versions may add reasons).
    pub reason: String,
    /// wal-push's error message; `None` in an encrypted repository, where this file
    /// stays in clear and the message could name system identifiers.
    #[serde(default)]
    pub message: Option<String>,
    /// Host that ran wal-push.
    pub host: String,
    /// Its process id.
    pub pid: u32,
}

/// Longest message a refusal record keeps: the file must stay a small one.
const REFUSAL_MESSAGE_MAX: usize = 2000;

/// Record `error` as wal-push's last refusal of `name`, best effort: this runs only
/// on the way to a failure that PostgreSQL will retry, and whatever goes wrong here
/// must not change that failure (nor ever touch a successful push).
pub fn record_refusal(
    storage: &dyn Storage,
    server: &str,
    name: &WalName,
    reason: &str,
    error: &Error,
) {
    let message = (!storage.content_hash().is_keyed()).then(|| {
        let text = error.to_string();
        match text.char_indices().nth(REFUSAL_MESSAGE_MAX) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        }
    });
    let record = PushRefusal {
        time: Utc::now(),
        wal: name.to_string(),
        reason: reason.to_string(),
        message,
        host: crate::repo::lock::hostname(),
        pid: std::process::id(),
    };
    if let Ok(json) = to_json(&record) {
        let _ = storage.write_all(
            &layout::push_refusal_file(server),
            &json,
            Overwrite::Replace,
        );
    }
}

/// wal-push's last recorded refusal for `server`, if any.
pub fn last_refusal(storage: &dyn Storage, server: &str) -> Result<Option<PushRefusal>> {
    let path = layout::push_refusal_file(server);
    match read_small(storage, &path) {
        Ok(bytes) => parse_json(&bytes, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
