//! Users and owners: whether the data directory's owner can run `wal-get` (the uid,
//! groups and permission bits), and who should own the restored files.

use crate::error::{Error, IoContext, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Check that the owner of the data directory (who runs restore_command) can execute
/// `wal_get`: every directory above it searchable, the file executable. Run as root,
/// restore would otherwise happily write e.g. /root/.cargo/bin/wal-get into
/// restore_command, and recovery would fail with "Permission denied".
pub(super) fn check_runnable_by_owner(wal_get: &Path, dest: &Path) -> Result<()> {
    let (uid, gid) = future_owner(dest)?;
    if uid == 0 {
        return Ok(());
    }
    let groups = groups_of(uid, gid);
    let who = user_name(uid).map_or(format!("uid {uid}"), |n| format!("{n} (uid {uid})"));
    let mut paths = vec![wal_get.to_path_buf()];
    if let Ok(real) = fs::canonicalize(wal_get) {
        if real != wal_get {
            paths.push(real);
        }
    }
    for p in &paths {
        let mut steps: Vec<&Path> = p.ancestors().skip(1).collect();
        steps.reverse();
        steps.push(p);
        for step in steps {
            let meta = fs::metadata(step).io_context(|| format!("stat {}", step.display()))?;
            if !may_execute(&meta, uid, &groups) {
                let what = if step == p.as_path() {
                    "cannot execute"
                } else {
                    "cannot enter"
                };
                return Err(Error::config(format!(
                    "{who}, the owner of {}, {what} {} (mode {:04o}, owner uid {}), so the \
                     restore_command {} would fail; install the binaries where that user \
                     can run them, e.g. `cargo install --path . --root /usr/local`, and run \
                     /usr/local/bin/restore",
                    dest.display(),
                    step.display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    wal_get.display()
                )));
            }
        }
    }
    Ok(())
}

/// The uid and gid the data directory will have: its own if it exists; else the
/// parent's when we are root (prepare_dest hands a new directory to the parent's
/// owner); else ours.
fn future_owner(dest: &Path) -> Result<(u32, u32)> {
    if let Ok(meta) = fs::metadata(dest) {
        return Ok((meta.uid(), meta.gid()));
    }
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        if let Some(meta) = dest.parent().and_then(|p| fs::metadata(p).ok()) {
            return Ok((meta.uid(), meta.gid()));
        }
    }
    Ok((euid, egid))
}

/// Whether a process of `uid` with `groups` may execute (search) `meta`, by the
/// permission bits (POSIX ACLs are not consulted).
fn may_execute(meta: &fs::Metadata, uid: u32, groups: &[u32]) -> bool {
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if groups.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The passwd entry of `uid`: (name, primary gid).
fn passwd_of(uid: u32) -> Option<(std::ffi::CString, u32)> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: passwd is plain old data; getpwuid_r fills it and points its strings
    // into `buf`, which outlives every use below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the length given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_owned();
    Some((name, pw.pw_gid))
}

fn user_name(uid: u32) -> Option<String> {
    passwd_of(uid).map(|(n, _)| n.to_string_lossy().into_owned())
}

/// Every group `uid` runs with (primary and supplementary); just `gid` for a uid
/// without a passwd entry.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let Some((name, primary)) = passwd_of(uid) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n.max(1) as usize];
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` holds `count` entries; `name` is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n > 65536 {
            return vec![primary];
        }
        n = count;
    }
}

/// Who should own restored files: the destination's owner, when we are root.
pub(super) struct Owner(Option<(u32, u32)>);

impl Owner {
    pub(super) fn of(dest: &Path) -> Result<Owner> {
        let meta = fs::metadata(dest).io_context(|| format!("stat {}", dest.display()))?;
        Ok(Owner::root_chown_to(meta.uid(), meta.gid()))
    }

    pub(super) fn root_chown_to(uid: u32, gid: u32) -> Owner {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Owner((root && uid != 0).then_some((uid, gid)))
    }

    pub(super) fn apply(&self, p: &Path) -> Result<()> {
        if let Some((u, g)) = self.0 {
            std::os::unix::fs::chown(p, Some(u), Some(g))
                .io_context(|| format!("chown {}", p.display()))?;
        }
        Ok(())
    }

    pub(super) fn apply_nofollow(&self, p: &Path) -> Result<()> {
        if let Some((u, g)) = self.0 {
            std::os::unix::fs::lchown(p, Some(u), Some(g))
                .io_context(|| format!("chown {}", p.display()))?;
        }
        Ok(())
    }
}
