//! Private local directories of the DB host (look-ahead records, prefetch spool):
//! where they go by default, creating them 0700, atomic small writes, and the
//! clean-up of temporary files left by killed processes.

use crate::error::{IoContext, Result};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The data directory implied by a path PostgreSQL hands to `archive_command` or
/// `restore_command`: both are `pg_wal/<file>` relative to the data directory (the
/// working directory of the command). `None` when `path` is not inside a `pg_wal`.
pub fn data_dir_of(path: &Path) -> Option<PathBuf> {
    let pg_wal = path.parent()?;
    if pg_wal.file_name()? != "pg_wal" {
        return None;
    }
    let data = match pg_wal.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Absolute, so the default directories derived from it are stable.
    fs::canonicalize(data).ok()
}

/// `<parent of data dir>/<data dir name>.<suffix>`: next to the data directory, so
/// it stays out of base backups and `pg_wal`, and is usually on the same filesystem.
pub fn beside(data_dir: &Path, suffix: &str) -> Option<PathBuf> {
    let base = data_dir.file_name()?.to_str()?;
    Some(data_dir.parent()?.join(format!("{base}.{suffix}")))
}

/// Create `dir` and its parents; the last component gets mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .io_context(|| format!("creating directory {}", dir.display()))
}

pub use crate::util::TEMP_PREFIX;

/// A temporary name for `final_name` that carries our pid, so a later process can
/// tell whether its writer is still alive.
pub fn temp_path(dir: &Path, final_name: &str) -> PathBuf {
    dir.join(format!("{}-{final_name}", crate::util::temp_name()))
}

/// Write a small file atomically: temporary name, then rename, so that readers see
/// the old file, no file, or the whole new one. Nothing is fsynced: every file
/// written here is a hint that its reader re-checks (a look-ahead record is trusted
/// only when a fresh hash of the WAL file matches it; the spool origin only decides
/// whether to empty the spool), so one lost or torn by a power cut costs a redo,
/// never a wrong answer, and a sync would cost the archiver milliseconds per record.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = temp_path(dir, name);
    let result = (|| -> Result<()> {
        fs::write(&tmp, data).io_context(|| format!("writing {}", tmp.display()))?;
        let dest = dir.join(name);
        fs::rename(&tmp, &dest)
            .io_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The pid encoded in a temporary name written by [`temp_path`] or by
/// `archive::fetch_verified` (`.<name>.pgcellar-<pid>`).
fn temp_owner(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
        return rest.split('-').next()?.parse().ok();
    }
    if name.starts_with('.') {
        return name.rsplit_once(".pgcellar-")?.1.parse().ok();
    }
    None
}

/// Whether `name` is a temporary file (ours or another process's).
pub fn is_temp(name: &str) -> bool {
    name.starts_with('.')
}

/// Remove temporary files in `dir` whose writer process is gone (killed mid-write).
pub fn remove_orphan_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = temp_owner(name) {
            if pid != std::process::id() && !crate::util::process_alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_from_wal_paths() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("pg_wal")).unwrap();
        let p = d.path().join("pg_wal/000000010000000000000001");
        assert_eq!(
            data_dir_of(&p).unwrap(),
            fs::canonicalize(d.path()).unwrap()
        );
        assert!(data_dir_of(Path::new("/tmp/000000010000000000000001")).is_none());
        assert!(data_dir_of(Path::new("000000010000000000000001")).is_none());
        assert_eq!(
            beside(Path::new("/var/lib/postgresql/15/main"), "pgcellar-spool").unwrap(),
            Path::new("/var/lib/postgresql/15/main.pgcellar-spool")
        );
        assert!(beside(Path::new("/"), "x").is_none());
    }

    #[test]
    fn orphan_temps_of_dead_writers_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let mine = temp_path(d.path(), "a");
        fs::write(&mine, b"x").unwrap();
        // pid 0x7ffffffe is never a live process on Linux (pid_max <= 2^22).
        let dead = d.path().join(".tmp-2147483646-0-b");
        let dead_fetch = d.path().join(".c.pgcellar-2147483646");
        fs::write(&dead, b"x").unwrap();
        fs::write(&dead_fetch, b"x").unwrap();
        fs::write(d.path().join("keep"), b"x").unwrap();
        remove_orphan_temps(d.path());
        assert!(mine.exists());
        assert!(!dead.exists());
        assert!(!dead_fetch.exists());
        assert!(d.path().join("keep").exists());
        write_atomic(d.path(), "rec", b"hello").unwrap();
        assert_eq!(fs::read(d.path().join("rec")).unwrap(), b"hello");
    }
}
