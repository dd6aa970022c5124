//! `pgcellar receive-wal`: supervise pg_receivewal into a local spool, move what it
//! writes into the repository every interval, reconnect with backoff, and publish a
//! status for `check` and `info`.

use super::status::{self, ReceiverState, ReceiverStatus, STATUS_EVERY_SECONDS};
use super::tool::{self, Invocation, Tool};
use super::upload::Uploader;
use crate::error::{Error, IoContext, Result};
use crate::repo::{Repository, ServerInfo};
use crate::wal::{format_lsn, parse_lsn};
use chrono::Utc;
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `receive-wal` was asked to do.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Physical replication slot to stream from.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Report flushes as they happen, so the server can wait for them.
    pub synchronous: bool,
    /// Local directory pg_receivewal writes into.
    pub spool: PathBuf,
    /// Seconds between refreshes of the partial segment in the repository.
    pub interval: Duration,
    /// pg_receivewal to run instead of the one found for the server's major.
    pub pg_receivewal: Option<PathBuf>,
    /// `application_name` the stream has on the server.
    pub application_name: String,
    /// Stop after this long (tests and benchmarks; `None` runs until a signal).
    pub run_for: Option<Duration>,
}

/// Where the spool is unless `--spool` says: `/var/lib/pgcellar-receive-wal/<server>`
/// (the unit's StateDirectory).
pub fn default_spool(server: &str) -> PathBuf {
    PathBuf::from("/var/lib/pgcellar-receive-wal").join(server)
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Check a slot name by PostgreSQL's rule (lower-case letters, digits, underscore).
pub fn check_slot_name(slot: &str) -> Result<()> {
    if slot.is_empty()
        || slot.len() > 63
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::invalid(format!(
            "bad slot name {:?}: use 1 to 63 lower-case letters, digits and underscores",
            crate::names::truncate_for_display(slot)
        )));
    }
    Ok(())
}

