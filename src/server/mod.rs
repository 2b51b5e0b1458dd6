//! The chat server: configuration, the accept loop, and what every
//! connection shares.
//!
//! [`Server::start`] (used by the `server` binary and by every test) takes a
//! bound listener and spawns the accept loop. A request's path:
//!
//! ```text
//! socket -> FrameReader -> Request::parse (verb table: access, rate)  [session]
//!        -> handler: check against State, write to the Store           [handler]
//!        -> store writer commits, assigns sequence numbers, completes  [store]
//!        -> reply to the sender; offer the entry to followers' links   [delivery]
//!        -> Outbox (one FIFO per connection) -> writer pool -> socket  [outbox]
//! ```
//!
//! A link that cannot take a message now (its outbox is full, or it is
//! catching up) gets it later from the store, so memory stays bounded
//! whatever clients do.

pub mod cluster;
mod delivery;
mod handler;
pub mod limits;
pub mod outbox;
mod park;
pub mod proxy;
mod session;
pub mod state;
mod transfer;
mod workers;

/// A hash map for the lookups every delivery makes (who is online, a
/// link's progress per conversation). Std's SipHash showed up in the
/// profile; foldhash is several times faster on short keys and, seeded at
/// random per map, still gives a client no way to choose colliding names.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The set counterpart of [`FastMap`].
pub(crate) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dh::StaticSecret;
use crate::event::ServerMessage;
use crate::identity::{self, Fingerprint};
use crate::names::Username;
use crate::password::{PasswordCost, Passwords};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

use crate::handshake;
use cluster::{Cluster, Notice};
use delivery::CatchUp;
use limits::{Counts, HandshakeRate, LoginThrottle};
use outbox::{Budget, Outbox, OutboxLimits, WriterPool};
use state::{SessionId, State};

/// Stack size for per-connection threads: they need little, and thousands
/// of default 2 MiB (virtual) stacks would crowd the address-space maps.
pub(crate) const THREAD_STACK: usize = 128 * 1024;

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))
}

