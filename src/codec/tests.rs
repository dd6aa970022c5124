//! Unit tests of each filter alone, of the stacks, and of the bytes they store.

use super::compress::{Codec, Compression, Decoder, Encoder};
use super::hash::{ContentHash, CountReader, CountWriter, HashReader, HashWriter, Hashed};
use super::pipeline::{decode, encode, encode_pipelined, hash, ReadStack, WriteStack, BUF_SIZE};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Plain SHA-256 naming, as in an unencrypted repository.
const P: ContentHash = ContentHash::Sha256;

const ALL: [Compression; 4] = [
    Compression::Zstd,
    Compression::Lz4,
    Compression::Gzip,
    Compression::None,
];

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn default_codec(compression: Compression) -> Codec {
    Codec {
        compression,
        level: compression.default_level(),
    }
}

fn wal_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    let filler = b"aid=00000000 bid=0001 abalance=0000000 filler=                    ";
    let mut page = 0u64;
    while out.len() < len {
        let start = out.len();
        out.extend_from_slice(&0xD113u16.to_le_bytes());
        out.extend_from_slice(&[0u8; 6]);
        out.extend_from_slice(&(page * 8192).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        page += 1;
        while out.len() - start < 8192 - 200 {
            let body = 40 + (next() % 160) as usize;
            out.extend_from_slice(&(body as u32).to_le_bytes());
            out.extend_from_slice(&next().to_le_bytes());
            out.extend_from_slice(&(next() % 4).to_le_bytes());
            for i in 0..body {
                let r = next();
                out.push(if r % 5 < 3 {
                    filler[i % filler.len()]
                } else {
                    r as u8
                });
            }
        }
        out.resize(start + 8192, 0);
    }
    out.truncate(len);
    out
}

/// SHA-256 of the stored file for `wal_like(1 MiB)` (first 40 bytes as the head),
/// computed with the code before the filters were split out of one function. A
/// change here changes the bytes on disk: existing repositories would still be
/// readable, but dedup by stored bytes and the benchmarks' numbers would not hold.
const PINNED: [(Compression, i32, usize, &str); 8] = [
    (
        Compression::Zstd,
        3,
        740473,
        "ff48169c9f5477da7277ac2d0883ccef19114e0e58aa8be3275298d2ae87c56b",
    ),
    (
        Compression::Zstd,
        1,
        756034,
        "337697d115ed867b800ba99b0ba9407858016d122fa3d69dd74f46cf4e53a89e",
    ),
    (
        Compression::Zstd,
        -7,
        994684,
        "8f1878ec620e9fddca614f8092fcbd729fa72712a6ec8fa962196bbb4e153b26",
    ),
    (
        Compression::Zstd,
        19,
        712281,
        "85bfe06458d4d0c041f9b4f9f2b702f96199e20684ecce81bc0f5f5d17fdafe4",
    ),
    (
        Compression::Lz4,
        0,
        962563,
        "98243128f3d820b7a08a1802e9153b6add69cfdc26a782543eb2eb600abd196b",
    ),
    (
        Compression::Gzip,
        6,
        739120,
        "d40732a57a93d8fa8201d9ee44dee9393081230612986c504334b45e359a1736",
    ),
    (
        Compression::Gzip,
        1,
        775176,
        "40845efee21741defaf5828f94985cb6e9458bdf567b4201400162454c32a201",
    ),
    (
        Compression::None,
        0,
        1048576,
        "7b83e71baaf2e01a34c7872b8d788aa04dcfb0e89c53c10d289488f77b09d63a",
    ),
];

#[test]
fn stored_bytes_are_pinned() {
    let data = wal_like(1 << 20);
    let want = "7b83e71baaf2e01a34c7872b8d788aa04dcfb0e89c53c10d289488f77b09d63a";
    assert_eq!(sha(&data), want, "the test input itself changed");
    for (compression, level, len, stored_sha) in PINNED {
        let codec = Codec { compression, level };
        let mut stored = Vec::new();
        let st = encode(&P, &data[..40], &mut &data[40..], &mut stored, codec).unwrap();
        assert_eq!((st.sha256.as_str(), st.size), (want, data.len() as u64));
        assert_eq!(
            (stored.len(), sha(&stored).as_str()),
            (len, stored_sha),
            "{codec:?}"
        );
        let mut piped = Vec::new();
        encode_pipelined(&P, &data[..40], &mut &data[40..], &mut piped, codec).unwrap();
        assert_eq!(sha(&piped), stored_sha, "pipelined {codec:?}");
    }
}

