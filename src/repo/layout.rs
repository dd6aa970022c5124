//! Every path inside a repository, built in one place. Callers never format a
//! repository path themselves, so the layout in `docs/repository-format.md` is this
//! file and nothing else.

use crate::wal::WalName;

/// Name of a backup's manifest inside its directory.
pub const MANIFEST_FILE: &str = "backup.json";

/// `<server>/server.json`
pub fn server_file(server: &str) -> String {
    format!("{server}/server.json")
}
/// `<server>/wal`
pub fn wal_root(server: &str) -> String {
    format!("{server}/wal")
}
/// The directory holding `name`: `<server>/wal/<first 16 hex>` or `<server>/wal`.
pub fn wal_dir(server: &str, name: &WalName) -> String {
    match name.archive_subdir() {
        Some(sub) => format!("{server}/wal/{sub}"),
        None => wal_root(server),
    }
}
/// `<server>/backups`
pub fn backups_dir(server: &str) -> String {
    format!("{server}/backups")
}
/// `<server>/locks`
pub fn locks_dir(server: &str) -> String {
    format!("{server}/locks")
}
/// `<server>/backups/<id>` (the id must be validated by the caller).
pub fn backup_dir(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}")
}
/// `<server>/backups/<id>/backup.json`
pub fn backup_manifest(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}/{}", MANIFEST_FILE)
}
/// `<server>/backups/<id>/keep`: present while the backup is pinned (`pgcellar keep`).
pub fn backup_keep_marker(server: &str, id: &str) -> String {
    format!("{server}/backups/{id}/keep")
}
/// `<server>/locks/check-<token>.tmp`: the probe `pgcellar check` writes and removes.
pub fn check_probe(server: &str, token: &str) -> String {
    format!("{server}/locks/check-{token}.tmp")
}
/// `<server>/locks/backup-status.json`: phase and progress of a running base-backup
/// (`repo::status`).
pub fn backup_status_file(server: &str) -> String {
    format!("{server}/locks/backup-status.json")
}
/// `<server>/locks/wal-push-refusal.json`: the last file wal-push refused and why,
/// recorded best effort for `pgcellar info` (`archive::last_refusal`).
pub fn push_refusal_file(server: &str) -> String {
    format!("{server}/locks/wal-push-refusal.json")
}
/// `<server>/locks/receive-wal-status.json`: state, positions and last error of
/// `pgcellar receive-wal` (`stream::status`).
pub fn receiver_status_file(server: &str) -> String {
    format!("{server}/locks/receive-wal-status.json")
}
/// `<server>/stream`: the newest copy of each segment `receive-wal` is still
/// receiving, as `<segment>.partial-<sha256>.<ext>` (`stream::partial`).
pub fn stream_dir(server: &str) -> String {
    format!("{server}/stream")
}
/// `<server>/locks/<name>.lock`
pub fn lock_file(server: &str, name: &str) -> String {
    format!("{server}/locks/{name}.lock")
}
/// `<server>/objects`: content-addressed file contents, page deltas and page hashes.
pub fn objects_dir(server: &str) -> String {
    format!("{server}/objects")
}
/// Name of an object below [`objects_dir`]: `<first 2 hex>/<id>.<ext>` (the id must be
/// validated by the caller).
pub fn object_name(id: &str, ext: &str) -> String {
    format!("{}/{id}.{ext}", id.get(..2).unwrap_or("00"))
}
/// `<server>/objects/<first 2 hex>/<id>.<ext>`
pub fn object_file(server: &str, id: &str, ext: &str) -> String {
    format!("{}/{}", objects_dir(server), object_name(id, ext))
}

/// Files an encrypted repository keeps in clear: the root file and the wrapped key,
/// needed to open the rest, and lock files (host names and process ids), which a
/// lock's own connection writes without the key.
pub fn in_clear(path: &str) -> bool {
    path == "pgcellar.json" || path == "pgcellar.key" || path.split('/').nth(1) == Some("locks")
}
