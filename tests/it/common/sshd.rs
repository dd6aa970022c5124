//! A real OpenSSH server on a free loopback port, for the SSH backend's tests.
//!
//! Throwaway host key, client key (plus a second key the server does not know) and
//! authorized_keys, a hand-written sshd_config (`Subsystem sftp internal-sftp`; SFTP is
//! off without it), `sshd -D -e` killed on drop. When we are root, the login user is
//! `postgres`, so that PostgreSQL's `archive_command`, which runs as `postgres`, can
//! log in with the same key; key files are readable by that user. What that needs
//! from the host (the account unlocked, /run/sshd) is undone by the last test sshd
//! on the machine to stop; see [`prepare_host`].

use super::*;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Child;

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd.
pub struct Sshd {
    /// Holds keys, config, log (owned by postgres when root).
    pub dir: TestDir,
    /// Loopback port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Client private key listed in authorized_keys.
    pub client_key: PathBuf,
    /// A client key the server does not accept.
    pub wrong_key: PathBuf,
    /// known_hosts holding this server's host key.
    pub known_hosts: PathBuf,
    /// `SHA256:...` fingerprint of the host key, as ssh-keygen -l prints it.
    pub host_fingerprint: String,
    child: Option<Child>,
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn keygen(path: &Path, comment: &str) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
    );
}

impl Sshd {
    /// Start sshd; `None` (loudly) when it is not installed and we are not under CI.
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() || Command::new("ssh-keygen").arg("-?").output().is_err() {
            skip_or_fail("OpenSSH server (/usr/sbin/sshd) or ssh-keygen not installed")?;
            return None;
        }
        let dir = TestDir::new();
        let user = if is_root() {
            "postgres".to_string()
        } else {
            whoami()
        };
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        let wrong_key = dir.join("wrong_ed25519");
        keygen(&host_key, "pgcellar-test-host");
        keygen(&client_key, "pgcellar-test-client");
        keygen(&wrong_key, "pgcellar-test-wrong");
        let client_pub = fs::read_to_string(dir.join("client_ed25519.pub")).expect("client pub");
        fs::write(dir.join("authorized_keys"), &client_pub).expect("authorized_keys");
        let port = free_port();
        let host_pub = fs::read_to_string(dir.join("host_ed25519.pub")).expect("host pub");
        let mut parts = host_pub.split_whitespace();
        let (ktype, kdata) = (parts.next().expect("type"), parts.next().expect("key"));
        let known_hosts = dir.join("known_hosts");
        fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {ktype} {kdata}\n"),
        )
        .expect("known_hosts");
        let fp = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(dir.join("host_ed25519.pub")),
        );
        let host_fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {hk}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {ak}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             MaxStartups 100\n\
             MaxSessions 50\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            hk = host_key.display(),
            pid = dir.join("sshd.pid").display(),
            ak = dir.join("authorized_keys").display(),
        );
        fs::write(dir.join("sshd_config"), config).expect("sshd_config");
        // The login user reads its key files (archive_command runs as postgres); sshd
        // insists that the host key is not readable by others, so it stays root's.
        chown_postgres(dir.path());
        if is_root() {
            run_ok(Command::new("chown").arg("root:root").arg(&host_key));
        }
        for k in [&host_key, &client_key, &wrong_key] {
            fs::set_permissions(k, fs::Permissions::from_mode(0o600)).expect("chmod key");
        }
        let mut s = Sshd {
            dir,
            port,
            user,
            client_key,
            wrong_key,
            known_hosts,
            host_fingerprint,
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        // Held until our sshd runs, so no other test process undoes the host changes
        // between our check and our start.
        let lock = is_root().then(HostLock::take).flatten();
        if let Some(l) = &lock {
            prepare_host(l);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sshd.log"))
            .expect("sshd log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        self.child = Some(child);
        drop(lock);
        self.wait_ready();
    }

    /// Wait until sshd sends its banner.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("sshd exited ({st}):\n{}", self.log());
                }
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 8];
                if s.read(&mut buf).map(|n| n >= 4).unwrap_or(false) && buf.starts_with(b"SSH-") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "sshd did not come up on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// sshd's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// `ssh://user@127.0.0.1:port/<path>`.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// Pids of sshd and all its descendants (per-connection children included).
    fn pids(&self) -> Vec<i32> {
        let Some(root) = self.child.as_ref().map(|c| c.id() as i32) else {
            return Vec::new();
        };
        let mut parent_of: Vec<(i32, i32)> = Vec::new();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                    continue;
                };
                if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                    parent_of.push((pid, ppid));
                }
            }
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        out
    }

    fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions; pids are sshd's own tree.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Freeze sshd and every connection it serves (a hung peer).
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Let a frozen sshd run again.
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Kill sshd and every connection it serves.
    pub fn kill(&mut self) {
        self.signal_all(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Start sshd again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.thaw();
        let ours = self.pids();
        self.kill();
        if let Some(lock) = is_root().then(HostLock::take).flatten() {
            restore_host(&lock, &ours, self.dir.path());
        }
    }
}
// ---------------------------------------------------------------------------
// What sshd needs from the host, and undoing it.
//
// sshd without PAM refuses key logins to a locked account (Debian ships `postgres`
// locked: `!` in /etc/shadow), and its privilege separation needs /run/sshd, which
// only the boot scripts create. Test processes of several checkouts may run sshd at
// once, so the changes are made and undone under one machine-wide lock, and undone
// only when no other test sshd needs them.

