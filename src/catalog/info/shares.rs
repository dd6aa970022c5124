//! How much of each backup's stored bytes it shares with other backups, and how much
//! only it holds (what deleting it would free once the sweep runs).

use crate::repo::manifest::{FileEntry, Manifest};
use std::collections::HashMap;

/// The objects of one backup, split by whether another backup references them too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Shares {
    /// Distinct objects the backup references.
    pub(super) objects: u64,
    /// Stored bytes of those also referenced by another complete backup.
    pub(super) shared_size: u64,
    /// Stored bytes of those only this backup references.
    pub(super) unique_size: u64,
}

/// The shares of each of `manifests` (same order), and the stored bytes of every
/// distinct object they reference together.
///
/// An object counts once per backup however many of its files name it: two
/// identical files in one backup share nothing with another backup.
pub(super) fn shares(manifests: &[Manifest]) -> (Vec<Shares>, u64) {
    // Object name -> (stored size, backups referencing it).
    let mut refs: HashMap<String, (u64, u32)> = HashMap::new();
    let sets: Vec<HashMap<String, u64>> = manifests
        .iter()
        .map(|m| {
            m.files
                .iter()
                .flat_map(FileEntry::all_objects)
                .map(|o| (o.name(), o.stored_size))
                .collect()
        })
        .collect();
    for set in &sets {
        for (name, size) in set {
            let e = refs.entry(name.clone()).or_insert((*size, 0));
            e.1 = e.1.saturating_add(1);
        }
    }
    let per_backup = sets
        .iter()
        .map(|set| {
            let mut s = Shares {
                objects: set.len() as u64,
                ..Shares::default()
            };
            for name in set.keys() {
                match refs.get(name) {
                    Some((size, n)) if *n > 1 => s.shared_size += size,
                    Some((size, _)) => s.unique_size += size,
                    None => {}
                }
            }
            s
        })
        .collect();
    let total = refs.values().map(|(size, _)| size).sum();
    (per_backup, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::repo::manifest::{sample, ObjectRef};

    fn object(c: char, stored_size: u64) -> ObjectRef {
        ObjectRef {
            id: c.to_string().repeat(64),
            compression: Compression::Zstd,
            stored_size,
        }
    }

    /// A backup whose files are rebuilt from `objects` (one file each).
    fn backup(id: &str, objects: &[&ObjectRef]) -> Manifest {
        let mut m = sample(id);
        let template = m.files[0].clone();
        m.files = objects
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut f = template.clone();
                f.path = format!("data/f{i}");
                f.objects = vec![(*o).clone()];
                f.pages = None;
                f
            })
            .collect();
        m
    }

    #[test]
    fn two_backups_with_mostly_shared_objects_say_so() {
        let (big, small1, small2) = (object('a', 1000), object('b', 10), object('c', 20));
        let first = backup("20261123T100000Z", &[&big, &small1]);
        let second = backup("20261123T110000Z", &[&big, &small2]);
        let (s, total) = shares(&[first, second]);
        assert_eq!(
            s[0],
            Shares {
                objects: 2,
                shared_size: 1000,
                unique_size: 10
            }
        );
        assert_eq!(
            s[1],
            Shares {
                objects: 2,
                shared_size: 1000,
                unique_size: 20
            }
        );
        // Stored once, whatever the number of backups.
        assert_eq!(total, 1030);
    }

    #[test]
    fn an_object_named_twice_in_one_backup_is_not_shared() {
        let o = object('d', 500);
        let alone = backup("20261123T100000Z", &[&o, &o]);
        let other = backup("20261123T110000Z", &[&object('e', 7)]);
        let (s, total) = shares(&[alone, other]);
        assert_eq!(s[0].objects, 1);
        assert_eq!((s[0].shared_size, s[0].unique_size), (0, 500));
        assert_eq!((s[1].shared_size, s[1].unique_size), (0, 7));
        assert_eq!(total, 507);
        let (none, total) = shares(&[]);
        assert!(none.is_empty() && total == 0);
    }
}
