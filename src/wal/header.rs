//! The long page header at the start of every WAL segment: page magic per major,
//! valid segment sizes, and the check that a segment belongs to the registered cluster.

use super::name::WalName;
use crate::error::{Error, Result};

/// Magic number of WAL pages for a PostgreSQL major version (`XLOG_PAGE_MAGIC`).
pub fn page_magic(major: u32) -> Option<u16> {
    Some(match major {
        10 => 0xD097,
        11 => 0xD098,
        12 => 0xD101,
        13 => 0xD106,
        14 => 0xD10D,
        15 => 0xD110,
        16 => 0xD113,
        17 => 0xD116,
        18 => 0xD118,
        // Versions we have not verified skip the magic check; the system identifier,
        // segment size and page address checks still apply.
        _ => return None,
    })
}

/// Smallest WAL segment size PostgreSQL allows (`initdb --wal-segsize=1`).
pub const MIN_SEGMENT_SIZE: u64 = 1 << 20;
/// Largest WAL segment size PostgreSQL allows (1 GiB).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Whether `size` is a WAL segment size PostgreSQL can have: a power of two from
/// 1 MiB to 1 GiB.
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size)
}

/// [`is_valid_segment_size`], with the reason for a stored field's error message.
pub fn check_segment_size(size: u64) -> std::result::Result<(), String> {
    if is_valid_segment_size(size) {
        Ok(())
    } else {
        Err(format!("is {size}, not a power of two from 1 MiB to 1 GiB"))
    }
}

