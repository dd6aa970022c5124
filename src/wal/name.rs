//! WAL file names (PostgreSQL's grammar), segment positions and LSNs.

use crate::error::{Error, Result};
use crate::names::truncate_for_display;
use std::fmt;

/// What kind of file an archived WAL name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalKind {
    /// A WAL segment: `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment,
    /// A timeline history file: `TTTTTTTT.history`.
    History,
    /// A partial segment left by a promotion: `<segment>.partial`.
    Partial,
    /// A backup history file: `<segment>.XXXXXXXX.backup`.
    Backup,
}

/// A validated WAL file name; only names that match PostgreSQL's grammar can exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalName {
    name: String,
    kind: WalKind,
}

fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalName {
    /// Validate `name` against PostgreSQL's WAL file grammar.
    pub fn parse(name: &str) -> Result<WalName> {
        let kind = if is_upper_hex(name, 24) {
            Some(WalKind::Segment)
        } else if let Some(tli) = name.strip_suffix(".history") {
            is_upper_hex(tli, 8).then_some(WalKind::History)
        } else if let Some(seg) = name.strip_suffix(".partial") {
            is_upper_hex(seg, 24).then_some(WalKind::Partial)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            match rest.split_once('.') {
                Some((seg, off)) if is_upper_hex(seg, 24) && is_upper_hex(off, 8) => {
                    Some(WalKind::Backup)
                }
                _ => None,
            }
        } else {
            None
        };
        match kind {
            // Timeline 0 never exists; PostgreSQL starts at 1.
            Some(kind) if &name[..8] != "00000000" => Ok(WalName {
                name: name.to_string(),
                kind,
            }),
            _ => Err(Error::invalid(format!(
                "{:?} is not a WAL file name (expected 24 hex digits, TTTTTTTT.history, \
                 <segment>.partial or <segment>.XXXXXXXX.backup, upper case)",
                truncate_for_display(name)
            ))),
        }
    }

    /// The name as PostgreSQL spells it.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The kind of file.
    pub fn kind(&self) -> WalKind {
        self.kind
    }

    /// The timeline encoded in the name.
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.name[..8], 16).unwrap_or(0)
    }

    /// For segment-based names, the 24-hex segment part.
    pub fn segment_part(&self) -> Option<&str> {
        match self.kind {
            WalKind::History => None,
            _ => Some(&self.name[..24]),
        }
    }

    /// For segment-based names, the parsed segment.
    pub fn segment(&self) -> Option<Segment> {
        let part = self.segment_part()?;
        Some(Segment {
            timeline: u32::from_str_radix(&part[..8], 16).ok()?,
            log: u32::from_str_radix(&part[8..16], 16).ok()?,
            seg: u32::from_str_radix(&part[16..24], 16).ok()?,
        })
    }

    /// The directory (below `wal/`) that holds this file: the first 16 hex digits of
    /// its segment, or none for history files, which live directly in `wal/`.
    pub fn archive_subdir(&self) -> Option<&str> {
        self.segment_part().map(|s| &s[..16])
    }
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A WAL segment position: timeline, "log" (high 32 bits) and segment within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// Timeline id.
    pub timeline: u32,
    /// High part of the segment number (the middle 8 hex digits).
    pub log: u32,
    /// Low part (the last 8 hex digits), below `0x1_0000_0000 / segment_size`.
    pub seg: u32,
}

impl Segment {
    /// Segments per "log" file for a segment size. Never 0, so no caller divides by
    /// zero, whatever a damaged registration says (a valid size gives the exact value;
    /// sizes are validated when `server.json` is read, see [`is_valid_segment_size`]).
    pub fn per_log(segment_size: u64) -> u64 {
        (0x1_0000_0000 / segment_size.max(1)).max(1)
    }

    /// The absolute segment number for `segment_size` (saturating, never panicking).
    pub fn number(&self, segment_size: u64) -> u64 {
        (self.log as u64)
            .saturating_mul(Self::per_log(segment_size))
            .saturating_add(self.seg as u64)
    }

    /// The segment with absolute number `n` on `timeline`.
    pub fn from_number(timeline: u32, n: u64, segment_size: u64) -> Segment {
        let per = Self::per_log(segment_size);
        Segment {
            timeline,
            log: u32::try_from(n / per).unwrap_or(u32::MAX),
            seg: u32::try_from(n % per).unwrap_or(u32::MAX),
        }
    }

    /// The segment containing `lsn` on `timeline`.
    pub fn containing(timeline: u32, lsn: u64, segment_size: u64) -> Segment {
        Self::from_number(timeline, lsn / segment_size.max(1), segment_size)
    }

    /// The next segment on the same timeline.
    pub fn next(&self, segment_size: u64) -> Segment {
        Self::from_number(
            self.timeline,
            self.number(segment_size).saturating_add(1),
            segment_size,
        )
    }

    /// The LSN where this segment starts, or `None` if it does not fit in 64 bits.
    pub fn start_lsn(&self, segment_size: u64) -> Option<u64> {
        self.number(segment_size).checked_mul(segment_size)
    }

    /// The file name of this segment.
    pub fn file_name(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// Parse an LSN written as `X/Y`.
pub fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s
        .split_once('/')
        .ok_or_else(|| Error::invalid(format!("{s:?} is not an LSN (expected X/Y in hex)")))?;
    let hi = u32::from_str_radix(hi, 16)
        .map_err(|_| Error::invalid(format!("{s:?} is not an LSN (expected X/Y in hex)")))?;
    let lo = u32::from_str_radix(lo, 16)
        .map_err(|_| Error::invalid(format!("{s:?} is not an LSN (expected X/Y in hex)")))?;
    Ok(((hi as u64) << 32) | lo as u64)
}

/// Format an LSN as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_postgres_names() {
        for (n, k) in [
            ("000000010000000000000001", WalKind::Segment),
            ("0000000A00000000000000FF", WalKind::Segment),
            ("00000002.history", WalKind::History),
            ("000000010000000000000003.partial", WalKind::Partial),
            ("000000010000000000000002.00000028.backup", WalKind::Backup),
        ] {
            assert_eq!(WalName::parse(n).unwrap().kind(), k, "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in [
            "",
            "../000000010000000000000001",
            "000000010000000000000001/",
            "00000001000000000000000",
            "0000000100000000000000011",
            "000000010000000000000001.history",
            "00000001.History",
            "0000000g0000000000000001",
            "000000010000000000000001.partial.partial",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.backup",
            "000000000000000000000001",
            "/etc/passwd",
            "00000001.history/../x",
            "000000010000000000000001\n",
            "0000000100000000000000aa",
        ] {
            assert!(WalName::parse(n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let n = WalName::parse("0000000100000002000000FF").unwrap();
        let s = n.segment().unwrap();
        let ss = 16 * 1024 * 1024;
        assert_eq!(s.next(ss).file_name(), "000000010000000300000000");
        assert_eq!(n.archive_subdir(), Some("0000000100000002"));
        assert_eq!(
            Segment::containing(1, 0x3_0100_0000, ss).file_name(),
            "000000010000000300000001"
        );
        // 1 MiB segments: 4096 per log.
        let s1 = Segment::from_number(1, 4097, 1 << 20);
        assert_eq!(s1.file_name(), "000000010000000100000001");
        assert_eq!(WalName::parse("00000003.history").unwrap().timeline(), 3);
    }

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("1/2A").unwrap(), 0x1_0000_002A);
        assert_eq!(format_lsn(0x1_0000_002A), "1/2A");
        assert!(parse_lsn("12").is_err());
        assert!(parse_lsn("x/1").is_err());
    }
}