#[test]
fn round_trip_every_codec() {
    let data: Vec<u8> = (0..700_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect();
    let want = sha(&data);
    for c in ALL {
        let codec = default_codec(c);
        let mut stored = Vec::new();
        let st = encode(&P, &data[..100], &mut &data[100..], &mut stored, codec).unwrap();
        assert_eq!(st.sha256, want, "{c}");
        assert_eq!(st.size, data.len() as u64);
        assert_eq!(st.stored_size, stored.len() as u64);
        let mut piped = Vec::new();
        let st2 = encode_pipelined(&P, &data[..100], &mut &data[100..], &mut piped, codec).unwrap();
        assert_eq!(st2, st, "{c}");
        assert_eq!(piped, stored, "{c}");
        let mut out = Vec::new();
        let back = decode(&P, &mut &stored[..], &mut out, c).unwrap();
        assert_eq!(out, data);
        assert_eq!(back.sha256, want);
        assert_eq!(back.stored_size, stored.len() as u64);
        assert_eq!(Compression::from_extension(c.extension()), Some(c));
    }
    assert_eq!(hash(&P, &data[..5], &mut &data[5..]).unwrap().0, want);
}

#[test]
fn both_encoders_store_the_same_bytes_wherever_the_head_ends() {
    let data = wal_like(3 * BUF_SIZE + 123);
    for c in ALL {
        let codec = default_codec(c);
        for cut in [0, 1, 40, BUF_SIZE + 7] {
            let (head, rest) = data.split_at(cut);
            let mut plain = Vec::new();
            let st = encode(&P, head, &mut &rest[..], &mut plain, codec).unwrap();
            let mut piped = Vec::new();
            let st2 = encode_pipelined(&P, head, &mut &rest[..], &mut piped, codec).unwrap();
            assert_eq!(sha(&piped), sha(&plain), "{c} head {cut}");
            assert_eq!(st, st2);
            assert_eq!(
                (st.sha256.as_str(), st.size),
                (sha(&data).as_str(), data.len() as u64)
            );
            assert_eq!(
                hash(&P, head, &mut &rest[..]).unwrap(),
                (st.sha256, st.size)
            );
        }
    }
}

#[test]
fn corrupt_stream_is_detected() {
    let data = vec![7u8; 100_000];
    let mut stored = Vec::new();
    encode(&P, &[], &mut &data[..], &mut stored, Codec::default()).unwrap();
    let mid = stored.len() / 2;
    stored[mid] ^= 0xFF;
    let mut out = Vec::new();
    let r = decode(&P, &mut &stored[..], &mut out, Compression::Zstd);
    // Either the decoder notices or the hash differs.
    if let Ok(st) = r {
        assert_ne!(st.sha256, sha(&data));
    }
}

#[test]
fn levels_are_checked() {
    assert!(Compression::Zstd.check_level(23).is_err());
    assert!(Compression::Gzip.check_level(9).is_ok());
    assert!(Compression::Lz4.check_level(1).is_err());
    assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip);
    assert!("brotli".parse::<Compression>().is_err());
}