/// Server settings. The `server` binary's flags are generated from these
/// fields (their doc comments are the `--help` text), and each also reads
/// from the environment variable named in `--help`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Where accounts, groups and messages are stored (created if missing)
    #[arg(
        long,
        env = "MUCHAT_DATA_DIR",
        value_name = "DIR",
        default_value = "muchat-data"
    )]
    pub data_dir: PathBuf,

    /// PostgreSQL to store everything in instead of the data directory
    /// (postgres://user:password@host/database): servers that share one
    /// database (and --redis-url, and --key-file) act as one server
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Redis that carries live notices, presence and login-throttle counts
    /// between servers sharing --database-url (redis://[:password@]host:port/)
    #[arg(long, env = "REDIS_URL", value_name = "URL", requires = "database_url")]
    pub redis_url: Option<String>,

    /// The server's key (created 0600 if missing) [default: DIR/server_key];
    /// servers that share one key present one identity to clients
    #[arg(long, env = "MUCHAT_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Largest file accepted, in bytes
    #[arg(long, env = "MUCHAT_MAX_FILE_SIZE", value_name = "BYTES", default_value_t = Config::DEFAULT.max_file_size)]
    pub max_file_size: u64,

    /// Most bytes of undelivered files kept per conversation; a file that
    /// would go over gets ERR QUOTA_EXCEEDED
    #[arg(long, env = "MUCHAT_MAX_PENDING_BYTES", value_name = "BYTES", default_value_t = Config::DEFAULT.max_pending_bytes)]
    pub max_pending_bytes: u64,

    /// Time a new connection has to finish the handshake
    #[arg(long, env = "MUCHAT_HANDSHAKE_TIMEOUT", value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Close a session silent this long; it is sent PING halfway
    #[arg(long, env = "MUCHAT_IDLE_TIMEOUT", value_name = "SECS", default_value = "300", value_parser = parse_secs)]
    pub idle_timeout: Duration,

    /// Give a logged-in session's thread back after it has been silent
    /// this long; it then waits on one shared poll with the other idle
    /// sessions, and gets a thread again when it speaks
    #[arg(long = "park-after-ms", env = "MUCHAT_PARK_AFTER_MS", value_name = "MS", default_value = "2000", value_parser = parse_millis)]
    pub park_after: Duration,

    /// Load balancers whose connections start with a PROXY protocol
    /// header (v1 or v2: HAProxy's send-proxy-v2) naming the client, so the
    /// per-address limits count the client, not the balancer
    /// (comma-separated addresses)
    #[arg(
        long,
        env = "MUCHAT_PROXY_FROM",
        value_name = "IP,...",
        value_delimiter = ','
    )]
    pub proxy_from: Vec<IpAddr>,

    /// Connections not yet logged in allowed per source address (0: no
    /// limit); logged-in sessions count per user instead
    #[arg(long, env = "MUCHAT_MAX_CONNECTIONS_PER_IP", value_name = "N", default_value_t = Config::DEFAULT.max_connections_per_ip)]
    pub max_connections_per_ip: usize,

    /// Logged-in sessions one user may have at once (0: no limit)
    #[arg(long, env = "MUCHAT_MAX_SESSIONS_PER_USER", value_name = "N", default_value_t = Config::DEFAULT.max_sessions_per_user)]
    pub max_sessions_per_user: usize,

    /// A connection must log in this long after its handshake, or it is
    /// closed
    #[arg(long, env = "MUCHAT_LOGIN_TIMEOUT", value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub login_timeout: Duration,

    /// Handshakes per second allowed from one address (bursts of four
    /// times as many; 0: no limit); more are refused before any
    /// Diffie-Hellman work
    #[arg(long, env = "MUCHAT_HANDSHAKE_RATE", value_name = "N", default_value_t = Config::DEFAULT.handshake_rate)]
    pub handshake_rate: u32,

    /// Password checks per second for the whole server (bursts of twice as
    /// many; 0: no limit); logins with a device token do not count
    #[arg(long, env = "MUCHAT_MAX_PASSWORD_CHECKS", value_name = "N", default_value_t = Config::DEFAULT.max_password_checks)]
    pub max_password_checks: u32,

    /// Commands per second per session (0: no limit); chunks, ACK and PONG
    /// are not counted
    #[arg(long, env = "MUCHAT_RATE", value_name = "N", default_value_t = Config::DEFAULT.rate)]
    pub rate: u32,

    /// Commands a session may send at once above the rate
    #[arg(long, env = "MUCHAT_BURST", value_name = "N", default_value_t = Config::DEFAULT.burst)]
    pub burst: u32,

    /// Groups one user may belong to
    #[arg(long, env = "MUCHAT_MAX_GROUPS_PER_USER", value_name = "N", default_value_t = Config::DEFAULT.max_groups_per_user)]
    pub max_groups_per_user: usize,

    /// After 3 failed logins for an account, an address or a device (20 for
    /// an address block), further attempts must be this far apart,
    /// doubling up to 60 s; earlier ones are refused with the time to wait
    #[arg(long = "login-backoff-ms", env = "MUCHAT_LOGIN_BACKOFF_MS", value_name = "MS", default_value = "2000", value_parser = parse_millis)]
    pub login_backoff: Duration,

    /// Most bytes queued for all clients together; past it, deliveries wait
    /// in the store until clients read
    #[arg(long, env = "MUCHAT_MEMORY_BUDGET", value_name = "BYTES", default_value_t = Config::DEFAULT.memory_budget)]
    pub memory_budget: usize,

    /// Most bytes queued for one connection before its messages wait in the
    /// store and its requests wait for it to read
    #[arg(long, env = "MUCHAT_SESSION_WINDOW", value_name = "BYTES", default_value_t = Config::DEFAULT.session_window)]
    pub session_window: usize,

    /// Argon2id cost for password verifiers (tests lower it).
    #[arg(skip = PasswordCost::OWASP)]
    pub password_cost: PasswordCost,
}

