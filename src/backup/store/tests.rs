use super::*;
use crate::backup::progress::Reporter;
use crate::repo::objects::rebuild;
use crate::storage::LocalStorage;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Duration;

fn parent_with(files: Vec<FileEntry>, start: DateTime<Utc>) -> Manifest {
    let v = serde_json::json!({
        "format": 2, "id": "20261122T000000Z", "label": "", "status": "done",
        "parent": null, "server": "main", "pg_version_num": 150010,
        "system_identifier": "1", "wal_segment_size": 1048576, "timeline": 1,
        "start_lsn": "0/1", "stop_lsn": "0/2", "start_wal": "000000010000000000000001",
        "stop_wal": "000000010000000000000001", "start_time": start, "stop_time": start,
        "backup_label": "", "tablespace_map": "", "tablespaces": [],
        "compression": "zstd", "compression_level": 3,
        "totals": crate::repo::manifest::Totals::default(),
        "directories": [], "files": files, "created_by": "test"
    });
    serde_json::from_value(v).unwrap()
}

fn set_mtime(p: &Path, secs: u64) {
    File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn store(
    s: &LocalStorage,
    parent: Option<&Manifest>,
    checksum: bool,
    job: &Job,
) -> Option<FileEntry> {
    let opts = BackupOptions {
        checksum,
        ..Default::default()
    };
    let report = Reporter::new(s, "main", "20260101T000000Z", "token", false);
    let ctx = StoreCtx::new(s, "main", Codec::default(), parent, &opts, &report);
    let (entry, read) = store_one(&ctx, job).unwrap();
    // A file is reused unread only when nothing but its size and mtime was needed.
    if let Some(e) = &entry {
        if !read {
            assert_eq!(e.added_size, 0, "{}", e.path);
        }
    }
    entry
}

fn rebuilt(s: &LocalStorage, e: &FileEntry) -> Vec<u8> {
    let mut out = Vec::new();
    let got = rebuild(&ObjectStore::new(s, "main"), e, &mut out).unwrap();
    assert_eq!((got.sha256.as_str(), got.size), (e.sha256.as_str(), e.size));
    out
}

#[test]
fn reuse_follows_the_safe_horizon() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("repo"));
    let src = d.path().join("f");
    fs::write(&src, b"hello").unwrap();
    set_mtime(&src, 1_700_000_000);
    let job = Job {
        src: src.clone(),
        path: "data/f".into(),
        size: 5,
    };
    let start = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
    // No parent: stored whole, named by its SHA-256.
    let first = store(&s, None, false, &job).unwrap();
    assert_eq!(first.objects.len(), 1);
    assert_eq!(first.objects[0].id, first.sha256);
    assert!(first.added_size > 0 && first.pages.is_none());
    assert!(rebuilt(&s, &first) == b"hello");
    // Stored again: the same object, nothing added.
    let again = store(&s, None, false, &job).unwrap();
    assert_eq!(
        (again.objects.clone(), again.added_size),
        (first.objects.clone(), 0)
    );
    // Same size and mtime, well before the parent's start: trusted without reading
    // (the parent's recorded hash differs, proving nothing was read).
    let other = FileEntry {
        sha256: "0".repeat(64),
        ..first.clone()
    };
    let p = parent_with(vec![other.clone()], start(1_700_000_100));
    assert_eq!(
        store(&s, Some(&p), false, &job).unwrap().sha256,
        other.sha256
    );
    // ... unless --checksum, which reads and sees the difference.
    assert_eq!(
        store(&s, Some(&p), true, &job).unwrap().sha256,
        first.sha256
    );
    // Within the horizon of the parent's start, the content decides.
    let p = parent_with(vec![other], start(1_700_000_001));
    assert_eq!(
        store(&s, Some(&p), false, &job).unwrap().sha256,
        first.sha256
    );
    // A file that vanished is skipped, not an error.
    fs::remove_file(&src).unwrap();
    assert!(store(&s, None, false, &job).is_none());
}

fn page_file(p: &Path, pages: u32, seed: impl Fn(u32) -> u8) {
    let bytes: Vec<u8> = (0..pages)
        .flat_map(|b| {
            let mut page = vec![seed(b); PAGE];
            page[..4].copy_from_slice(&b.to_le_bytes());
            page
        })
        .collect();
    fs::write(p, bytes).unwrap();
}

#[test]
fn changed_pages_become_bounded_deltas() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("repo"));
    let src = d.path().join("16384");
    let pages = 64u32; // 512 KiB: page level
    page_file(&src, pages, |_| 0);
    let job = Job {
        src: src.clone(),
        path: "data/base/5/16384".into(),
        size: u64::from(pages) * PAGE as u64,
    };
    let mut prev = store(&s, None, false, &job).unwrap();
    assert!(prev.pages.is_some() && prev.objects.len() == 1);
    // The parent started before every write here, so no mtime is trusted.
    let start = Utc::now() - chrono::Duration::seconds(100);
    let mut saw_rebase = false;
    for round in 1..=12u8 {
        // Change two pages (incompressible), and grow by one page every third round.
        let grow = u32::from(round / 3);
        page_file(&src, pages + grow, |b| {
            if b == u32::from(round) || b == u32::from(round) + 20 {
                round.wrapping_mul(37)
            } else {
                0
            }
        });
        let p = parent_with(vec![prev.clone()], start);
        let e = store(&s, Some(&p), false, &job).unwrap();
        assert!(rebuilt(&s, &e) == fs::read(&src).unwrap(), "round {round}");
        assert!(e.objects.len() <= 1 + MAX_DELTAS, "round {round}");
        if e.objects.len() == 1 {
            saw_rebase = true;
        } else {
            // Only the changed pages were added, not the file.
            assert!(
                e.added_size < 8 * PAGE as u64,
                "round {round}: {}",
                e.added_size
            );
            assert_eq!(e.objects[..e.objects.len() - 1], prev.objects[..]);
        }
        prev = e;
    }
    assert!(saw_rebase, "the delta list never rebased");
    // Nothing changed: the parent's entry as it was.
    let p = parent_with(vec![prev.clone()], start);
    let same = store(&s, Some(&p), false, &job).unwrap();
    assert_eq!(
        (same.objects.clone(), same.added_size),
        (prev.objects.clone(), 0)
    );
}

#[test]
fn only_main_forks_are_page_level() {
    for yes in [
        "data/base/5/16384",
        "data/base/5/16384.12",
        "data/global/1262",
        "tablespaces/16400/PG_15_202209061/5/16401",
    ] {
        assert!(is_main_fork(yes), "{yes}");
    }
    for no in [
        "data/base/5/16384_fsm",
        "data/base/5/16384_vm",
        "data/base/5/16384_init",
        "data/base/5/PG_VERSION",
        "data/base/5/t3_16384",
        "data/pg_xact/0000",
        "data/global/pg_control",
        "data/base/x/1",
        "tablespaces/16400/other/5/1",
        "16384",
    ] {
        assert!(!is_main_fork(no), "{no}");
    }
}