/// A writer that takes at most `max` bytes per call, as a pipe or socket may.
struct Trickle {
    out: Vec<u8>,
    max: usize,
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn hash_writer_hashes_only_what_the_inner_writer_took() {
    let data = wal_like(10_000);
    let mut w = HashWriter::new(
        Trickle {
            out: Vec::new(),
            max: 7,
        },
        &P,
    );
    let n = w.write(&data).unwrap();
    assert_eq!(n, 7);
    w.write_all(&data[n..]).unwrap();
    let (inner, hashed) = w.finish();
    assert_eq!(inner.out, data);
    assert_eq!(
        hashed,
        Hashed {
            sha256: sha(&data),
            content_sha256: sha(&data),
            size: data.len() as u64
        }
    );
}

#[test]
fn hash_reader_passes_bytes_through_and_hashes_them() {
    let data = wal_like(300_000);
    let mut r = HashReader::new(&data[..], &P);
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    let (_, hashed) = r.finish();
    assert_eq!(got, data);
    assert_eq!(
        (hashed.sha256, hashed.size),
        (sha(&data), data.len() as u64)
    );
    // Nothing read, nothing hashed: the SHA-256 of the empty string.
    let (_, empty) = HashReader::new(&data[..], &P).finish();
    assert_eq!((empty.sha256, empty.size), (sha(b""), 0));
}

#[test]
fn count_filters_count_and_pass_through() {
    let data = wal_like(50_000);
    let mut w = CountWriter::new(Trickle {
        out: Vec::new(),
        max: 1000,
    });
    assert_eq!(w.write(&data).unwrap(), 1000);
    assert_eq!(w.count(), 1000);
    w.write_all(&data[1000..]).unwrap();
    assert_eq!(w.count(), data.len() as u64);
    let mut r = CountReader::new(&data[..]);
    let mut buf = [0u8; 333];
    assert_eq!(r.read(&mut buf).unwrap(), 333);
    assert_eq!(r.count(), 333);
    io::copy(&mut r, &mut io::sink()).unwrap();
    assert_eq!(r.count(), data.len() as u64);
}

#[test]
fn encoder_and_decoder_round_trip_alone() {
    let data = wal_like(400_000);
    for c in ALL {
        let mut enc = Encoder::new(Vec::new(), default_codec(c)).unwrap();
        for chunk in data.chunks(10_007) {
            enc.write_all(chunk).unwrap();
        }
        let stored = enc.finish().unwrap();
        if c != Compression::None {
            assert!(stored.len() < data.len(), "{c} did not compress");
        }
        let mut dec = Decoder::new(&stored[..], c).unwrap();
        let mut back = Vec::new();
        dec.read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "{c}");
        assert!(dec.get_ref().is_empty(), "{c} left stored bytes unread");
    }
}

/// Decode `stored` through the full read stack: the content and what it measured.
fn load(stored: &[u8], c: Compression) -> io::Result<(Vec<u8>, Hashed, u64)> {
    let mut r = HashReader::new(ReadStack::new(stored, c)?, &P);
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    let (stack, hashed) = r.finish();
    Ok((out, hashed, stack.stored_size()))
}

#[test]
fn stacks_round_trip_and_count_both_sides() {
    let data = wal_like(600_000);
    for c in ALL {
        let mut stored = Vec::new();
        let mut w = HashWriter::new(WriteStack::new(&mut stored, default_codec(c)).unwrap(), &P);
        for chunk in data.chunks(65_536) {
            w.write_all(chunk).unwrap();
        }
        let (stack, original) = w.finish();
        let stored_size = stack.finish().unwrap();
        assert_eq!(stored_size, stored.len() as u64, "{c}");
        assert_eq!(
            (original.sha256.as_str(), original.size),
            (sha(&data).as_str(), data.len() as u64)
        );
        let (back, hashed, read) = load(&stored, c).unwrap();
        assert_eq!(back, data, "{c}");
        assert_eq!(hashed, original, "{c}");
        assert_eq!(read, stored.len() as u64, "{c}");
    }
}

#[test]
fn a_changed_stored_byte_is_caught() {
    let data = wal_like(200_000);
    for c in ALL {
        let mut stored = Vec::new();
        let st = encode(&P, &[], &mut &data[..], &mut stored, default_codec(c)).unwrap();
        // Past the frame header, where a flipped bit changes content, not framing.
        let at = stored.len() / 3;
        stored[at] ^= 0x10;
        // The decoder may notice; if it does not, the hash must.
        if let Ok(back) = decode(&P, &mut &stored[..], &mut io::sink(), c) {
            assert_ne!(back.sha256, st.sha256, "{c}: a flipped byte went unnoticed");
        }
    }
}

