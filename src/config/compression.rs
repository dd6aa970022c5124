//! The codec for new stored files (wal-push and base-backup): `compression` and
//! `compression_level`.

use super::args::CompressionArgs;
use super::file::FileConfig;
use super::resolve::Layers;
use crate::codec::{Codec, Compression};
use crate::error::Result;

/// Compression and level. A level belongs to the algorithm named beside it: one from
/// the file is ignored when a flag picks another algorithm (the file's `zstd` level
/// 19 means nothing to `--compression gzip`), and lz4/none take none at all, so a
/// shared `compression_level = 3` never makes `--compression lz4` fail.
pub(super) fn resolve_codec(
    comp: Option<&CompressionArgs>,
    file: &FileConfig,
    layers: Layers<'_>,
) -> Result<Codec> {
    let flag_compression = comp.and_then(|c| c.compression);
    let compression = flag_compression.or(file.compression).unwrap_or_default();
    let flag_level = comp.and_then(|c| c.compression_level);
    let file_level = file
        .compression_level
        .filter(|_| flag_compression.is_none_or(|c| c == file.compression.unwrap_or_default()));
    if flag_level.is_none() && file_level.is_none() && file.compression_level.is_some() {
        crate::log_info!(
            "compression_level in the configuration file belongs to {}, not {compression}: using {compression}'s default",
            file.compression.unwrap_or_default()
        );
    }
    if matches!(compression, Compression::Lz4 | Compression::None) {
        if let Some(l) = flag_level.or(file_level).filter(|&l| l != 0) {
            crate::log_info!("compression level {l} does not apply to {compression}: ignored");
        }
        return Ok(Codec {
            compression,
            level: 0,
        });
    }
    let level = match (flag_level, file_level) {
        (Some(l), _) => {
            compression
                .check_level(l)
                .map_err(|e| e.context(layers.origin("compression_level", true)))?;
            l
        }
        (None, Some(l)) => {
            compression
                .check_level(l)
                .map_err(|e| e.context(layers.origin("compression_level", false)))?;
            l
        }
        (None, None) => compression.default_level(),
    };
    Ok(Codec { compression, level })
}
