//! The recovery settings a restore writes: `restore_command` through `wal-get`, the
//! recovery target, and archiving disabled unless asked to keep it.

use super::dest::write_small;
use super::options::{ArchiveMode, RestoreOptions, Target, TimelineTarget};
use super::owner::Owner;
use crate::config::Settings;
use crate::error::{Error, IoContext, Result};
use crate::repo::manifest::Manifest;
use crate::util::shell_quote;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The `archive_command` a restore writes by default. It fails on every call, so
/// PostgreSQL keeps each segment (`.ready`) and reports the failure in its log and in
/// `pg_stat_archiver`; the comment is what the DBA sees in "The failed archive command
/// was: ...".
pub const DISABLED_ARCHIVE_COMMAND: &str =
    "false  # archiving disabled by pgcellar restore; see restore --archive-mode";

/// `wal-get` next to this executable: restore_command must not depend on PATH.
pub(super) fn wal_get_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().io_context(|| "locating the restore binary".into())?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::config("cannot find the directory of the restore binary"))?;
    let p = dir.join("wal-get");
    if !p.is_file() {
        return Err(Error::config(format!(
            "{} not found: restore writes its absolute path into restore_command, so wal-get \
             must be installed next to restore",
            p.display()
        )));
    }
    Ok(p)
}

pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .io_context(|| "reading the current directory".into())?
            .join(p))
    }
}

/// Quote a value for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The `restore_command` for this repository.
pub fn restore_command(wal_get: &Path, settings: &Settings, standby: bool) -> Result<String> {
    let mut args = vec![wal_get.display().to_string()];
    if let Some(cfg) = &settings.config_file {
        args.push("--config".into());
        args.push(absolute(cfg)?.display().to_string());
    }
    args.push("--repo".into());
    args.push(settings.repo_url()?.to_string());
    args.push("--server".into());
    args.push(settings.server_name()?.to_string());
    if let Some(id) = &settings.ssh.identity {
        args.push("--ssh-identity".into());
        args.push(absolute(id)?.display().to_string());
    }
    if let Some(kh) = &settings.ssh.known_hosts {
        args.push("--ssh-known-hosts".into());
        args.push(absolute(kh)?.display().to_string());
    }
    let (s3, secret_forwarded) = settings.s3_forward_args()?;
    args.extend(s3);
    if !secret_forwarded {
        crate::log_warn!(
            "the S3 secret key came from AWS_SECRET_ACCESS_KEY, which restore_command cannot \
             carry: PostgreSQL's wal-get needs it in the server's environment, or use \
             --s3-secret-access-key-file or a --config file instead (wal-get stops recovery \
             if it has no credentials)"
        );
    }
    match settings.key.forward_args()? {
        Some(key) => args.extend(key),
        None => crate::log_warn!(
            "the repository passphrase came from {}, which restore_command cannot carry: \
             PostgreSQL's wal-get needs it in the server's environment, or use \
             --passphrase-file or --key-file instead (wal-get stops recovery without it)",
            crate::config::PASSPHRASE_ENV
        ),
    }
    if standby {
        args.push("--standby".into());
    }
    let mut cmd: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    cmd.push("%f".into());
    cmd.push("%p".into());
    Ok(cmd.join(" "))
}

