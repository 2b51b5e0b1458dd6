//! Real PostgreSQL, Redis and HAProxy processes for the cluster-mode
//! integration tests.
//!
//! Each engine runs as a child of the test, in its own temporary directory,
//! on a free loopback port, and is stopped (and its directory removed) when
//! the handle is dropped. Tests can stop, kill and restart an engine to see
//! what the cluster does when it goes away.
//!
//! An engine that is not installed makes `start` print
//! `skipped: <engine> not installed: <why>` and return `None`, so a developer
//! without PostgreSQL can still run `cargo test`; with
//! `MUCHAT_REQUIRE_ENGINES=1` (as in CI) it panics instead, so a missing
//! engine can never turn the cluster tests into silent passes.
//!
//! No wait here is unbounded: readiness is polled every [`POLL`] up to
//! [`START_TIMEOUT`], and a child that will not stop is killed.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The longest an engine may take to start (or to stop) before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is polled: short, so tests do not wait for nothing.
pub const POLL: Duration = Duration::from_millis(25);

/// How many fresh ports `start` tries when the one it picked was taken
/// between choosing it and the engine binding it.
const PORT_ATTEMPTS: usize = 5;

/// The skip-or-fail policy shared by every engine: prints
/// `skipped: <engine> not installed: <why>` and returns `None`, or panics
/// with that message when `MUCHAT_REQUIRE_ENGINES=1`.
fn missing<T>(engine: &str, why: &str) -> Option<T> {
    let message = format!("skipped: {engine} not installed: {why}");
    if std::env::var("MUCHAT_REQUIRE_ENGINES").as_deref() == Ok("1") {
        panic!("{message} (a failure, not a skip: MUCHAT_REQUIRE_ENGINES=1)");
    }
    eprintln!("{message}");
    None
}

/// The first executable called `name` in `PATH`.
fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` from `PATH`, else at `fallback`.
fn find_binary(name: &str, fallback: &str) -> Option<PathBuf> {
    in_path(name).or_else(|| Some(PathBuf::from(fallback)).filter(|p| is_executable(p)))
}

/// A loopback port nobody is listening on right now. Another process may
/// take it before the engine binds it, so callers retry with a fresh one
/// when the engine exits at start.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// An append-mode handle on `path`, for a child's stdout and stderr: the
/// log survives restarts, and a failed start quotes what it wrote there.
fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// What `path` gained since it was `from` bytes long: the current start's
/// log lines, for error messages.
fn log_since(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    text
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Sends `signal` (a name such as `INT`) to `pid`. std can only send
/// SIGKILL, and the crate has no libc dependency, so this goes through the
/// shell's `kill` builtin, which every system has.
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$0\" \"$1\" 2>/dev/null",
            signal,
            &pid.to_string(),
        ])
        .status();
}

/// Waits up to `timeout` for `child` to exit; true if it did.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(POLL),
        }
    }
}

/// Stops `child` with `signal`, escalating to SIGKILL if it has not exited
/// within [`START_TIMEOUT`]; always reaps it.
fn stop_child(mut child: Child, signal: &str) {
    send_signal(child.id(), signal);
    if !wait_exit(&mut child, START_TIMEOUT) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// True if something accepts TCP connections on `port`.
fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Why one attempt to start an engine failed.
enum StartError {
    /// The process exited during start (a port clash, or a crashed
    /// server's leftovers not cleaned up yet); it is worth another try.
    Exited(String),
    /// It ran but never became ready within [`START_TIMEOUT`].
    TimedOut(String),
}

impl StartError {
    fn message(&self) -> &str {
        match self {
            StartError::Exited(m) | StartError::TimedOut(m) => m,
        }
    }
}

/// Polls `ready` every [`POLL`] until it holds, `child` exits, or
/// [`START_TIMEOUT`] passes.
fn wait_ready(
    child: &mut Child,
    log: &Path,
    log_from: u64,
    mut ready: impl FnMut() -> bool,
) -> Result<(), StartError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited(format!(
                "exited during start ({status}); log:\n{}",
                log_since(log, log_from)
            )));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError::TimedOut(format!(
                "not ready after {START_TIMEOUT:?}; log:\n{}",
                log_since(log, log_from)
            )));
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// The PostgreSQL programs, all from one installation (an `initdb` of one
/// major version cannot make a data directory for another's `postgres`).
struct PgBinaries {
    initdb: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

impl PgBinaries {
    fn find() -> Option<PgBinaries> {
        // PATH first; a symlink there (/usr/local/bin/initdb) leads to the
        // installation's own bin directory, which has the other programs.
        let from_path = in_path("initdb")
            .and_then(|p| fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|dir| is_executable(&dir.join("postgres")));
        let dir = from_path.or_else(newest_debian_pg_bin)?;
        // Debian puts psql in /usr/lib/postgresql/N/bin; other layouts in PATH.
        let psql = Some(dir.join("psql"))
            .filter(|p| is_executable(p))
            .or_else(|| in_path("psql"))?;
        Some(PgBinaries {
            initdb: dir.join("initdb"),
            postgres: dir.join("postgres"),
            psql,
        })
    }
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` with both
/// `initdb` and `postgres` (Debian keeps them out of PATH).
fn newest_debian_pg_bin() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (is_executable(&bin.join("initdb")) && is_executable(&bin.join("postgres")))
                .then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// The output of `id <args>` as a number.
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The user and group PostgreSQL must run as: PostgreSQL refuses to run as
/// root, so under root (CI, containers) it runs as the `postgres` system
/// user (Debian's package creates it), else `nobody`; otherwise as we are.
fn pg_run_as() -> Option<(u32, u32)> {
    if id(&["-u"]) != Some(0) {
        return None;
    }
    for user in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id(&["-u", user]), id(&["-g", user])) {
            return Some((uid, gid));
        }
    }
    panic!(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    );
}

