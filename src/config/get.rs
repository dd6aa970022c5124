//! wal-get's prefetch settings (`prefetch`, `prefetch_parallel`, `spool_dir`,
//! `spool_max_bytes`), resolved when wal-get runs.

use super::args::PrefetchArgs;
use super::settings::Settings;
use crate::error::Result;
use std::path::PathBuf;

/// Resolved prefetch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchSettings {
    /// Segments fetched ahead per repository visit; 0 = off.
    pub count: usize,
    /// Threads (including the one fetching the requested file).
    pub parallel: usize,
    /// Explicit spool directory, else derived from the data directory.
    pub spool_dir: Option<PathBuf>,
    /// Size bound of the spool.
    pub max_bytes: u64,
}

/// Default prefetch depth: 8 segments (128 MiB at the default size) per visit.
pub const DEFAULT_PREFETCH: u32 = 8;
/// Default fetch threads of the prefetcher. It runs beside replay, which is what
/// recovery waits for, so it only has to stay ahead: on 2 cores over loopback SSH, 1
/// or 2 threads recovered faster than 4 (less CPU taken from replay); 2 keeps one
/// download going when another stalls.
pub const DEFAULT_PARALLEL: u32 = 2;
/// Default spool bound: 1 GiB.
pub const DEFAULT_SPOOL_MAX: u64 = 1 << 30;

impl PrefetchSettings {
    /// Resolve flags/env over the configuration file over defaults.
    pub fn resolve(args: &PrefetchArgs, settings: &Settings) -> Result<PrefetchSettings> {
        let f = &settings.file;
        let layers = settings.layers();
        let count = args.prefetch.or(f.prefetch).unwrap_or(DEFAULT_PREFETCH) as usize;
        let parallel = layers.positive(
            "prefetch_parallel",
            args.prefetch_parallel.map(|n| n as usize),
            f.prefetch_parallel.map(|n| n as usize),
            DEFAULT_PARALLEL as usize,
        )?;
        let spool_dir =
            layers.absolute_dir("spool_dir", args.spool_dir.as_ref(), f.spool_dir.as_ref())?;
        Ok(PrefetchSettings {
            count,
            parallel,
            spool_dir,
            max_bytes: args
                .spool_max_bytes
                .or(f.spool_max_bytes)
                .unwrap_or(DEFAULT_SPOOL_MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::args::CommonArgs;

    #[test]
    fn settings_precedence_and_errors() {
        let s = Settings::resolve(&CommonArgs::default(), None).unwrap();
        let r = PrefetchSettings::resolve(&PrefetchArgs::default(), &s).unwrap();
        assert_eq!(r.count, DEFAULT_PREFETCH as usize);
        assert_eq!(r.parallel, DEFAULT_PARALLEL as usize);
        assert_eq!(r.max_bytes, DEFAULT_SPOOL_MAX);
        let mut s2 = s.clone();
        s2.file.prefetch = Some(2);
        s2.file.spool_max_bytes = Some(5);
        let flags = PrefetchArgs {
            prefetch: Some(7),
            ..Default::default()
        };
        let r = PrefetchSettings::resolve(&flags, &s2).unwrap();
        assert_eq!((r.count, r.max_bytes), (7, 5));
        s2.file.prefetch_parallel = Some(0);
        let msg = PrefetchSettings::resolve(&flags, &s2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("prefetch_parallel"), "{msg}");
    }
}
