//! The library's error type: a kind that callers branch on, plus a message with context.

use std::fmt;

/// What went wrong, at the level a caller (or an exit code) cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist (wal-get: "not in the archive").
    NotFound,
    /// The repository already holds something different under that name.
    Conflict,
    /// Input from a user, a file or the repository is malformed or unsafe.
    Invalid,
    /// Stored data failed its checksum or is otherwise damaged.
    Corrupt,
    /// Configuration is missing or wrong.
    Config,
    /// The server name has no registration in the repository (`pgcellar init` makes one).
    NotRegistered,
    /// A repository file uses a format this build does not read.
    UnsupportedFormat,
    /// A lock is held by someone else.
    Locked,
    /// A network or remote failure that may go away if retried.
    Transient,
    /// PostgreSQL refused or failed a request.
    Postgres,
    /// Any other I/O failure.
    Io,
}

/// The library's error: a kind plus a human message that names the file, server or action.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Shorthand for a [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for a [`ErrorKind::Invalid`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// Shorthand for a [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// An I/O error with `what` describing the action and path.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => ErrorKind::Transient,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("{}: {}", what.into(), err)).with_source(err)
    }

    /// Prefix the message with more context, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{}: {}", what, self.message);
        self
    }

    /// Whether retrying the same operation could help.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The chain continues with the stored cause. The message already includes the
/// cause's text, so a printer of the whole chain stops at an [`Error`]
/// ([`crate::cli::one_line`] does).
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Add context to a `Result` with an I/O error.
pub trait IoContext<T> {
    /// Turn an I/O error into an [`Error`] whose message starts with `what()`.
    fn io_context<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