/// Prefix of `postgres`' password field while the tests have it unlocked, followed
/// by the original field. Like `*` it matches no password; sshd refuses key logins
/// only to fields starting with `!`.
const UNLOCKED_MARK: &str = "*pgcellar-tests-unlocked*";

/// Sshd's privilege separation directory.
const PRIVSEP_DIR: &str = "/run/sshd";

/// In [`PRIVSEP_DIR`] when the tests created it, so that they remove it again.
const PRIVSEP_MARK: &str = "/run/sshd/.created-by-pgcellar-tests";

/// An exclusive flock on /etc, held while a test changes the host for sshd or undoes
/// it; a lock on a directory that always exists leaves no lock file behind.
struct HostLock {
    _etc: fs::File,
}

impl HostLock {
    /// Wait for the lock; `None` (with a warning) if /etc cannot be locked.
    fn take() -> Option<HostLock> {
        let f = fs::File::open("/etc")
            .map_err(|e| eprintln!("warning: open /etc to lock it: {e}"))
            .ok()?;
        // SAFETY: flock(2) on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            eprintln!("warning: flock /etc: {}", std::io::Error::last_os_error());
            return None;
        }
        Some(HostLock { _etc: f })
    }
}

/// `postgres`' password field in /etc/shadow (empty if it cannot be read).
fn shadow_field() -> String {
    let out = Command::new("getent").args(["shadow", "postgres"]).output();
    let line = out.map(|o| o.stdout).unwrap_or_default();
    let line = String::from_utf8_lossy(&line);
    line.split(':').nth(1).unwrap_or("").to_string()
}

/// Unlock `postgres` for key logins and create [`PRIVSEP_DIR`] if missing, each
/// marked as the tests' change.
fn prepare_host(_lock: &HostLock) {
    let pw = shadow_field();
    if pw.starts_with('!') || pw.is_empty() {
        let unlocked = format!("{UNLOCKED_MARK}{pw}");
        run_ok(Command::new("usermod").args(["-p", &unlocked, "postgres"]));
    }
    if !Path::new(PRIVSEP_DIR).exists() {
        fs::create_dir_all(PRIVSEP_DIR).expect("mkdir /run/sshd");
        fs::write(PRIVSEP_MARK, "").expect("mark /run/sshd as ours");
    }
}

/// Undo [`prepare_host`] unless another sshd still needs it: another test sshd for
/// the account, any other sshd for the directory. `ours` are the processes of the
/// server being stopped (killed, maybe not yet reaped), `our_dir` its TestDir, named
/// in its command line. Never panics: it runs in Drop, perhaps while a test unwinds.
fn restore_host(_lock: &HostLock, ours: &[i32], our_dir: &Path) {
    let our_dir = our_dir.display().to_string();
    let others: Vec<String> = sshd_processes()
        .into_iter()
        .filter(|(pid, cmdline)| !ours.contains(pid) && !cmdline.contains(&our_dir))
        .map(|(_, cmdline)| cmdline)
        .collect();
    // Test servers read their config from a TestDir (`-f .../pgcellar-test-*/`).
    if others.iter().any(|c| c.contains("pgcellar-test-")) {
        return;
    }
    if let Some(orig) = shadow_field().strip_prefix(UNLOCKED_MARK) {
        let st = Command::new("usermod")
            .args(["-p", orig, "postgres"])
            .stdout(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("warning: could not lock postgres again (password field {orig:?})");
        }
    }
    if others.is_empty() && Path::new(PRIVSEP_MARK).exists() {
        let _ = fs::remove_file(PRIVSEP_MARK);
        let _ = fs::remove_dir(PRIVSEP_DIR);
    }
}

/// Pid and command line of each live sshd process on this machine.
fn sshd_processes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A zombie has no exe link: it needs nothing any more.
        if fs::read_link(e.path().join("exe")).ok().as_deref() != Some(Path::new(SSHD)) {
            continue;
        }
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            out.push((pid, String::from_utf8_lossy(&c).replace('\0', " ")));
        }
    }
    out
}