/// A PostgreSQL server for a test, in a temporary directory, listening on
/// 127.0.0.1 only, with trust authentication for the superuser `muchat`
/// and a database `muchat`.
pub struct Postgres {
    bins: PgBinaries,
    /// Holds `data/` (the cluster), `socket/` and `postgres.log`.
    dir: TempDir,
    /// Under root: the unprivileged uid and gid the server runs as.
    run_as: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Creates a cluster with `initdb` and starts it on a free port; `None`
    /// (after saying so on stderr) if PostgreSQL is not installed, or a
    /// panic if it is missing and `MUCHAT_REQUIRE_ENGINES=1`.
    pub fn start() -> Option<Postgres> {
        let Some(bins) = PgBinaries::find() else {
            return missing(
                "PostgreSQL",
                "initdb/postgres not found in PATH or /usr/lib/postgresql/*/bin",
            );
        };
        let dir = TempDir::new().expect("temp dir");
        let run_as = pg_run_as();
        fs::create_dir(dir.path().join("socket")).expect("socket dir");
        if let Some((uid, gid)) = run_as {
            for p in [dir.path().to_path_buf(), dir.path().join("socket")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
            }
        }
        let mut pg = Postgres {
            bins,
            dir,
            run_as,
            port: 0,
            child: None,
        };
        pg.initdb();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            pg.port = free_port();
            match pg.launch() {
                Ok(()) => {
                    pg.psql("postgres", "CREATE DATABASE muchat")
                        .unwrap_or_else(|e| panic!("create database muchat: {e}"));
                    return Some(pg);
                }
                // Most likely the port was taken meanwhile: try another.
                Err(StartError::Exited(m)) => last = m,
                Err(e) => panic!("PostgreSQL on port {}: {}", pg.port, e.message()),
            }
        }
        panic!("PostgreSQL would not start in {PORT_ATTEMPTS} attempts; last: {last}");
    }

    /// `postgres://muchat@127.0.0.1:PORT/muchat`, the database made at start.
    pub fn url(&self) -> String {
        self.url_for("muchat")
    }

    /// The port it listens on (kept across `stop` and `start_again`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database `name` (lower-case letters, digits and
    /// `_`, so it needs no quoting) and returns its URL: tests share one
    /// server and each takes its own database.
    pub fn fresh_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?}: use 1-63 of a-z, 0-9 and _"
        );
        // template0: it never has connections, which would make CREATE fail.
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} TEMPLATE template0"),
        )
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url_for(name)
    }

    fn url_for(&self, database: &str) -> String {
        format!("postgres://muchat@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` in `database` with `psql` and returns its output, rows
    /// one per line with columns separated by `|`, trimmed; `Err` with
    /// psql's complaint if it fails (for instance while the server is down).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.bins.psql)
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "muchat",
                "-d",
                database,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", self.bins.psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Fast shutdown (SIGINT: sessions are cut, committed data is kept),
    /// waiting for the server to exit. Nothing happens if it is not running.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, "INT");
        }
    }

    /// Kills the server with SIGKILL, as a crash would: the next start runs
    /// crash recovery, and nothing committed is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data, after `stop` or
    /// `kill`; does nothing if it is running. After a kill the old server's
    /// backends take a moment to notice and exit, and until then PostgreSQL
    /// refuses to start (its shared memory is still in use), so this retries
    /// until [`START_TIMEOUT`].
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(StartError::Exited(_)) if Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => panic!("PostgreSQL restart on port {}: {}", self.port, e.message()),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server programs, run as the unprivileged
    /// user when we are root (std drops root's supplementary groups too).
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        let log = log_file(&self.log_path());
        cmd.stdout(log.try_clone().expect("dup log")).stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) {
        let from = file_len(&self.log_path());
        let status = self
            .command(&self.bins.initdb)
            .arg("-D")
            .arg(self.data_dir())
            // Trust on loopback: the server listens on 127.0.0.1 only and
            // lives as long as the test. C locale: no dependence on the
            // host's locales. --no-sync: the cluster is thrown away after
            // the test, so syncing its fresh files to disk only costs time
            // (the server itself keeps fsync on).
            .args(["--auth=trust", "-U", "muchat", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bins.initdb.display()));
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            log_since(&self.log_path(), from)
        );
    }

    /// Spawns `postgres` on `self.port` and waits until it answers a query.
    fn launch(&mut self) -> Result<(), StartError> {
        let log = self.log_path();
        let from = file_len(&log);
        let mut child = self
            .command(&self.bins.postgres)
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path().join("socket"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            // Small, so several servers fit on a CI machine; enough
            // connections for several nodes' pools.
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=200"])
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bins.postgres.display()));
        let data_dir = fs::canonicalize(self.data_dir()).expect("data dir");
        // A query naming our data directory: proves the server is up and
        // that it is ours, not another one that grabbed the port.
        let result = wait_ready(&mut child, &log, from, || {
            accepts(self.port)
                && self
                    .psql("postgres", "SHOW data_directory")
                    .is_ok_and(|d| fs::canonicalize(d).is_ok_and(|d| d == data_dir))
        });
        match result {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl Drop for Postgres {
    /// Immediate shutdown (SIGQUIT): the data is about to be deleted, so the
    /// shutdown checkpoint a fast stop writes would be wasted time.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, "QUIT");
        }
    }
}