#[test]
fn a_truncated_stored_file_is_caught() {
    let data = wal_like(200_000);
    for c in ALL {
        let mut stored = Vec::new();
        let st = encode(&P, &[], &mut &data[..], &mut stored, default_codec(c)).unwrap();
        let whole = (st.sha256.clone(), st.size);
        // Past lz4's 4-byte end mark, which it may do without.
        for keep in [stored.len() - 5, stored.len() / 2, 3] {
            match decode(&P, &mut &stored[..keep], &mut io::sink(), c) {
                // zstd and gzip notice the missing end themselves; lz4 frames (no
                // content size or checksum) and raw files leave it to the hash.
                Ok(back) => {
                    assert!(
                        matches!(c, Compression::Lz4 | Compression::None),
                        "{c} {keep}"
                    );
                    assert_ne!((back.sha256, back.size), whole, "{c} cut at {keep}");
                }
                Err(e) => assert_ne!(c, Compression::None, "{c}: {e}"),
            }
        }
        if c == Compression::None {
            // Nothing is held back, so there is no unfinished raw stream.
            continue;
        }
        // What an encoder wrote before its finish is an incomplete stream.
        let sink = Shared::default();
        let mut enc = Encoder::new(sink.clone(), default_codec(c)).unwrap();
        enc.write_all(&data).unwrap();
        let partial = sink.0.borrow().clone();
        enc.finish().unwrap();
        if let Ok((_, back, _)) = load(&partial, c) {
            assert_eq!(c, Compression::Lz4);
            assert_ne!((back.sha256, back.size), whole, "{c} unfinished");
        }
    }
}

/// A sink whose content can be read while an encoder still owns it.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that fails after `left` bytes.
struct Failing {
    left: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A source that fails after `left` bytes.
struct Broken {
    left: usize,
}

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("read error"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(1);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn pipelined_errors_reach_the_caller_from_either_side() {
    let data = wal_like(4 * BUF_SIZE);
    for c in ALL {
        let codec = default_codec(c);
        let e = encode_pipelined(&P, &[], &mut &data[..], &mut Failing { left: 1000 }, codec)
            .unwrap_err();
        assert_eq!(e.to_string(), "disk full", "{c}");
        let e = encode_pipelined(
            &P,
            &[],
            &mut Broken { left: 3 * BUF_SIZE },
            &mut io::sink(),
            codec,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "read error", "{c}");
    }
}

/// Encodes a 16 MiB WAL-like file 20 times with zstd and lz4, both ways, and prints
/// milliseconds per call: `cargo test --lib codec::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_encode_16mib() {
    let data = wal_like(16 << 20);
    let path = std::env::temp_dir().join(format!("pgcellar-codec-bench-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    for compression in [Compression::Zstd, Compression::Lz4] {
        let codec = default_codec(compression);
        for pipelined in [true, false] {
            let t = std::time::Instant::now();
            let mut stored = 0;
            for _ in 0..20 {
                let mut f = std::fs::File::open(&path).unwrap();
                let st = if pipelined {
                    encode_pipelined(&P, &[], &mut f, &mut io::sink(), codec)
                } else {
                    encode(&P, &[], &mut f, &mut io::sink(), codec)
                };
                stored = st.unwrap().stored_size;
            }
            println!(
                "BENCH {compression} pipelined={pipelined}: {:.1} ms/call (stored {stored})",
                t.elapsed().as_secs_f64() * 1000.0 / 20.0
            );
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn keyed_names_hide_the_sha256_and_keep_it_for_local_checks() {
    let data = wal_like(100_000);
    let key = ContentHash::Hmac(crate::crypto::SubKey::from_bytes([3; 32]));
    let other = ContentHash::Hmac(crate::crypto::SubKey::from_bytes([4; 32]));
    let mut stored = Vec::new();
    let st = encode(&key, &[], &mut &data[..], &mut stored, Codec::default()).unwrap();
    assert_eq!(st.content_sha256, sha(&data));
    assert_ne!(st.sha256, sha(&data));
    assert_eq!(st.sha256, key.of(&data));
    assert_ne!(st.sha256, other.of(&data));
    assert_eq!(key.id_of_sha256(&sha(&data)).unwrap(), st.sha256);
    assert_eq!(hash(&key, &[], &mut &data[..]).unwrap().0, st.sha256);
    let back = decode(&key, &mut &stored[..], &mut io::sink(), Compression::Zstd).unwrap();
    assert_eq!(back.sha256, st.sha256);
    assert_eq!(P.of(&data), sha(&data));
}