impl Config {
    /// The defaults, also the flags' defaults.
    pub const DEFAULT: Config = Config {
        data_dir: PathBuf::new(),
        database_url: None,
        redis_url: None,
        key_file: None,
        max_file_size: 100 * 1024 * 1024,
        max_pending_bytes: 1024 * 1024 * 1024,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
        park_after: Duration::from_secs(2),
        proxy_from: Vec::new(),
        max_connections_per_ip: 16,
        max_sessions_per_user: 32,
        login_timeout: Duration::from_secs(30),
        handshake_rate: 5,
        max_password_checks: 20,
        rate: 20,
        burst: 50,
        max_groups_per_user: 100,
        login_backoff: Duration::from_millis(2000),
        memory_budget: 512 * 1024 * 1024,
        session_window: 256 * 1024,
        password_cost: PasswordCost::OWASP,
    };

    /// Settings for unit tests: data in `data_dir` (a temporary directory),
    /// and the cheapest password hashing, so a login takes milliseconds;
    /// every limit is the server's default.
    #[cfg(test)]
    pub(crate) fn for_tests(data_dir: &std::path::Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            password_cost: PasswordCost::TESTING,
            ..Config::DEFAULT
        }
    }

    /// Where the server's key is: `--key-file`, or `server_key` in the
    /// data directory.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(identity::KEY_FILE))
    }

    fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            window: self.session_window.max(16 * 1024),
            ..OutboxLimits::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("muchat-data"),
            ..Config::DEFAULT
        }
    }
}

/// Why the server closed a connection (for the log, and for `BYE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its end.
    ClientClosed,
    /// The client sent `QUIT`.
    ClientQuit,
    /// Nothing arrived for the idle timeout, nor an answer to `PING`.
    IdleTimeout,
    /// The client broke the protocol.
    Protocol(String),
    /// Reading failed.
    ReadFailed(String),
    /// Writing failed.
    WriteFailed,
    /// The client took nothing for too long while frames waited.
    TooSlow,
    /// The server is stopping.
    ShuttingDown,
    /// The connection's own reader finished and its last frames went out.
    Finished,
    /// The handshake did not complete.
    Handshake(String),
    /// The connection did not log in in time.
    LoginTimeout,
    /// Too many frames without logging in.
    TooManyFrames,
    /// After a logout, its address already has its most connections.
    TooManyConnections,
}

impl CloseReason {
    /// The `BYE` text the client is sent, if any.
    pub fn bye(&self) -> Option<String> {
        match self {
            CloseReason::IdleTimeout => Some("idle timeout".into()),
            CloseReason::Protocol(why) => Some(format!("protocol error: {why}")),
            CloseReason::ShuttingDown => Some("server shutting down".into()),
            CloseReason::LoginTimeout => Some("log in sooner: login timeout".into()),
            CloseReason::TooManyFrames => Some("too many requests without logging in".into()),
            CloseReason::TooManyConnections => {
                Some("too many connections from your address".into())
            }
            _ => None,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("client closed the connection"),
            CloseReason::ClientQuit => f.write_str("client quit"),
            CloseReason::IdleTimeout => f.write_str("idle timeout: no answer to PING"),
            CloseReason::Protocol(why) => write!(f, "protocol error: {why}"),
            CloseReason::ReadFailed(why) => write!(f, "read failed: {why}"),
            CloseReason::WriteFailed => f.write_str("write failed"),
            CloseReason::TooSlow => f.write_str("client too slow to read"),
            CloseReason::ShuttingDown => f.write_str("server shutting down"),
            CloseReason::Finished => f.write_str("closed"),
            CloseReason::Handshake(why) => write!(f, "handshake failed: {why}"),
            CloseReason::LoginTimeout => f.write_str("login timeout"),
            CloseReason::TooManyFrames => f.write_str("too many frames before login"),
            CloseReason::TooManyConnections => {
                f.write_str("too many connections from this address after logout")
            }
        }
    }
}

