//! Repository paths: relative, normal, and checked before any driver touches them.

use crate::error::{Error, Result};

/// Reject any path that is absolute, empty, or has `.`/`..`/empty components.
pub fn check_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.contains('\\')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::invalid(format!(
            "refusing repository path {:?}: it must be relative with no empty, '.' or '..' parts",
            crate::names::truncate_for_display(path)
        )));
    }
    Ok(())
}

/// Reject a final name (of [`AtomicFile::commit`](super::AtomicFile::commit)) that is
/// not one valid component, or one subdirectory and a component (`sub/name`).
pub fn check_final_name(name: &str) -> Result<()> {
    check_path(name)?;
    if name.matches('/').count() > 1 {
        return Err(Error::invalid(format!(
            "final name {name:?} may name at most one subdirectory"
        )));
    }
    Ok(())
}

/// Split `a/b/c` into (`a/b`, `c`); a path must have a directory part.
pub fn split_path(path: &str) -> Result<(&str, &str)> {
    check_path(path)?;
    match path.rsplit_once('/') {
        Some((d, n)) => Ok((d, n)),
        None => Ok(("", path)),
    }
}

/// Join repository path components (which must already be valid names).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        for p in [
            "", "/abs", "a/../b", "..", "a//b", "a/./b", "a/", "a\\b", "x\0",
        ] {
            assert!(check_path(p).is_err(), "{p:?}");
        }
        for p in ["a", "a/b", "main/wal/0000000100000000/x-1.zst", ".tmp-x"] {
            check_path(p).unwrap();
        }
        assert_eq!(split_path("a/b/c").unwrap(), ("a/b", "c"));
        assert_eq!(split_path("c").unwrap(), ("", "c"));
    }
}
