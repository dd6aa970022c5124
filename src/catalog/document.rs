//! The `--json` documents of the catalog commands: every one is a JSON object whose
//! first field is `format_version` (docs/cli-json.md). Reports that are lists are
//! wrapped under a named field, so that a document can gain fields without breaking
//! its readers.

use super::backups::BackupRow;
use super::servers::ServerSummary;
use super::verify::BackupVerification;
use serde::Serialize;

/// Version of the `--json` documents. Within one version fields are only added.
pub const FORMAT_VERSION: u32 = 2;

/// A report as a versioned document: `format_version` first, then the report's fields.
#[derive(Debug, Clone, Serialize)]
pub struct Document<T: Serialize> {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The report; it must serialize as an object (its fields follow `format_version`).
    #[serde(flatten)]
    pub body: T,
}

/// `body` (a report that serializes as an object) as a versioned document.
pub fn document<T: Serialize>(body: T) -> Document<T> {
    Document {
        format_version: FORMAT_VERSION,
        body,
    }
}

/// The body of `servers --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ServersBody<'a> {
    /// Every server, sorted by name.
    pub servers: &'a [ServerSummary],
}

/// The body of `list --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ListBody<'a> {
    /// The server listed.
    pub server: &'a str,
    /// Its backups, newest first.
    pub backups: &'a [BackupRow],
}

/// The body of `verify --json`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyBody<'a> {
    /// The server verified.
    pub server: &'a str,
    /// Whether every verified backup passed.
    pub ok: bool,
    /// One report per verified backup, oldest first.
    pub backups: &'a [BackupVerification],
}

/// `servers --json`.
pub fn servers_document(rows: &[ServerSummary]) -> Document<ServersBody<'_>> {
    document(ServersBody { servers: rows })
}

/// `list --json`.
pub fn list_document<'a>(server: &'a str, rows: &'a [BackupRow]) -> Document<ListBody<'a>> {
    document(ListBody {
        server,
        backups: rows,
    })
}

/// `verify --json`.
pub fn verify_document<'a>(
    server: &'a str,
    reports: &'a [BackupVerification],
) -> Document<VerifyBody<'a>> {
    document(VerifyBody {
        server,
        ok: reports.iter().all(BackupVerification::ok),
        backups: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::check;

    /// The document as a value, after checking that its text starts with the version.
    fn parsed(v: &impl Serialize) -> serde_json::Value {
        let text = serde_json::to_string(v).unwrap();
        assert!(
            text.starts_with("{\"format_version\":2,"),
            "format_version is not first: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn every_document_is_an_object_that_starts_with_its_version() {
        let v = parsed(&servers_document(&[]));
        assert_eq!(v["servers"], serde_json::json!([]));
        let v = parsed(&list_document("main", &[]));
        assert_eq!(v["server"], "main");
        assert!(v["backups"].is_array());
        let v = parsed(&verify_document("main", &[]));
        assert_eq!(v["ok"], true);
        assert!(v["backups"].is_array());
        let failed = check::failed_report(Some("main"), "no repository given");
        let v = parsed(&document(&failed));
        assert_eq!(v["format_version"], FORMAT_VERSION);
        assert_eq!(v["server"], "main");
        assert_eq!(v["checks"][0]["name"], "settings");
        assert_eq!(v["status"], "unknown");
    }
}
