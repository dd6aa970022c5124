use super::*;
use crate::codec::{Codec, Compression};
use crate::storage::RepoUrl;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn write_cfg(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn flag_beats_file_beats_default() {
    let f = write_cfg("repo = '/from/file'\nserver = 'filesrv'\ncompression = 'lz4'\n");
    let args = CommonArgs {
        config: Some(f.path().into()),
        repo: Some("/from/flag".into()),
        ..Default::default()
    };
    let s = Settings::resolve(&args, None).unwrap();
    assert_eq!(s.repo, Some(RepoUrl::Local("/from/flag".into())));
    assert_eq!(s.server.as_deref(), Some("filesrv"));
    assert_eq!(s.codec.compression, Compression::Lz4);
    assert_eq!(s.codec.level, 0);
    let comp = CompressionArgs {
        compression: Some(Compression::Gzip),
        compression_level: None,
    };
    let s = Settings::resolve(&args, Some(&comp)).unwrap();
    assert_eq!(
        s.codec,
        Codec {
            compression: Compression::Gzip,
            level: 6
        }
    );
    let none = Settings::resolve(&CommonArgs::default(), None).unwrap();
    assert_eq!(none.codec, Codec::default());
    assert_eq!(none.retries, 3);
    assert!(none.repo_url().is_err());
}

#[test]
fn unknown_key_names_key_and_file() {
    let f = write_cfg("repo = '/r'\nreop = '/typo'\n");
    let args = CommonArgs {
        config: Some(f.path().into()),
        ..Default::default()
    };
    let msg = Settings::resolve(&args, None).unwrap_err().to_string();
    assert!(msg.contains("reop"), "{msg}");
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
}

#[test]
fn bad_values_are_errors() {
    for (text, key) in [
        ("compression = 'brotli'", "compression"),
        ("compression_level = 99", "compression_level"),
        ("repo = 'relative'", "repo"),
        ("server = '../x'", "server"),
        ("ssh_io_timeout = 0", "ssh_io_timeout"),
        ("retries = -1", "retries"),
    ] {
        let f = write_cfg(text);
        let args = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let msg = Settings::resolve(&args, None).unwrap_err().to_string();
        assert!(msg.contains(key) || msg.contains("brotli"), "{text}: {msg}");
    }
    let args = CommonArgs {
        config: Some("/nonexistent/pgcellar.toml".into()),
        ..Default::default()
    };
    assert!(Settings::resolve(&args, None)
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/pgcellar.toml"));
}

#[test]
fn a_level_belongs_to_its_algorithm() {
    let resolve = |text: &str, comp: CompressionArgs| {
        let f = write_cfg(text);
        let args = CommonArgs {
            config: Some(f.path().into()),
            ..Default::default()
        };
        Settings::resolve(&args, Some(&comp)).map(|s| s.codec)
    };
    let flag = |c: Compression, level: Option<i32>| CompressionArgs {
        compression: Some(c),
        compression_level: level,
    };
    // The example's shared level does not break --compression lz4.
    let c = resolve("compression_level = 3", flag(Compression::Lz4, None)).unwrap();
    assert_eq!((c.compression, c.level), (Compression::Lz4, 0));
    // A file's zstd level is not applied to a gzip chosen by flag.
    let c = resolve(
        "compression = 'zstd'\ncompression_level = 19",
        flag(Compression::Gzip, None),
    )
    .unwrap();
    assert_eq!((c.compression, c.level), (Compression::Gzip, 6));
    // The level beside the same algorithm still applies.
    let c = resolve("compression_level = 9", flag(Compression::Zstd, None)).unwrap();
    assert_eq!(c.level, 9);
    // lz4 ignores a flag level too; a bad level names where it came from.
    assert!(resolve("", flag(Compression::Lz4, Some(5))).is_ok());
    let msg = resolve("", flag(Compression::Zstd, Some(99)))
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("--compression-level"), "{msg}");
    let msg = resolve("compression_level = 99", CompressionArgs::default())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("compression_level (from "), "{msg}");
}

#[test]
fn errors_name_the_flag_not_the_file_for_flag_values() {
    let f = write_cfg("repo = '/r'\nssh_io_timeout = 5\n");
    let args = CommonArgs {
        config: Some(f.path().into()),
        repo: Some("relative".into()),
        ..Default::default()
    };
    let msg = Settings::resolve(&args, None).unwrap_err().to_string();
    assert!(msg.starts_with("--repo: "), "{msg}");
    let args = CommonArgs {
        config: Some(f.path().into()),
        ssh_io_timeout: Some(0),
        ..Default::default()
    };
    let msg = Settings::resolve(&args, None).unwrap_err().to_string();
    assert!(msg.starts_with("--ssh-io-timeout: "), "{msg}");
    let f = write_cfg("server = '../x'\n");
    let args = CommonArgs {
        config: Some(f.path().into()),
        ..Default::default()
    };
    let msg = Settings::resolve(&args, None).unwrap_err().to_string();
    assert!(msg.starts_with("server (from "), "{msg}");
}