/// Comment out older recovery settings in postgresql.auto.conf and append ours.
pub(super) fn write_recovery_settings(
    dest: &Path,
    settings: &Settings,
    opts: &RestoreOptions,
    m: &Manifest,
    wal_get: &Path,
    owner: &Owner,
) -> Result<()> {
    let path = dest.join("postgresql.auto.conf");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut text = String::new();
    let disable_archiving = opts.archive_mode == ArchiveMode::Off;
    for line in old.lines() {
        let key = line.trim_start();
        let streaming = (opts.primary_conninfo.is_some() && key.starts_with("primary_conninfo"))
            || (opts.primary_slot_name.is_some() && key.starts_with("primary_slot_name"));
        if key.starts_with("recovery_target")
            || key.starts_with("restore_command")
            || streaming
            || (!opts.standby && key.starts_with("synchronous_standby_names"))
            || (disable_archiving
                && (key.starts_with("archive_command") || key.starts_with("archive_library")))
        {
            text.push_str("# disabled by pgcellar restore: ");
        }
        text.push_str(line);
        text.push('\n');
    }
    let mut lines = vec![format!(
        "# added by pgcellar restore of backup {} at {}",
        m.id,
        crate::repo::now_rfc3339()
    )];
    lines.push(format!(
        "restore_command = {}",
        conf_quote(&restore_command(wal_get, settings, opts.standby)?)
    ));
    match &opts.target {
        Some(Target::Time(t, _)) => lines.push(format!("recovery_target_time = {}", conf_quote(t))),
        Some(Target::Xid(x)) => lines.push(format!("recovery_target_xid = '{x}'")),
        Some(Target::Lsn(l, _)) => lines.push(format!("recovery_target_lsn = '{l}'")),
        Some(Target::Name(n)) => lines.push(format!("recovery_target_name = {}", conf_quote(n))),
        Some(Target::Immediate) => lines.push("recovery_target = 'immediate'".into()),
        None => {}
    }
    if opts.exclusive {
        lines.push("recovery_target_inclusive = off".into());
    }
    match opts.target_timeline {
        Some(TimelineTarget::Latest) => lines.push("recovery_target_timeline = 'latest'".into()),
        Some(TimelineTarget::Current) => lines.push("recovery_target_timeline = 'current'".into()),
        Some(TimelineTarget::Id(n)) => lines.push(format!("recovery_target_timeline = '{n}'")),
        None => {}
    }
    if let Some(a) = opts.target_action {
        lines.push(format!("recovery_target_action = '{}'", a.as_str()));
    }
    if let Some(c) = &opts.primary_conninfo {
        lines.push(format!("primary_conninfo = {}", conf_quote(c)));
    }
    if let Some(slot) = &opts.primary_slot_name {
        lines.push(format!("primary_slot_name = {}", conf_quote(slot)));
    }
    if !opts.standby {
        // The source's synchronous standbys (a receive-wal --synchronous among them)
        // follow the old primary: waiting for them, every commit of the promoted copy
        // would hang. Name the new primary's standbys again once they follow it.
        lines.push("synchronous_standby_names = ''".into());
    }
    if disable_archiving {
        // archive_mode stays as it was: segments keep being marked .ready, so a real
        // failover only has to set archive_command and reload (archive_mode would need
        // a restart, and segments written while it was off would never be archived).
        lines.push(format!(
            "archive_command = {}",
            conf_quote(DISABLED_ARCHIVE_COMMAND)
        ));
        if m.pg_version_num >= 150000 {
            // From 15 an archive_library takes precedence over archive_command.
            lines.push("archive_library = ''".into());
        }
    }
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    write_small(&path, text.as_bytes(), owner)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/wal-get"), "/usr/bin/wal-get");
        assert_eq!(shell_quote("/my dir/it's"), "'/my dir/it'\\''s'");
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
    }

    /// A restore from S3 hands wal-get every S3 option it was given, the secret only as
    /// the absolute path of its file.
    #[test]
    fn s3_options_reach_the_restore_command() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "very-secret-value").unwrap();
        let args = crate::config::CommonArgs {
            repo: Some("s3://bucket/prefix".into()),
            server: Some("main".into()),
            s3_endpoint: Some("http://127.0.0.1:3900".into()),
            s3_region: Some("garage".into()),
            s3_allow_http: Some(true),
            s3_access_key_id: Some("GK123".into()),
            s3_secret_access_key_file: Some(secret.clone()),
            s3_request_timeout: Some(7),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        let cmd = restore_command(Path::new("/usr/bin/wal-get"), &settings, false).unwrap();
        for part in [
            "--repo s3://bucket/prefix",
            "--s3-endpoint http://127.0.0.1:3900",
            "--s3-region garage",
            "--s3-allow-http true",
            "--s3-access-key-id GK123",
            "--s3-request-timeout 7",
        ] {
            assert!(cmd.contains(part), "{part:?} missing from {cmd}");
        }
        assert!(
            cmd.contains(&format!("--s3-secret-access-key-file {}", secret.display())),
            "{cmd}"
        );
        assert!(!cmd.contains("very-secret-value"), "{cmd}");
    }

    #[test]
    fn the_key_file_reaches_the_restore_command_and_the_key_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("repo.key");
        fs::write(&key, "0123456789abcdef0123456789abcdef-secret").unwrap();
        let args = crate::config::CommonArgs {
            repo: Some("/srv/repo".into()),
            server: Some("main".into()),
            key_file: Some(key.clone()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args, None).unwrap();
        let cmd = restore_command(Path::new("/usr/bin/wal-get"), &settings, false).unwrap();
        assert!(
            cmd.contains(&format!("--key-file {}", key.display())),
            "{cmd}"
        );
        assert!(!cmd.contains("secret"), "{cmd}");
    }
}
