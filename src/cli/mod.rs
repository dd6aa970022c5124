//! The binaries' command lines (one module each, so the package's man pages and
//! completions come from the same definitions), argument parsing with a chosen
//! usage-error exit code, and one-line error reporting.

pub mod base_backup;
pub mod pgcellar;
pub mod restore;
pub mod wal_get;
pub mod wal_push;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

/// A binary's command line, and the shared options (of
/// [`CommonArgs`](crate::config::CommonArgs)) that mean nothing to it.
pub trait Scoped: CommandFactory + FromArgMatches {
    /// Ids (field names, in groups) of the shared options this binary does not use: hidden
    /// from its `--help`, man page and completions, and refused on its command line.
    /// Their environment variables and config-file keys are still read and ignored,
    /// so one environment and one file serve every binary.
    const NOT_OFFERED: &'static [&'static [&'static str]];
}

/// Every id of `T::NOT_OFFERED`.
fn not_offered<T: Scoped>() -> impl Iterator<Item = &'static str> {
    T::NOT_OFFERED
        .iter()
        .flat_map(|group| group.iter().copied())
}

/// Options only `pgcellar` (the catalog) and `base-backup` use.
const CATALOG_ONLY: &[&str] = &[
    "minimum_redundancy",
    "last_backup_maximum_age",
    "archive_wait_timeout",
    "aborted_backup_max_age",
];

/// Options of a binary that neither connects to the database nor takes the lock.
const NO_DATABASE: &[&str] = &["conninfo", "backup_wal_timeout", "lock_stale_after"];