/// Size of `XLogLongPageHeaderData` as laid out on x86-64 and other 64-bit ABIs.
pub const LONG_PAGE_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// The fields of a segment's first (long) page header that pgcellar checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: identifies the WAL format version.
    pub magic: u16,
    /// `xlp_info` flag bits.
    pub info: u16,
    /// `xlp_tli`: timeline of the page.
    pub timeline: u32,
    /// `xlp_pageaddr`: the LSN of the page's start.
    pub page_addr: u64,
    /// `xlp_sysid`: the cluster's system identifier.
    pub system_id: u64,
    /// `xlp_seg_size`: the WAL segment size.
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`: the WAL block size.
    pub block_size: u32,
}

impl LongPageHeader {
    /// Parse the first bytes of a segment (little-endian, as on every platform we ship).
    pub fn parse(buf: &[u8]) -> Result<LongPageHeader> {
        if buf.len() < LONG_PAGE_HEADER_LEN {
            return Err(Error::invalid(format!(
                "file is {} bytes, too short for a WAL page header",
                buf.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let u64_at = |o: usize| (u32_at(o) as u64) | ((u32_at(o + 4) as u64) << 32);
        Ok(LongPageHeader {
            magic: u16_at(0),
            info: u16_at(2),
            timeline: u32_at(4),
            page_addr: u64_at(8),
            system_id: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

/// What a segment must match to be accepted into a server's archive.
#[derive(Debug, Clone, Copy)]
pub struct SegmentExpectation {
    /// Registered system identifier.
    pub system_id: u64,
    /// Registered WAL segment size.
    pub segment_size: u64,
    /// Registered PostgreSQL major version (selects the page magic).
    pub major: u32,
}

/// Check a segment's header and size against the registered cluster.
pub fn check_segment(
    name: &WalName,
    file_size: u64,
    header: &[u8],
    expect: &SegmentExpectation,
) -> Result<()> {
    if !is_valid_segment_size(expect.segment_size) {
        return Err(Error::config(format!(
            "the registered WAL segment size {} is not a power of two from 1 MiB to 1 GiB",
            expect.segment_size
        )));
    }
    if file_size != expect.segment_size {
        return Err(Error::invalid(format!(
            "{name} is {file_size} bytes but the cluster's WAL segment size is {} bytes \
             (truncated or foreign file); refusing to archive it",
            expect.segment_size
        )));
    }
    let h = LongPageHeader::parse(header).map_err(|e| e.context(name))?;
    if let Some(magic) = page_magic(expect.major) {
        if h.magic != magic {
            return Err(Error::invalid(format!(
                "{name}: WAL page magic is {:#06X}, expected {magic:#06X} for PostgreSQL {} \
                 (not a WAL segment of this cluster, or zero-filled)",
                h.magic, expect.major
            )));
        }
    }
    if h.info & XLP_LONG_HEADER == 0 {
        return Err(Error::invalid(format!(
            "{name}: first page lacks the long header flag; not the start of a WAL segment"
        )));
    }
    if h.system_id != expect.system_id {
        return Err(Error::invalid(format!(
            "{name} belongs to database system {} but this server is registered as {}; \
             refusing another cluster's WAL (check --server and --repo)",
            h.system_id, expect.system_id
        )));
    }
    if h.segment_size as u64 != expect.segment_size {
        return Err(Error::invalid(format!(
            "{name}: header says segment size {} but the server is registered with {}",
            h.segment_size, expect.segment_size
        )));
    }
    if let Some(seg) = name.segment() {
        let want = seg.start_lsn(expect.segment_size).ok_or_else(|| {
            Error::invalid(format!(
                "{name}: its start LSN overflows with segment size {}",
                expect.segment_size
            ))
        })?;
        if h.page_addr != want {
            return Err(Error::invalid(format!(
                "{name}: first page address is {:X}/{:X} but the name implies {:X}/{:X} \
                 (renamed or recycled file)",
                h.page_addr >> 32,
                h.page_addr as u32,
                want >> 32,
                want as u32
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::name::Segment;

    fn header(magic: u16, info: u16, addr: u64, sysid: u64, segsz: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&segsz.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn header_checks() {
        let seg = 1u64 << 20;
        let exp = SegmentExpectation {
            system_id: 42,
            segment_size: seg,
            major: 15,
        };
        let name = WalName::parse("000000010000000000000003").unwrap();
        let good = header(0xD110, 2, 3 * seg, 42, seg as u32);
        check_segment(&name, seg, &good, &exp).unwrap();
        let h = LongPageHeader::parse(&good).unwrap();
        assert_eq!(
            (h.system_id, h.segment_size, h.block_size),
            (42, seg as u32, 8192)
        );
        // truncated
        assert!(check_segment(&name, seg - 1, &good, &exp).is_err());
        // foreign cluster
        let foreign = header(0xD110, 2, 3 * seg, 43, seg as u32);
        assert!(check_segment(&name, seg, &foreign, &exp)
            .unwrap_err()
            .to_string()
            .contains("database system 43"));
        // wrong page address (renamed file)
        let moved = header(0xD110, 2, 4 * seg, 42, seg as u32);
        assert!(check_segment(&name, seg, &moved, &exp).is_err());
        // zero-filled
        assert!(check_segment(&name, seg, &vec![0u8; 8192], &exp).is_err());
        // short header
        assert!(check_segment(&name, seg, &good[..10], &exp).is_err());
        // no long header flag
        let short = header(0xD110, 0, 3 * seg, 42, seg as u32);
        assert!(check_segment(&name, seg, &short, &exp).is_err());
    }

    #[test]
    fn postgres_18_page_magic_is_checked() {
        let seg = 1u64 << 20;
        let exp = SegmentExpectation {
            system_id: 42,
            segment_size: seg,
            major: 18,
        };
        assert_eq!(page_magic(18), Some(0xD118));
        let name = WalName::parse("000000010000000000000003").unwrap();
        check_segment(
            &name,
            seg,
            &header(0xD118, 2, 3 * seg, 42, seg as u32),
            &exp,
        )
        .unwrap();
        // PostgreSQL 17's magic (or any other) is refused for a version-18 server.
        for wrong in [0xD116u16, 0xD117, 0xD119, 0] {
            let msg = check_segment(&name, seg, &header(wrong, 2, 3 * seg, 42, seg as u32), &exp)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("page magic"), "{msg}");
        }
    }

    #[test]
    fn segment_arithmetic_never_panics_on_hostile_sizes() {
        let s = Segment {
            timeline: 1,
            log: u32::MAX,
            seg: u32::MAX,
        };
        for size in [0, 1, 3 << 20, 1 << 33, 1 << 62, u64::MAX] {
            let _ = Segment::per_log(size);
            let _ = s.number(size);
            let _ = s.next(size);
            let _ = s.start_lsn(size);
            let _ = Segment::from_number(1, u64::MAX, size);
            let _ = Segment::containing(1, u64::MAX, size);
        }
        for bad in [0, 1, (1 << 20) - 1, 3 << 20, 1 << 31, 1 << 62] {
            assert!(!is_valid_segment_size(bad), "{bad}");
            let exp = SegmentExpectation {
                system_id: 42,
                segment_size: bad,
                major: 15,
            };
            let name = WalName::parse("000000010000000000000003").unwrap();
            assert!(check_segment(&name, bad, &header(0xD110, 2, 0, 42, 0), &exp).is_err());
        }
        for good in [1 << 20, 16 << 20, 1 << 30] {
            assert!(is_valid_segment_size(good));
        }
    }
}