// --------------------------------------------------------------------- Redis

/// A reply from Redis, as RESP encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3 foo`; `None` for the nil reply (a missing key).
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`; `None` for the nil array.
    Array(Option<Vec<Resp>>),
}

/// Reads one RESP reply.
fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| bad("empty reply line"))?;
    let number = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data)?;
                data.truncate(n);
                Resp::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad(line)),
    })
}

/// A Redis server for a test: loopback only, no persistence (as in a
/// cluster, where Redis carries only live notices, presence and counters).
pub struct Redis {
    bin: PathBuf,
    /// Its working directory and `redis.log`.
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` on a free port; `None` (after saying so) if it
    /// is not installed, or a panic with `MUCHAT_REQUIRE_ENGINES=1`.
    pub fn start() -> Option<Redis> {
        let Some(bin) = find_binary("redis-server", "/usr/bin/redis-server") else {
            return missing("Redis", "redis-server not found in PATH or /usr/bin");
        };
        let mut redis = Redis {
            bin,
            dir: TempDir::new().expect("temp dir"),
            port: 0,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            redis.port = free_port();
            match redis.launch() {
                Ok(()) => return Some(redis),
                Err(StartError::Exited(m)) => last = m,
                Err(e) => panic!("Redis on port {}: {}", redis.port, e.message()),
            }
        }
        panic!("Redis would not start in {PORT_ATTEMPTS} attempts; last: {last}");
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on (kept across `stop` and `start_again`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command on a new connection and returns the reply, e.g.
    /// `redis.command(&["SET", "k", "v"])`; `Err` if Redis cannot be reached.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Resp> {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            request.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        stream.write_all(&request)?;
        read_resp(&mut BufReader::new(stream))
    }

    /// Stops it with SIGTERM and waits; it keeps nothing, so a restarted
    /// Redis is empty. Nothing happens if it is not running.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, "TERM");
        }
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port; does nothing if running.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            if let Err(e) = self.launch() {
                panic!("Redis restart on port {}: {}", self.port, e.message());
            }
        }
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let log = self.dir.path().join("redis.log");
        let from = file_len(&log);
        let out = log_file(&log);
        let mut child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        let pid = child.id();
        let result = wait_ready(&mut child, &log, from, || {
            // PONG says a Redis is up; its process id says it is ours and
            // not another that took the port.
            matches!(self.command(&["PING"]), Ok(Resp::Simple(p)) if p == "PONG")
                && matches!(self.command(&["INFO", "server"]),
                    Ok(Resp::Bulk(Some(info)))
                        if String::from_utf8_lossy(&info)
                            .lines()
                            .any(|l| l.trim() == format!("process_id:{pid}")))
        });
        match result {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------- HAProxy

/// HAProxy in TCP mode in front of some backends, as in a cluster
/// deployment: round robin, a TCP connect check every 500 ms (down after
/// 2 failures, up after 1 success), and sessions on a server marked down
/// cut so their clients reconnect to another.
pub struct Haproxy {
    /// Its configuration, `admin.sock` and `haproxy.log`.
    dir: TempDir,
    addr: SocketAddr,
    child: Child,
}

impl Haproxy {
    /// Starts HAProxy forwarding to `backends`, which it names `node0`,
    /// `node1`, ... in backend `nodes` (for [`Haproxy::admin`]). `None`
    /// (after saying so) if it is not installed, or a panic with
    /// `MUCHAT_REQUIRE_ENGINES=1`.
    pub fn start(backends: &[SocketAddr]) -> Option<Haproxy> {
        Self::start_with(backends, "")
    }

    /// [`Haproxy::start`], connecting to the backends from `source` and
    /// sending each a PROXY protocol v2 header with the client's address
    /// (`send-proxy-v2`).
    pub fn start_sending_proxy(backends: &[SocketAddr], source: IpAddr) -> Option<Haproxy> {
        Self::start_with(backends, &format!(" send-proxy-v2 source {source}"))
    }

    fn start_with(backends: &[SocketAddr], server_options: &str) -> Option<Haproxy> {
        let Some(bin) = find_binary("haproxy", "/usr/sbin/haproxy") else {
            return missing("HAProxy", "haproxy not found in PATH or /usr/sbin");
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            // A fresh directory per attempt: a failed one is dropped whole.
            let dir = TempDir::new().expect("temp dir");
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = dir.path().join("haproxy.cfg");
            fs::write(
                &config,
                haproxy_config(
                    addr,
                    &dir.path().join("admin.sock"),
                    backends,
                    server_options,
                ),
            )
            .expect("write haproxy.cfg");
            let log = dir.path().join("haproxy.log");
            let from = file_len(&log);
            let out = log_file(&log);
            let child = Command::new(&bin)
                // -db: stay in the foreground, a plain child we can kill.
                .args(["-db", "-f"])
                .arg(&config)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup log"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            let mut proxy = Haproxy { dir, addr, child };
            let pid = proxy.child.id();
            // Ready once the admin socket answers: HAProxy binds every
            // listener before it serves the socket, so the frontend is up
            // too. Not a connection to the frontend: HAProxy would forward
            // it to a backend, which would see a stray connection and shift
            // the round robin the test may count on.
            let socket = proxy.dir.path().join("admin.sock");
            let result = wait_ready(&mut proxy.child, &log, from, || {
                haproxy_admin(&socket, "show info")
                    .is_ok_and(|info| info.lines().any(|l| l.trim() == format!("Pid: {pid}")))
            });
            match result {
                Ok(()) => return Some(proxy),
                // Most likely the port was taken meanwhile: try another.
                Err(StartError::Exited(m)) => last = m,
                Err(e) => panic!("HAProxy on {addr}: {}", e.message()),
            }
        }
        panic!("HAProxy would not start in {PORT_ATTEMPTS} attempts; last: {last}");
    }

    /// The frontend address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command to HAProxy's runtime API and returns its answer,
    /// e.g. `admin("set server nodes/node1 state drain")`,
    /// `admin("disable server nodes/node0")` or `admin("show servers state")`.
    pub fn admin(&self, command: &str) -> String {
        haproxy_admin(&self.dir.path().join("admin.sock"), command)
            .unwrap_or_else(|e| panic!("HAProxy admin {command:?}: {e}"))
    }
}

/// Sends one command to HAProxy's runtime API socket at `socket`.
fn haproxy_admin(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut socket = UnixStream::connect(socket)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.write_all(format!("{command}\n").as_bytes())?;
    // Without "prompt" mode HAProxy answers one command and closes.
    let mut answer = String::new();
    socket.read_to_string(&mut answer)?;
    Ok(answer)
}

fn haproxy_config(
    frontend: SocketAddr,
    admin: &Path,
    backends: &[SocketAddr],
    server_options: &str,
) -> String {
    let mut servers = String::new();
    for (i, b) in backends.iter().enumerate() {
        servers.push_str(&format!("    server node{i} {b} check{server_options}\n"));
    }
    // No `user`, `chroot` or `daemon`: it runs as whoever runs the test,
    // in the foreground.
    format!(
        "global
    maxconn 4096
    nbthread 1
    stats socket {admin} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    # Chat connections are long-lived and the server pings idle ones.
    timeout client 1h
    timeout server 1h

frontend chat
    bind {frontend}
    default_backend nodes

backend nodes
    balance roundrobin
    # A plain TCP connect check: the muchat protocol starts with the client.
    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{servers}",
        admin = admin.display()
    )
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
