//! Bounded retries of transient failures, for the hooks PostgreSQL calls.
//!
//! `wal-push` and `wal-get` run one operation against the repository; when it fails
//! with [`ErrorKind::Transient`](crate::ErrorKind::Transient) (a dropped or hung SSH
//! connection, a timeout), the whole operation runs again from a fresh connection,
//! at most `retries` more times, after a short backoff. Every attempt is itself
//! bounded by the connect and I/O timeouts, so the worst case is about
//! `(retries + 1) * (ssh_connect_timeout + ssh_io_timeout)` plus the backoffs, never
//! forever. Other failures (not found, conflict, corrupt, bad configuration) return
//! at once: retrying cannot change them.

use crate::error::Result;
use crate::log_warn;
use std::time::Duration;

/// Backoff before retry number `attempt` (1-based): 250 ms, 500 ms, 1 s, then 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.saturating_sub(1).min(3))
}

/// Run `op`, re-running it after transient failures up to `retries` more times.
///
/// `op` must start from scratch each time (e.g. open the repository itself), so that a
/// retry gets a new connection rather than the broken one.
pub fn with_retries<T>(retries: u32, what: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if e.is_transient() && attempt < retries => {
                attempt += 1;
                let wait = backoff(attempt);
                log_warn!(
                    "{what}: {e}; retrying in {} ms (retry {attempt} of {retries})",
                    wait.as_millis()
                );
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    #[test]
    fn retries_only_transient_failures_and_only_so_often() {
        let mut calls = 0;
        let r: Result<()> = with_retries(2, "t", || {
            calls += 1;
            Err(Error::new(ErrorKind::Transient, "down"))
        });
        assert!(r.is_err());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<()> = with_retries(5, "t", || {
            calls += 1;
            Err(Error::not_found("nope"))
        });
        assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r = with_retries(3, "t", || {
            calls += 1;
            if calls < 2 {
                Err(Error::new(ErrorKind::Transient, "blip"))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(9), Duration::from_secs(2));
    }
}
