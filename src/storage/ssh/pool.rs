//! The connection pool: idle sessions are reused, concurrent callers each get their
//! own, and a connection that failed is retired (with one retry on a fresh one for
//! idempotent operations).

use super::conn::Conn;
use super::connect::connect;
use super::options::SshOptions;
use super::target::Target;
use crate::error::Result;
use crate::log_debug;
use std::net::Shutdown;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

/// Idle sessions kept for reuse; more concurrent callers open more, then close them.
pub(super) const MAX_IDLE: usize = 8;

/// The sessions of one repository, shared by every clone of its handles.
pub(super) struct Pool {
    pub(super) target: Target,
    pub(super) options: SshOptions,
    pub(super) idle: Mutex<Vec<Conn>>,
    /// [`DIR_FSYNC_UNKNOWN`](super::conn::DIR_FSYNC_UNKNOWN), `_OK` or `_UNSUPPORTED`.
    pub(super) dir_fsync: Arc<AtomicU8>,
}

/// A connection taken from the pool; goes back on drop unless poisoned.
pub(super) struct Lease {
    pub(super) conn: Option<Conn>,
    pub(super) pool: Arc<Pool>,
    pub(super) poisoned: bool,
    /// Whether the connection came from the idle pool (it may have gone stale).
    pub(super) reused: bool,
}

impl Lease {
    pub(super) fn conn(&mut self) -> &mut Conn {
        // Only `drop` takes the connection out, so it is always there before that.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease used after drop"))
    }

    /// Never reuse this connection; cut its socket so nothing waits on it again.
    pub(super) fn poison(&mut self) {
        self.poisoned = true;
        if let Some(c) = &self.conn {
            let _ = c.socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.poisoned {
                let _ = conn.socket.shutdown(Shutdown::Both);
                drop(conn);
                return;
            }
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

impl Pool {
    /// An idle connection, or a new one.
    pub(super) fn lease(self: &Arc<Self>) -> Result<Lease> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.pop()
        };
        let reused = idle.is_some();
        let conn = match idle {
            Some(c) => c,
            None => connect(&self.target, &self.options, self.dir_fsync.clone())?,
        };
        Ok(Lease {
            conn: Some(conn),
            pool: self.clone(),
            poisoned: false,
            reused,
        })
    }

    /// Run `f` on a pooled connection; a transient failure retires the connection.
    ///
    /// Every `f` given here is idempotent, so when a connection that sat idle in the
    /// pool fails (the server may have dropped it meanwhile), `f` runs once more on a
    /// fresh connection before the failure is reported.
    pub(super) fn with_conn<T>(
        self: &Arc<Self>,
        mut f: impl FnMut(&mut Conn) -> Result<T>,
    ) -> Result<T> {
        let mut lease = self.lease()?;
        let r = f(lease.conn());
        match r {
            Err(e) if e.is_transient() => {
                lease.poison();
                if !lease.reused {
                    return Err(e);
                }
                drop(lease);
                log_debug!("{e}; retrying on a new connection");
                let mut lease = self.lease()?;
                let r = f(lease.conn());
                if r.as_ref().is_err_and(|e| e.is_transient()) {
                    lease.poison();
                }
                r
            }
            r => r,
        }
    }
}