/// Run until SIGTERM/SIGINT (or `run_for`). Returns an error only for what retrying
/// cannot fix: bad options, a server that is not the registered cluster, no
/// pg_receivewal, a spool another receiver holds.
pub fn receive(settings: &crate::config::Settings, opts: &ReceiveOptions) -> Result<()> {
    check_slot_name(&opts.slot)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::io("installing the signal handlers", e))?;
    }
    let repo = Repository::open(settings)?;
    let server = repo.server(settings.server_name()?)?;
    std::fs::create_dir_all(&opts.spool)
        .io_context(|| format!("creating the spool {}", opts.spool.display()))?;
    let _spool_lock = lock_spool(&opts.spool)?;
    let conninfo = settings.conninfo.clone().unwrap_or_default();
    let mut r = Receiver {
        repo: &repo,
        server: &server,
        opts,
        conninfo: tool::with_application_name(&conninfo, &opts.application_name),
        db: None,
        status: ReceiverStatus {
            host: crate::repo::lock::hostname(),
            pid: std::process::id(),
            slot: opts.slot.clone(),
            synchronous: opts.synchronous,
            spool: opts.spool.display().to_string(),
            interval_seconds: opts.interval.as_secs().max(1),
            state: ReceiverState::Reconnecting,
            started: Utc::now(),
            updated: Utc::now(),
            last_segment: None,
            partial: None,
            stored_lsn: None,
            server_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            slot_present: None,
            last_error: None,
            last_error_at: None,
        },
        samples: VecDeque::new(),
        settings_conninfo: settings.conninfo.clone(),
    };
    let mut uploader = Uploader::new(&repo, &server, settings.codec, &opts.spool);
    let deadline = opts.run_for.map(|d| Instant::now() + d);
    let stopping = || stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
    let mut backoff = Duration::from_secs(1);
    let mut tool_found: Option<Tool> = None;
    crate::log_notice!(
        "receive-wal: streaming server {} over slot {} into {} (spool {}, {})",
        server.name,
        opts.slot,
        repo.storage().location(),
        opts.spool.display(),
        if opts.synchronous {
            "synchronous: a flush is reported once it is durable in the spool"
        } else {
            "asynchronous"
        }
    );
    while !stopping() {
        // The first pass stores what an earlier run left in the spool.
        r.pass(&mut uploader);
        let started = Instant::now();
        match r.connect_and_spawn(&mut tool_found) {
            Ok((mut child, last_line)) => {
                r.set_state(ReceiverState::Streaming, None);
                let exit = r.supervise(&mut child, &mut uploader, &stopping);
                r.pass(&mut uploader);
                if stopping() {
                    break;
                }
                let why = last_line
                    .lock()
                    .ok()
                    .and_then(|l| l.clone())
                    .unwrap_or_else(|| format!("pg_receivewal exited ({exit})"));
                r.set_state(ReceiverState::Reconnecting, Some(why.clone()));
                crate::log_warn!(
                    "stream ended: {why}; reconnecting in {}s",
                    backoff.as_secs()
                );
            }
            Err(e) if e.kind() == crate::error::ErrorKind::Config => return Err(e),
            Err(e) => {
                r.set_state(ReceiverState::Reconnecting, Some(e.to_string()));
                crate::log_warn!("{e}; retrying in {}s", backoff.as_secs());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        sleep_unless(backoff, &stopping);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    r.pass(&mut uploader);
    r.set_state(ReceiverState::Stopped, None);
    crate::log_notice!(
        "receive-wal stopped; the repository holds the stream up to {}",
        r.status
            .stored_lsn
            .as_deref()
            .unwrap_or("(nothing streamed)")
    );
    Ok(())
}

/// Hold the spool for this process: two pg_receivewal in one directory would
/// interleave writes to one file.
fn lock_spool(spool: &Path) -> Result<std::fs::File> {
    use fs2::FileExt;
    let path = spool.join(".receive-wal.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .io_context(|| format!("opening {}", path.display()))?;
    f.try_lock_exclusive().map_err(|_| {
        Error::config(format!(
            "another receive-wal is using the spool {}; stop it first or give another --spool",
            spool.display()
        ))
    })?;
    Ok(f)
}

fn sleep_unless(d: Duration, stopping: &dyn Fn() -> bool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Receiver<'a> {
    repo: &'a Repository,
    server: &'a ServerInfo,
    opts: &'a ReceiveOptions,
    conninfo: String,
    settings_conninfo: Option<String>,
    /// A normal session for checks and positions; reopened when it breaks.
    db: Option<postgres::Client>,
    status: ReceiverStatus,
    /// (when, server LSN) samples, to turn a byte lag into seconds.
    samples: VecDeque<(Instant, u64)>,
}

impl Receiver<'_> {
    /// Check the server is the registered cluster, make sure the slot exists, and
    /// start pg_receivewal. Config errors are final; others are retried.
    fn connect_and_spawn(
        &mut self,
        tool_found: &mut Option<Tool>,
    ) -> Result<(Child, Arc<Mutex<Option<String>>>)> {
        let mut db = crate::pg::connect(self.settings_conninfo.as_deref())?;
        let id = crate::pg::identity(&mut db)?;
        if id.system_id != self.server.system_id()? {
            return Err(Error::config(format!(
                "the server at the conninfo is database system {}, but server {} in {} is {}; \
                 refusing to stream another cluster's WAL into it",
                id.system_id,
                self.server.name,
                self.repo.storage().location(),
                self.server.system_identifier
            )));
        }
        let present = db
            .query_opt(
                "SELECT slot_type::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.opts.slot],
            )
            .map_err(|e| crate::pg::query_error("reading pg_replication_slots", e))?;
        match present {
            Some(row) => {
                let kind: String = crate::pg::column(&row, 0, "slot_type")?;
                if kind != "physical" {
                    return Err(Error::config(format!(
                        "slot {} is a {kind} slot; receive-wal needs a physical one",
                        self.opts.slot
                    )));
                }
            }
            None if self.opts.create_slot => {
                // `true`: reserve WAL now, so nothing after this moment can be removed
                // before the stream has it.
                db.execute(
                    "SELECT pg_create_physical_replication_slot($1, true)",
                    &[&self.opts.slot],
                )
                .map_err(|e| crate::pg::query_error("creating the replication slot", e))?;
                crate::log_notice!("created physical replication slot {}", self.opts.slot);
            }
            None => {
                return Err(Error::config(format!(
                    "replication slot {} does not exist on the server; create it with \
                     --create-slot or SELECT pg_create_physical_replication_slot('{}', true)",
                    self.opts.slot, self.opts.slot
                )))
            }
        }
        self.status.slot_present = Some(true);
        self.db = Some(db);
        // Positions at once, so the status written when streaming starts has a lag.
        self.sample();
        let tool = match tool_found {
            Some(t) => t.clone(),
            None => {
                let t = tool::find(self.opts.pg_receivewal.as_deref(), id.major())?;
                crate::log_info!("using {} (PostgreSQL {})", t.path.display(), t.major);
                *tool_found = Some(t.clone());
                t
            }
        };
        let inv = Invocation {
            spool: &self.opts.spool,
            slot: &self.opts.slot,
            conninfo: &self.conninfo,
            synchronous: self.opts.synchronous,
            status_interval: self.opts.interval.as_secs().clamp(1, 10),
        };
        let mut cmd = tool::command(&tool, &inv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        // A receiver killed with SIGKILL must not leave pg_receivewal holding the slot.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .io_context(|| format!("starting {}", tool.path.display()))?;
        let last = Arc::new(Mutex::new(None));
        if let Some(err) = child.stderr.take() {
            let last = Arc::clone(&last);
            std::thread::spawn(move || relay(err, &last));
        }
        Ok((child, last))
    }

    /// Pass over the spool every interval until pg_receivewal exits or we stop.
    fn supervise(
        &mut self,
        child: &mut Child,
        uploader: &mut Uploader<'_>,
        stopping: &dyn Fn() -> bool,
    ) -> String {
        let mut next_status = Instant::now() + Duration::from_secs(STATUS_EVERY_SECONDS);
        loop {
            let end = Instant::now() + self.opts.interval;
            while Instant::now() < end {
                if let Ok(Some(st)) = child.try_wait() {
                    return st.to_string();
                }
                if stopping() {
                    return stop_child(child);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.pass(uploader);
            if Instant::now() >= next_status {
                self.write_status();
                next_status = Instant::now() + Duration::from_secs(STATUS_EVERY_SECONDS);
            }
        }
    }

    /// One pass of the uploader, then the positions.
    fn pass(&mut self, uploader: &mut Uploader<'_>) {
        let written = self.written();
        match uploader.pass(written) {
            Ok(p) => {
                for name in &p.archived {
                    crate::log_info!("stored {name}");
                }
                if let Some(e) = p.errors.first() {
                    crate::log_error!("{e}");
                    self.status.last_error = Some(e.clone());
                    self.status.last_error_at = Some(Utc::now());
                }
            }
            Err(e) => {
                crate::log_error!("{e}");
                self.status.last_error = Some(e.to_string());
                self.status.last_error_at = Some(Utc::now());
            }
        }
        self.status.last_segment = uploader.last_segment.clone();
        if let Some((name, lsn)) = &uploader.partial {
            self.status.partial = Some(name.clone());
            self.status.stored_lsn = Some(format_lsn(*lsn));
        }
        self.sample();
    }

    /// What pg_receivewal reported as written, from the walsender serving our slot.
    fn written(&mut self) -> Option<u64> {
        let db = self.db.as_mut()?;
        let row = db
            .query_opt(
                "SELECT r.write_lsn::text FROM pg_stat_replication r \
                 JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
                &[&self.opts.slot],
            )
            .ok()??;
        let lsn: Option<String> = row.try_get(0).ok()?;
        parse_lsn(&lsn?).ok()
    }

    /// Ask the server where it is, and turn that into a lag.
    fn sample(&mut self) {
        let Some(db) = self.db.as_mut() else {
            return;
        };
        let row = db.query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() \
                     THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                     ELSE pg_current_wal_lsn() END)::text, \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&self.opts.slot],
        );
        let (lsn, slot) = match row {
            Ok(row) => (
                row.try_get::<_, Option<String>>(0).ok().flatten(),
                row.try_get::<_, bool>(1).ok(),
            ),
            Err(_) => {
                // The server went away; the next connection attempt opens a new session.
                self.db = None;
                return;
            }
        };
        self.status.slot_present = slot;
        let Some(server_lsn) = lsn.and_then(|l| parse_lsn(&l).ok()) else {
            return;
        };
        let now = Instant::now();
        self.samples.push_back((now, server_lsn));
        while self.samples.len() > 900 {
            self.samples.pop_front();
        }
        self.status.server_lsn = Some(format_lsn(server_lsn));
        let stored = self
            .status
            .stored_lsn
            .as_deref()
            .and_then(|l| parse_lsn(l).ok())
            .unwrap_or(0);
        let lag = server_lsn.saturating_sub(stored);
        self.status.lag_bytes = Some(lag);
        // The newest moment the server was no further than what is stored now.
        let caught_up = self
            .samples
            .iter()
            .rev()
            .find(|(_, l)| *l <= stored)
            .map(|(t, _)| *t)
            .or_else(|| self.samples.front().map(|(t, _)| *t));
        self.status.lag_seconds = Some(if lag == 0 {
            0.0
        } else {
            caught_up.map_or(0.0, |t| now.duration_since(t).as_secs_f64())
        });
    }

    fn set_state(&mut self, state: ReceiverState, error: Option<String>) {
        self.status.state = state;
        if let Some(e) = error {
            self.status.last_error = Some(e);
            self.status.last_error_at = Some(Utc::now());
        }
        self.write_status();
    }

    fn write_status(&mut self) {
        self.status.updated = Utc::now();
        if let Err(e) = status::write(self.repo.storage(), &self.server.name, &self.status) {
            crate::log_warn!("could not write the receiver status: {e}");
        }
    }
}

/// Ask pg_receivewal to stop (it flushes what it has), and make sure it did.
fn stop_child(child: &mut Child) -> String {
    // SIGINT is the stop signal every supported pg_receivewal documents.
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child by pid.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return st.to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    "killed after 10 s".to_string()
}

/// Pass pg_receivewal's stderr on: errors always, progress with `-v`; remember the
/// last error for the status.
fn relay(err: std::process::ChildStderr, last: &Mutex<Option<String>>) {
    for line in std::io::BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        let important =
            line.contains("error:") || line.contains("warning:") || line.contains("FATAL");
        if important {
            crate::log_notice!("{line}");
            if let Ok(mut l) = last.lock() {
                *l = Some(line.clone());
            }
        } else {
            crate::log_info!("{line}");
        }
    }
}
