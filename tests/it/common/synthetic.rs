//! Synthetic clusters for tests that need no PostgreSQL: a registered server and
//! segments with a correct long page header.

use super::RepoDir;
use pgcellar::repo::{Repository, ServerInfo};
use std::fs;
use std::path::{Path, PathBuf};

/// WAL segment size of the synthetic clusters (1 MiB, like `initdb --wal-segsize=1`).
pub const SEG: u64 = 1 << 20;

/// Create the repository behind `r` (local or SSH) and register server "main" as a
/// PostgreSQL 15 cluster with system identifier `sysid`. Returns whether the
/// repository was created now.
pub fn register_synthetic(r: RepoDir, sysid: u64) -> (RepoDir, bool) {
    let created = register_synthetic_in(&r, sysid);
    (r, created)
}

/// [`register_synthetic`] for a repository the caller keeps.
pub fn register_synthetic_in(r: &RepoDir, sysid: u64) -> bool {
    let (repo, created) =
        Repository::open_or_create(&r.settings(), pgcellar::repo::Creation::plain())
            .unwrap_or_else(|e| panic!("creating {}: {e}", r.url()));
    repo.register_server(&ServerInfo {
        name: r.server.clone(),
        system_identifier: sysid.to_string(),
        pg_version_num: 150018,
        pg_major: 15,
        wal_segment_size: SEG,
        block_size: 8192,
        registered: "2026-11-23T00:00:00Z".into(),
    })
    .expect("register server");
    created
}

/// Write [`segment_bytes`] to `dir/name`; returns the path.
pub fn write_segment(dir: &Path, name: &str, sysid: u64, seed: u64) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, segment_bytes(name, sysid, seed)).expect("write segment");
    p
}

/// A segment named `name` of cluster `sysid` whose body depends on `seed` (and on
/// the name, so different segments never share content).
pub fn segment_bytes(name: &str, sysid: u64, seed: u64) -> Vec<u8> {
    let tli = u32::from_str_radix(&name[0..8], 16).expect("timeline");
    let log = u64::from_str_radix(&name[8..16], 16).expect("log");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("seg");
    let addr = (log * (0x1_0000_0000 / SEG) + seg) * SEG;
    let mut b = vec![0u8; SEG as usize];
    // Compressible but seed-dependent body, like real WAL.
    let mut x = seed.wrapping_mul(6364136223846793005) ^ addr;
    for chunk in b.chunks_mut(64) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        chunk[0..8].copy_from_slice(&x.to_le_bytes());
    }
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&tli.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[16..24].copy_from_slice(&[0; 8]);
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}
