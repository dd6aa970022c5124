//! The long page header at the start of every WAL segment: page magic per major,
//! valid segment sizes, and the check that a segment belongs to the registered cluster.

use super::name::WalName;
use crate::error::{Error, Result};

/// Magic number of WAL pages for a PostgreSQL major version (`XLOG_PAGE_MAGIC`).
pub fn page_magic(major: u32) -> Option<u16> {
    KNOWN_MAGIC
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, magic)| *magic)
}

/// `XLOG_PAGE_MAGIC` of each major this pgcellar knows, oldest first. Each major
/// raises it, so a newer major's WAL has a larger magic than any here.
const KNOWN_MAGIC: [(u32, u16); 9] = [
    (10, 0xD097),
    (11, 0xD098),
    (12, 0xD101),
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The newest major whose page magic pgcellar knows.
pub const NEWEST_KNOWN_MAJOR: u32 = KNOWN_MAGIC[KNOWN_MAGIC.len() - 1].0;

/// The major whose WAL pages carry `magic`, if it is one pgcellar knows.
pub fn major_of_magic(magic: u16) -> Option<u32> {
    KNOWN_MAGIC
        .iter()
        .find(|(_, m)| *m == magic)
        .map(|(major, _)| *major)
}

/// How far [`check_segment`] could check the page magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagicCheck {
    /// The exact magic of the registered major.
    Exact,
    /// The registered major is newer than any pgcellar knows: the magic was only seen
    /// to be newer than the newest known one (so not zeroes, nor an older format).
    NewerThanKnown(u16),
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

/// Check a segment's header and size against the registered cluster; says how far
/// the page magic could be checked.
pub fn check_segment(
    name: &WalName,
    file_size: u64,
    header: &[u8],
    expect: &SegmentExpectation,
) -> Result<MagicCheck> {
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
    let magic_check = check_magic(name, h.magic, h.system_id, expect)?;
    if h.info & XLP_LONG_HEADER == 0 {
        return Err(Error::invalid(format!(
            "{name}: first page lacks the long header flag; not the start of a WAL segment"
        )));
    }
    if h.system_id != expect.system_id {
        return Err(foreign_system(name, h.magic, h.system_id, expect));
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
    Ok(magic_check)
}

/// The page magic against the registered major: exact for a major pgcellar knows;
/// for a newer one (pgcellar older than the server), newer than every known magic.
fn check_magic(
    name: &WalName,
    magic: u16,
    system_id: u64,
    expect: &SegmentExpectation,
) -> Result<MagicCheck> {
    if let Some(want) = page_magic(expect.major) {
        if magic == want {
            return Ok(MagicCheck::Exact);
        }
        if system_id != expect.system_id && major_of_magic(magic).is_some() {
            // Another cluster altogether (say, after pg_upgrade): say that, not "magic".
            return Err(foreign_system(name, magic, system_id, expect));
        }
        return Err(Error::invalid(format!(
            "{name}: WAL page magic is {magic:#06X}, expected {want:#06X} for PostgreSQL {} \
             (not a WAL segment of this cluster, or zero-filled)",
            expect.major
        )));
    }
    let newest = page_magic(NEWEST_KNOWN_MAJOR).unwrap_or(u16::MAX);
    if expect.major > NEWEST_KNOWN_MAJOR && magic > newest && magic >> 12 == 0xD {
        return Ok(MagicCheck::NewerThanKnown(magic));
    }
    Err(Error::invalid(format!(
        "{name}: WAL page magic is {magic:#06X}, which is no PostgreSQL {}'s WAL as far as \
         this pgcellar knows (it knows up to {NEWEST_KNOWN_MAJOR}, magic {newest:#06X}); not a \
         WAL segment of this cluster, or zero-filled",
        expect.major
    )))
}

/// The refusal of a segment from another database system, naming its major when the
/// page magic tells it, and what to do after pg_upgrade.
fn foreign_system(
    name: &WalName,
    magic: u16,
    system_id: u64,
    expect: &SegmentExpectation,
) -> Error {
    let upgraded = major_of_magic(magic).filter(|m| *m > expect.major);
    let hint = match upgraded {
        Some(m) => format!(
            "; it is PostgreSQL {m} WAL, as after pg_upgrade: register the upgraded cluster \
             under a new server name ('pgcellar --server NEW init') and point archive_command \
             at it (docs/versions.md)"
        ),
        None => " (check --server and --repo)".to_string(),
    };
    Error::invalid(format!(
        "{name} belongs to database system {system_id} but this server is registered as {} \
         (PostgreSQL {}); refusing another cluster's WAL{hint}",
        expect.system_id, expect.major
    ))
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

    /// The first 40 bytes of a real segment of each major, written by that major's
    /// `initdb --wal-segsize=1` (Debian's 15, the npm builds of the others), with the
    /// file's name.
    const REAL_HEADERS: [(u32, &str, &str); 6] = [
        (
            13,
            "000000010000000000000006",
            "06d107000100000000006000000000001b00000000000000c05f198a9216116b0000100000200000",
        ),
        (
            14,
            "000000010000000000000007",
            "0dd107000100000000007000000000000d00000000000000deff249f9316116b0000100000200000",
        ),
        (
            15,
            "000000010000000000000006",
            "10d10700010000000000600000000000101b000000000000fd9f6adc9416116b0000100000200000",
        ),
        (
            16,
            "000000010000000000000005",
            "13d107000100000000005000000000003800000000000000368066d99516116b0000100000200000",
        ),
        (
            17,
            "000000010000000000000005",
            "16d107000100000000005000000000004000000000000000699022f19616116b0000100000200000",
        ),
        (
            18,
            "000000010000000000000008",
            "18d10700010000000000800000000000f1070000000000008ca002509816116b0000100000200000",
        ),
    ];

    #[test]
    fn real_segments_of_every_supported_major_pass_and_name_their_major() {
        for (major, file, hex) in REAL_HEADERS {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let h = LongPageHeader::parse(&bytes).unwrap();
            assert_eq!(major_of_magic(h.magic), Some(major), "{major}");
            assert_eq!(page_magic(major), Some(h.magic), "{major}");
            assert_eq!(h.segment_size, 1 << 20);
            assert_eq!(h.block_size, 8192);
            let exp = SegmentExpectation {
                system_id: h.system_id,
                segment_size: 1 << 20,
                major,
            };
            let name = WalName::parse(file).unwrap();
            assert_eq!(
                check_segment(&name, 1 << 20, &bytes, &exp).unwrap(),
                MagicCheck::Exact,
                "{major}"
            );
            // The same segment is refused for every other major's registration.
            for other in (13..=18).filter(|m| *m != major) {
                let exp = SegmentExpectation {
                    major: other,
                    ..exp
                };
                assert!(
                    check_segment(&name, 1 << 20, &bytes, &exp).is_err(),
                    "{major} as {other}"
                );
            }
        }
    }

    #[test]
    fn a_major_newer_than_known_is_archived_with_a_looser_magic_check() {
        let seg = 1u64 << 20;
        let exp = SegmentExpectation {
            system_id: 42,
            segment_size: seg,
            major: NEWEST_KNOWN_MAJOR + 1,
        };
        let name = WalName::parse("000000010000000000000003").unwrap();
        let newer = header(0xD11B, 2, 3 * seg, 42, seg as u32);
        assert_eq!(
            check_segment(&name, seg, &newer, &exp).unwrap(),
            MagicCheck::NewerThanKnown(0xD11B)
        );
        // An older format, zeroes or a foreign cluster are still refused.
        for magic in [0xD118u16, 0xD110, 0, 0xFFFF] {
            let h = header(magic, 2, 3 * seg, 42, seg as u32);
            assert!(check_segment(&name, seg, &h, &exp).is_err(), "{magic:#X}");
        }
        let foreign = header(0xD11B, 2, 3 * seg, 43, seg as u32);
        assert!(check_segment(&name, seg, &foreign, &exp).is_err());
        let moved = header(0xD11B, 2, 4 * seg, 42, seg as u32);
        assert!(check_segment(&name, seg, &moved, &exp).is_err());
    }

    #[test]
    fn wal_of_an_upgraded_cluster_is_refused_with_what_to_do() {
        let seg = 1u64 << 20;
        let exp = SegmentExpectation {
            system_id: 42,
            segment_size: seg,
            major: 15,
        };
        let name = WalName::parse("000000010000000000000003").unwrap();
        let upgraded = header(0xD113, 2, 3 * seg, 77, seg as u32);
        let msg = check_segment(&name, seg, &upgraded, &exp)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("PostgreSQL 16 WAL, as after pg_upgrade"),
            "{msg}"
        );
        assert!(msg.contains("new server name"), "{msg}");
        assert_eq!(major_of_magic(0xD110), Some(15));
        assert_eq!(major_of_magic(0xD111), None);
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
