//! What the user asked `base-backup` for.

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Parallel workers (default: `Settings::jobs`).
    pub jobs: Option<usize>,
    /// Copy every file, ignoring the parent backup.
    pub full: bool,
    /// Decide reuse by SHA-256 only, never by size and mtime.
    pub checksum: bool,
    /// Label passed to `pg_backup_start` and kept in the manifest.
    pub label: Option<String>,
    /// Show a progress bar (only effective on a terminal).
    pub progress: bool,
}