/// Opens the store the configuration names, and loads what it holds:
/// PostgreSQL with `--database-url`, else SQLite in the data directory.
fn open_store(
    config: &Config,
    hook: crate::store::BatchHook,
) -> io::Result<(Arc<dyn Store>, crate::store::Snapshot)> {
    let named =
        |what: String| move |e: crate::store::StoreError| io::Error::other(format!("{what}: {e}"));
    match &config.database_url {
        Some(url) => {
            let what = crate::store::postgres::redact(url);
            let store = PostgresStore::connect(url, Some(hook)).map_err(named(what.clone()))?;
            let snapshot = store.load().map_err(named(what))?;
            if config.redis_url.is_none() {
                tracing::warn!(
                    "no --redis-url: messages other servers store reach this server's clients only when they log in again"
                );
            }
            Ok((Arc::new(store), snapshot))
        }
        None => {
            let store =
                SqliteStore::open_with(&config.data_dir, Some(hook)).map_err(io::Error::other)?;
            let snapshot = store
                .load()
                .map_err(named(store.path().display().to_string()))?;
            Ok((Arc::new(store), snapshot))
        }
    }
}

/// What every connection's thread shares.
pub(crate) struct Shared {
    config: Config,
    /// The static key that authenticates this server.
    identity: Arc<StaticSecret>,
    store: Arc<dyn Store>,
    passwords: Passwords,
    state: Mutex<State>,
    /// Every connection past its handshake, so shutdown can close them.
    connections: Mutex<HashMap<SessionId, Outbox>>,
    /// Connections not yet logged in, per source address.
    per_address: Arc<Counts<IpAddr>>,
    /// Logged-in sessions per user.
    per_user: Arc<Counts<Username>>,
    /// Handshakes per source address.
    handshakes: HandshakeRate,
    /// Login attempts by account, address, block and device.
    throttle: LoginThrottle,
    /// Writes every connection's frames.
    writers: WriterPool,
    /// Pages stored messages to connections that are behind.
    catch_up: CatchUp,
    /// Runs the handshakes' exponentiations.
    workers: workers::Workers,
    /// Holds idle connections without a thread each.
    parking: park::Parking,
    /// Set when the server is stopping: connections finishing their
    /// handshake are told and closed.
    stopping: AtomicBool,
    /// The other servers of a cluster, when there are any (`--redis-url`).
    cluster: Option<Arc<Cluster>>,
}

impl Shared {
    /// Opens the store and starts the pools: everything a connection
    /// needs except a listener, so unit tests build one the same way
    /// [`Server::start`] does.
    fn open(config: Config) -> io::Result<Shared> {
        // A commit's completions gather its group messages into bundles,
        // and its writes wake the writers once.
        let hook: crate::store::BatchHook = Arc::new(|complete, more| {
            outbox::deferring_wakeups(&mut || delivery::bundling(complete), more)
        });
        let (store, snapshot) = open_store(&config, hook)?;
        let cluster = match &config.redis_url {
            Some(url) => Some(Arc::new(Cluster::new(url).map_err(io::Error::other)?)),
            None => None,
        };
        let passwords = Passwords::new(config.password_cost).map_err(io::Error::other)?;
        let identity =
            Arc::new(identity::load_or_create(&config.key_path()).map_err(io::Error::other)?);
        let budget = Arc::new(Budget::new(config.memory_budget));
        Ok(Shared {
            identity,
            passwords,
            state: Mutex::new(State::from_snapshot(snapshot)),
            connections: Mutex::new(HashMap::new()),
            per_address: Arc::default(),
            per_user: Arc::default(),
            handshakes: HandshakeRate::new(config.handshake_rate, config.handshake_rate * 4),
            throttle: {
                let t = LoginThrottle::new(
                    config.login_backoff,
                    Duration::from_secs(60),
                    config.max_password_checks,
                );
                match &cluster {
                    Some(c) => t.shared(Box::new(cluster::RedisCounts::new(c))),
                    None => t,
                }
            },
            writers: WriterPool::start(config.outbox_limits(), budget)?,
            catch_up: CatchUp::start(Arc::clone(&store))?,
            workers: workers::Workers::start()?,
            parking: park::Parking::start()?,
            stopping: AtomicBool::new(false),
            cluster,
            store,
            config,
        })
    }