#[test]
fn every_catalog_and_lock_key_has_a_flag_over_the_file() {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: CommonArgs,
    }
    let t = T::try_parse_from([
        "t",
        "--lock-stale-after",
        "30",
        "--backup-wal-timeout",
        "40",
        "--minimum-redundancy",
        "2",
        "--last-backup-maximum-age",
        "3 DAYS",
        "--archive-wait-timeout",
        "5",
        "--aborted-backup-max-age",
        "7",
    ])
    .unwrap();
    let f = write_cfg(
        "lock_stale_after = 1000\nbackup_wal_timeout = 1000\nminimum_redundancy = 9\n\
         last_backup_maximum_age = '9 WEEKS'\narchive_wait_timeout = 99\n\
         aborted_backup_max_age = 99\n",
    );
    let mut c = t.c;
    c.config = Some(f.path().into());
    let s = Settings::resolve(&c, None).unwrap();
    assert_eq!(s.lock_stale_after, Duration::from_secs(30));
    assert_eq!(s.backup.backup_wal_timeout, Duration::from_secs(40));
    let cat = CatalogSettings::from_settings(&s).unwrap();
    assert_eq!(cat.minimum_redundancy, 2);
    assert_eq!(cat.last_backup_maximum_age, Some(chrono::Duration::days(3)));
    assert_eq!(cat.archive_wait_timeout, Duration::from_secs(5));
    assert_eq!(cat.aborted_backup_max_age, Duration::from_secs(7));
    // Without the flags the file's values apply; a bad flag value names the flag.
    let file_only = CommonArgs {
        config: Some(f.path().into()),
        ..Default::default()
    };
    let s = Settings::resolve(&file_only, None).unwrap();
    assert_eq!(s.lock_stale_after, Duration::from_secs(1000));
    let cat = CatalogSettings::from_settings(&s).unwrap();
    assert_eq!(cat.minimum_redundancy, 9);
    c.archive_wait_timeout = Some(0);
    let s = Settings::resolve(&c, None).unwrap();
    let msg = CatalogSettings::from_settings(&s).unwrap_err().to_string();
    assert!(msg.starts_with("--archive-wait-timeout: "), "{msg}");
}

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pgcellar.toml");
    file::FileConfig::load(&path).unwrap();
}

#[test]
fn the_repository_secret_comes_from_exactly_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let pass = dir.path().join("p");
    std::fs::write(&pass, "a passphrase\n").unwrap();
    let cfg = write_cfg(&format!("key_file = {:?}\n", key.display().to_string()));
    // From the file, when no flag names one.
    let from_file = CommonArgs {
        config: Some(cfg.path().to_path_buf()),
        ..Default::default()
    };
    let s = Settings::resolve(&from_file, None).unwrap();
    assert_eq!(s.key, KeySource::KeyFile(key.clone()));
    assert!(matches!(
        s.key.read().unwrap(),
        Some(crate::crypto::Secret::KeyFile(_))
    ));
    // A flag replaces the file's choice instead of adding a second secret.
    let flag = CommonArgs {
        passphrase_file: Some(pass.clone()),
        ..from_file.clone()
    };
    assert_eq!(
        Settings::resolve(&flag, None).unwrap().key,
        KeySource::PassphraseFile(pass.clone())
    );
    // Two flags at once are a mistake, not a guess.
    let both = CommonArgs {
        passphrase_file: Some(pass),
        key_file: Some(key),
        ..Default::default()
    };
    let msg = Settings::resolve(&both, None).unwrap_err().to_string();
    assert!(msg.contains("more than one repository secret"), "{msg}");
    // A short key file is refused when read, with what to do.
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    let msg = KeySource::KeyFile(short).read().err().unwrap().to_string();
    assert!(msg.contains("pgcellar key generate"), "{msg}");
}

#[test]
fn packaged_etc_config_parses_and_names_no_machine() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pgcellar.toml");
    let f = file::FileConfig::load(&path).unwrap();
    // The Debian package installs it on every host as /etc/pgcellar.toml, so what
    // belongs to one machine stays commented out.
    assert!(f.repo.is_none() && f.pgdata.is_none() && f.key_file.is_none());
    assert_eq!(f.server.as_deref(), Some("main"));
}
