//! Helpers shared by the binaries: argument parsing with a chosen usage-error exit
//! code, and one-line error reporting.

use clap::Parser;

/// Parse the command line; on a usage error print clap's message and exit with
/// `usage_exit` (wal-push must stay below 126, wal-get must exceed 125).
pub fn parse_or_exit<T: Parser>(usage_exit: i32) -> T {
    match T::try_parse() {
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

/// The error and its causes on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&cause.to_string());
    }
    s.replace('\n', " ")
}

/// End a run: a failure becomes one error line on stderr and exit status 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        crate::log_error!("{}", one_line(&e));
        std::process::exit(1);
    }
}
