//! wal-push's look-ahead settings (`push_lookahead`, `push_parallel`,
//! `wal_status_dir`), resolved when wal-push runs.

use super::args::LookaheadArgs;
use super::settings::Settings;
use crate::error::Result;
use std::path::PathBuf;

/// Resolved look-ahead settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookaheadSettings {
    /// Most segments pushed ahead per call; 0 = off.
    pub count: usize,
    /// Threads (including the one pushing the requested file).
    pub parallel: usize,
    /// Explicit status directory, else derived from the data directory.
    pub status_dir: Option<PathBuf>,
}

/// Default look-ahead depth: enough to absorb a burst of 16 MiB segments without
/// making one archive_command call take much longer than a few segment pushes.
pub const DEFAULT_LOOKAHEAD: u32 = 16;

/// Default parallelism: one thread per core, at least 2 (pushes wait on I/O too),
/// at most 8 (beyond that, compression starves the database on small hosts).
pub fn default_parallel() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
        .clamp(2, 8)
}

impl LookaheadSettings {
    /// Resolve flags/env over the configuration file over defaults.
    pub fn resolve(args: &LookaheadArgs, settings: &Settings) -> Result<LookaheadSettings> {
        let f = &settings.file;
        let layers = settings.layers();
        let count = args
            .push_lookahead
            .or(f.push_lookahead)
            .unwrap_or(DEFAULT_LOOKAHEAD) as usize;
        let parallel = layers.positive(
            "push_parallel",
            args.push_parallel.map(|n| n as usize),
            f.push_parallel.map(|n| n as usize),
            default_parallel() as usize,
        )?;
        let status_dir = layers.absolute_dir(
            "wal_status_dir",
            args.wal_status_dir.as_ref(),
            f.wal_status_dir.as_ref(),
        )?;
        Ok(LookaheadSettings {
            count,
            parallel,
            status_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::args::CommonArgs;
    use std::io::Write;
    use std::path::Path;

    fn settings_with(text: &str) -> (Settings, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let args = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        (Settings::resolve(&args, None).unwrap(), f)
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let (s, _f) = settings_with("push_lookahead = 4\nwal_status_dir = '/var/tmp/st'\n");
        let r = LookaheadSettings::resolve(&LookaheadArgs::default(), &s).unwrap();
        assert_eq!(r.count, 4);
        assert_eq!(r.parallel, default_parallel() as usize);
        assert_eq!(r.status_dir.as_deref(), Some(Path::new("/var/tmp/st")));
        let flags = LookaheadArgs {
            push_lookahead: Some(0),
            push_parallel: Some(3),
            wal_status_dir: None,
        };
        let r = LookaheadSettings::resolve(&flags, &s).unwrap();
        assert_eq!((r.count, r.parallel), (0, 3));
        let (s, f) = settings_with("push_parallel = 0\n");
        let msg = LookaheadSettings::resolve(&LookaheadArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("push_parallel"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        let (s, _f) = settings_with("wal_status_dir = 'relative'\n");
        assert!(LookaheadSettings::resolve(&LookaheadArgs::default(), &s).is_err());
    }
}