impl Scoped for wal_push::Args {
    const NOT_OFFERED: &'static [&'static [&'static str]] = &[NO_DATABASE, CATALOG_ONLY];
}

impl Scoped for wal_get::Args {
    const NOT_OFFERED: &'static [&'static [&'static str]] =
        &[NO_DATABASE, &["allow_root"], CATALOG_ONLY];
}

impl Scoped for base_backup::Args {
    const NOT_OFFERED: &'static [&'static [&'static str]] = &[CATALOG_ONLY];
}

impl Scoped for restore::Args {
    const NOT_OFFERED: &'static [&'static [&'static str]] =
        &[&["conninfo", "pgdata", "backup_wal_timeout"], CATALOG_ONLY];
}

impl Scoped for pgcellar::Args {
    const NOT_OFFERED: &'static [&'static [&'static str]] = &[];
}

/// The binary's clap command as it is offered: without the options it does not use.
pub fn command<T: Scoped>() -> clap::Command {
    not_offered::<T>().fold(T::command(), |cmd, id| cmd.mut_arg(id, |a| a.hide(true)))
}

/// Every binary's command, for the man pages and shell completions of the package
/// (`examples/dist-assets.rs`).
pub fn commands() -> Vec<clap::Command> {
    vec![
        command::<wal_push::Args>(),
        command::<wal_get::Args>(),
        command::<base_backup::Args>(),
        command::<restore::Args>(),
        command::<pgcellar::Args>(),
    ]
}

/// Parse `args` (the program name first) as the binary's command line; an option
/// the binary does not use is a usage error when given there.
pub fn try_parse_from<T: Scoped>(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<T, clap::Error> {
    let mut cmd = command::<T>();
    let m = cmd.try_get_matches_from_mut(args)?;
    if let Some(id) =
        not_offered::<T>().find(|id| m.value_source(id) == Some(ValueSource::CommandLine))
    {
        let name = cmd.get_name().to_string();
        return Err(cmd.error(
            clap::error::ErrorKind::UnknownArgument,
            format!(
                "--{} does not apply to {name}; it is not one of its options",
                id.replace('_', "-")
            ),
        ));
    }
    T::from_arg_matches(&m)
}

/// Parse the command line; on a usage error print clap's message and exit with
/// `usage_exit` (wal-push must stay below 126, wal-get must exceed 125).
pub fn parse_or_exit<T: Scoped>(usage_exit: i32) -> T {
    let parsed = try_parse_from::<T>(std::env::args_os());
    match parsed {
        Ok(v) => v,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => usage_exit,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// The error and its causes on one line. A pgcellar [`Error`](crate::Error) already
/// names its own cause in its message, so the chain is followed no further than the
/// first one (its `source()` would repeat that text).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        parts.push(cause.to_string());
        if cause.is::<crate::Error>() {
            break;
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// End a run: a failure becomes one error line on stderr and exit status 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        crate::log_error!("{}", one_line(&e));
        std::process::exit(1);
    }
}

/// The exit code the panic hook uses; see [`install_panic_hook`].
static PANIC_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);

/// Make any panic (a bug) end the process with one line on stderr,
/// `<program>: internal error: <message> at <file:line:col>`, and exit `code`, from
/// whichever thread panicked. Called first thing in every `main`, because Rust's
/// default (exit 101 after a multi-line "panicked at" report) is a wrong answer for
/// the hooks PostgreSQL calls:
///
/// - `wal-get` uses 126 (> 125): PostgreSQL reads 1-125 from `restore_command` as
///   "not archived" and would end recovery early, silently losing data. With
///   `--standby` it uses 1 after the loud line, as its other failures do, so a standby
///   keeps retrying ([`set_panic_exit_code`]).
/// - `wal-push` uses 1: PostgreSQL retries. Above 125 (and a signal such as the
///   SIGABRT of `panic = "abort"`, 134 through a shell) makes the archiver exit.
/// - `base-backup`, `restore` and `pgcellar` use 1, their code for any failure.
pub fn install_panic_hook(program: &'static str, code: i32) {
    use std::sync::atomic::Ordering;
    PANIC_EXIT.store(code, Ordering::SeqCst);
    std::panic::set_hook(Box::new(move |info| {
        use std::io::Write;
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let line = format!(
            "{program}: internal error: {msg}{at}; this is a bug in pgcellar, please report it\n"
        )
        .replace(['\r'], " ");
        let line = format!("{}\n", line.trim_end().replace('\n', " "));
        // Never panic inside the hook (a second panic would abort with SIGABRT).
        let _ = std::io::stderr().write_all(line.as_bytes());
        std::process::exit(PANIC_EXIT.load(Ordering::SeqCst));
    }));
}

/// Change the exit code of the panic hook once the command line is known
/// (`wal-get --standby`: 1; the detached prefetcher: 0).
pub fn set_panic_exit_code(code: i32) {
    PANIC_EXIT.store(code, std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::process::Command;

    fn argv(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn every_command_is_well_formed_and_offers_only_its_options() {
        for cmd in super::commands() {
            cmd.clone().debug_assert();
            let help = cmd.clone().render_long_help().to_string();
            let name = cmd.get_name().to_string();
            let offers = |flag: &str| help.contains(flag);
            assert!(help.contains("Exit codes:"), "{name}");
            assert!(help.contains("Examples:"), "{name}");
            match name.as_str() {
                "wal-get" | "wal-push" | "restore" => {
                    assert!(!offers("--conninfo"), "{name} offers --conninfo");
                    assert!(!offers("--minimum-redundancy"), "{name}");
                }
                "base-backup" | "pgcellar" => assert!(offers("--conninfo"), "{name}"),
                other => panic!("unexpected command {other}"),
            }
        }
    }

    #[test]
    fn an_option_a_binary_does_not_use_is_refused_on_its_command_line() {
        let e = super::try_parse_from::<super::wal_get::Args>(argv(
            "wal-get --conninfo host=x 000000010000000000000001 /tmp/x",
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("--conninfo does not apply to wal-get"), "{e}");
        let ok = super::try_parse_from::<super::wal_get::Args>(argv(
            "wal-get 000000010000000000000001 /tmp/x",
        ));
        assert!(ok.is_ok());
        let ok = super::try_parse_from::<super::base_backup::Args>(argv(
            "base-backup --conninfo host=x",
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn one_line_prints_a_cause_once_although_source_exposes_it() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = crate::Error::io("reading /x", io);
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some("denied".to_string())
        );
        let e = anyhow::Error::from(err).context("pushing 000000010000000000000001");
        assert_eq!(
            super::one_line(&e),
            "pushing 000000010000000000000001: reading /x: denied"
        );
        // Other error types keep their whole chain, as before.
        let e = anyhow::anyhow!("inner\ntext").context("outer");
        assert_eq!(super::one_line(&e), "outer: inner text");
    }

    /// The child half of `panic_exits_with_the_binary_code`: does nothing in a
    /// normal test run; re-executed with the variable set, it installs the hook and
    /// panics for real (in a spawned thread when asked), as a binary would.
    #[test]
    fn panic_child() {
        let Ok(spec) = std::env::var("PGCELLAR_PANIC_CHILD") else {
            return;
        };
        let (code, standby, thread) = match spec.split(',').collect::<Vec<_>>()[..] {
            [c, s, t] => (c.parse().unwrap(), s == "1", t == "1"),
            _ => panic!("bad PGCELLAR_PANIC_CHILD {spec:?}"),
        };
        super::install_panic_hook("wal-get", code);
        if standby {
            super::set_panic_exit_code(1);
        }
        let boom = || -> u8 {
            let v: Vec<u8> = Vec::new();
            v[std::hint::black_box(3)]
        };
        if thread {
            let _ = std::thread::spawn(boom).join();
            // Reaching this line means the hook did not end the process.
            std::process::exit(77);
        }
        boom();
        std::process::exit(78);
    }

    fn run_child(spec: &str) -> (Option<i32>, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "cli::tests::panic_child", "--nocapture"])
            .env("PGCELLAR_PANIC_CHILD", spec)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn panic_exits_with_the_binary_code() {
        for (spec, want) in [
            ("126,0,0", 126), // wal-get: stop recovery
            ("126,0,1", 126), // ... from any thread
            ("126,1,0", 1),   // wal-get --standby: keep retrying
            ("1,0,0", 1),     // wal-push and the others
            ("1,0,1", 1),
        ] {
            let (code, stderr) = run_child(spec);
            assert_eq!(code, Some(want), "{spec}: {stderr}");
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("internal error"))
                .collect();
            assert_eq!(lines.len(), 1, "{spec}: {stderr}");
            assert!(
                lines[0].starts_with("wal-get: internal error: index out of bounds")
                    && lines[0].contains("src/cli/mod.rs:"),
                "{spec}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{spec}: {stderr}");
        }
    }
}
