//! Capabilities: a driver without hard links gets copies from
//! [`Storage::link_or_copy_all`]; the local driver still links.

use super::*;
use crate::error::Result;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The local driver, claiming it cannot hard-link (as an object store could not).
struct NoLinks(LocalStorage);

impl Storage for NoLinks {
    fn location(&self) -> String {
        self.0.location()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: false,
            ..self.0.capabilities()
        }
    }
    fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        self.0.list(dir)
    }
    fn stat(&self, path: &str) -> Result<Option<FileInfo>> {
        self.0.stat(path)
    }
    fn open_read(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        self.0.open_read(path)
    }
    fn create(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.0.create(dir)
    }
    fn create_deferred(&self, dir: &str) -> Result<Box<dyn AtomicFile>> {
        self.0.create_deferred(dir)
    }
    fn sync_deferred(&self) -> Result<()> {
        self.0.sync_deferred()
    }
    fn create_dir_all(&self, dir: &str) -> Result<()> {
        self.0.create_dir_all(dir)
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        self.0.remove_file(path)
    }
    fn remove_file_synced(&self, path: &str) -> Result<()> {
        self.0.remove_file_synced(path)
    }
    fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.0.remove_dir_all(path)
    }
    fn hard_link_all(&self, _links: &[(String, String)]) -> Result<()> {
        panic!("hard_link_all called on a driver without hard links");
    }
}

/// A parent backup's two stored files and the pairs that reuse them.
fn parent(s: &dyn Storage) -> Vec<(String, String)> {
    s.create_dir_all("b1").unwrap();
    s.create_dir_all("b2/sub").unwrap();
    s.write_all("b1/a", b"alpha", Overwrite::Never).unwrap();
    s.write_all("b1/b", &[7u8; 300_000], Overwrite::Never)
        .unwrap();
    vec![
        ("b1/a".to_string(), "b2/a".to_string()),
        ("b1/b".to_string(), "b2/sub/b".to_string()),
    ]
}

fn same_inode(root: &Path, a: &str, b: &str) -> bool {
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    ino(a) == ino(b)
}

#[test]
fn without_hard_links_the_files_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let s = NoLinks(LocalStorage::new(root.clone()));
    assert!(!s.capabilities().hard_links);
    let links = parent(&s);
    s.link_or_copy_all(&links).unwrap();
    // Again: existing targets are kept, like existing links.
    s.link_or_copy_all(&links).unwrap();
    s.link_or_copy_all(&[]).unwrap();
    for (from, to) in &links {
        assert_eq!(s.read_all(to).unwrap(), s.read_all(from).unwrap());
        assert!(!same_inode(&root, from, to), "{to} is a link, not a copy");
    }
    assert_eq!(s.list("b2").unwrap().len(), 2, "no temporary files left");
    // Removing the parent leaves the copies whole.
    s.remove_dir_all("b1").unwrap();
    assert_eq!(s.read_all("b2/a").unwrap(), b"alpha");
    // A missing source fails and names it.
    let err = s
        .link_or_copy_all(&[("b1/absent".into(), "b2/absent".into())])
        .unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
    assert!(s
        .link_or_copy_all(&[("b2/a".into(), "../escaped".into())])
        .is_err());
}

#[test]
fn the_local_driver_still_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let s = LocalStorage::new(root.clone());
    assert_eq!(
        s.capabilities(),
        Capabilities {
            hard_links: true,
            atomic_no_replace: true
        }
    );
    let links = parent(&s);
    s.link_or_copy_all(&links).unwrap();
    for (from, to) in &links {
        assert!(same_inode(&root, from, to), "{to} is not a link of {from}");
    }
}