    /// Tells the cluster's other servers, if there are any.
    fn tell(&self, notice: Notice) {
        if let Some(c) = &self.cluster {
            c.publish(notice);
        }
    }

    /// Locks the state. A thread that panicked while holding the lock left
    /// the maps consistent (no method panics between two writes), so a
    /// poisoned lock is still usable.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<SessionId, Outbox>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Opens the store in `config.data_dir` and starts serving on
    /// `listener` in background threads. Fails, naming the path, if the
    /// data directory cannot be used: it never starts afresh over data it
    /// cannot read.
    pub fn start(listener: TcpListener, config: Config) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::open(config)?);
        if let Some(c) = &shared.cluster {
            c.start(Arc::downgrade(&shared))?;
            tracing::info!(
                node = c.node(),
                "in a cluster: listening for the other servers"
            );
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let accept = {
            let (shared, stopping) = (Arc::clone(&shared), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || accept_loop(listener, shared, stopping))?
        };
        Ok(Server {
            addr,
            shared,
            stopping,
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sessions idle enough to have given their thread back (see
    /// `--park-after-ms`), for monitoring and tests.
    pub fn parked_sessions(&self) -> usize {
        self.shared.parking.count()
    }

    /// The fingerprint clients pin (see [`crate::identity`]).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.shared.identity.public_value())
    }

    /// Blocks until the accept loop ends (it ends only on shutdown).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, says `BYE` to every connection and closes it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocked accept() with a throwaway connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(c) = &self.shared.cluster {
            c.stop();
        }
        let conns: Vec<Outbox> = self.shared.connections().values().cloned().collect();
        let bye = ServerMessage::Bye(CloseReason::ShuttingDown.bye().unwrap_or_default());
        for o in conns {
            let _ = o.send(&bye);
            o.finish();
        }
        // What is in flight is committed, then the connections wind down;
        // the store (and the data directory's lock) goes with the last of
        // them. Bounded: a connection stuck in its handshake is left to time out.
        if let Err(e) = self.shared.store.sync() {
            tracing::error!("could not finish writing: {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.shared) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stopping: Arc<AtomicBool>) {
    let mut next_session: SessionId = 1;
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let id = next_session;
        next_session += 1;
        let max = shared.config.max_connections_per_ip;
        if shared.config.proxy_from.contains(&peer.ip()) {
            // The client's address comes first, in the balancer's header:
            // read on the connection's own thread, then counted.
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{id}"))
                .stack_size(THREAD_STACK)
                .spawn(move || serve_proxied(stream, peer, id, shared));
            if let Err(e) = spawned {
                tracing::error!(conn = id, %peer, "refused: cannot start a thread: {e}");
            }
            continue;
        }
        let Some(place) = shared.per_address.admit(peer.ip(), max) else {
            tracing::warn!(conn = id, %peer, "refused: more than {max} connections from this address");
            let mut s = &stream;
            handshake::refuse(&mut s, "too many connections from your address");
            continue;
        };
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || session::serve(stream, peer, id, shared, place));
        if let Err(e) = spawned {
            tracing::error!(conn = id, %peer, "refused: cannot start a thread: {e}");
        }
    }
}

/// A connection from a trusted load balancer: its PROXY header names the
/// client, whose address then counts as a direct connection's would.
fn serve_proxied(stream: TcpStream, balancer: SocketAddr, id: SessionId, shared: Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(shared.config.handshake_timeout));
    let peer = match proxy::read_header(&mut &stream) {
        Ok(Some(client)) => client,
        // The balancer's own connection (a health check that says so).
        Ok(None) => balancer,
        Err(e) => {
            // Health checks that connect and close end here: not worth a
            // line every few seconds.
            tracing::debug!(conn = id, peer = %balancer, "closed: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let max = shared.config.max_connections_per_ip;
    let Some(place) = shared.per_address.admit(peer.ip(), max) else {
        tracing::warn!(conn = id, %peer, via = %balancer, "refused: more than {max} connections from this address");
        let mut s = &stream;
        handshake::refuse(&mut s, "too many connections from your address");
        return;
    };
    session::serve(stream, peer, id, shared, place);
}
