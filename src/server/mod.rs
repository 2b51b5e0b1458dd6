//! The chat server: accept loop, configuration and shared state.
//!
//! [`Server::start`] (used by the `server` binary and by every test) takes a
//! bound listener and spawns the accept loop. Each accepted connection gets
//! a reader thread ([`session::serve`]) and an outbox ([`outbox`]) drained
//! by a small pool of writer threads shared by all connections; messages
//! are committed by the store's writer thread ([`crate::store`]), which then
//! delivers them; the account, group and presence tables live in one
//! [`state::State`] behind a mutex.
//!
//! ```text
//! socket -> FrameReader -> Request::parse -> State (locked briefly)
//!        -> Store (group commit) -> Outgoing (shared head + body)
//!        -> each recipient's Outbox -> writer pool: seal per recipient -> socket
//! ```

pub mod limits;
pub mod outbox;
mod replay;
mod session;
pub mod state;
mod transfer;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dh::StaticSecret;
use crate::event::ServerMessage;
use crate::identity::{self, Fingerprint};
use crate::log;
use crate::password::{PasswordCost, Passwords};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

use crate::handshake;
use limits::{ConnectionCounts, LoginThrottle};
use outbox::{Outbox, OutboxLimits, Outgoing};
use state::{SessionId, State};

/// Stack size for per-connection threads: they need little, and thousands
/// of default 2 MiB (virtual) stacks would crowd the address-space maps.
pub(crate) const THREAD_STACK: usize = 256 * 1024;

/// Server settings; the binary's flags map onto these.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest file accepted, in bytes (`--max-file-size`).
    pub max_file_size: u64,
    /// How long a new connection may take to finish the handshake.
    pub handshake_timeout: Duration,
    /// Per-client queue sizes.
    pub outbox: OutboxLimits,
    /// Where the database lives (`--data-dir`).
    pub data_dir: PathBuf,
    /// Most bytes of undelivered files kept per user (`--max-pending-bytes`).
    pub max_pending_bytes: u64,
    /// Argon2id cost for password verifiers.
    pub password_cost: PasswordCost,
    /// A session silent this long is closed; it is sent `PING` halfway.
    pub idle_timeout: Duration,
    /// Open connections allowed per source address (0: no limit).
    pub max_connections_per_ip: usize,
    /// Commands per second per session (0: no limit).
    pub rate: u32,
    /// Commands a session may send in a burst above the rate.
    pub burst: u32,
    /// Groups one user may belong to.
    pub max_groups_per_user: usize,
    /// The first login delay after repeated failures (it doubles up to a minute).
    pub login_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_file_size: 100 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            outbox: OutboxLimits::default(),
            data_dir: PathBuf::from("muchat-data"),
            max_pending_bytes: 1024 * 1024 * 1024,
            password_cost: PasswordCost::OWASP,
            idle_timeout: Duration::from_secs(300),
            max_connections_per_ip: 16,
            rate: 20,
            burst: 50,
            max_groups_per_user: 100,
            login_backoff: Duration::from_millis(500),
        }
    }
}

/// What every connection's thread shares.
pub(crate) struct Shared {
    config: Config,
    /// The static key that authenticates this server.
    identity: StaticSecret,
    store: Box<dyn Store>,
    passwords: Passwords,
    state: Mutex<State>,
    /// The next message or transfer id.
    next_id: AtomicU64,
    /// Every connection past its handshake, so shutdown can close them.
    connections: Mutex<HashMap<SessionId, Outbox>>,
    /// Open connections per source address.
    per_address: Arc<ConnectionCounts>,
    /// Failed logins by account and by address.
    throttle: LoginThrottle,
}

impl Shared {
    /// Locks the state. A thread that panicked while holding the lock left
    /// the maps consistent (no method panics between two writes), so a
    /// poisoned lock is still usable.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, id: SessionId, outbox: Outbox) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, outbox);
    }

    fn unregister(&self, id: SessionId) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
        let store = SqliteStore::open(&config.data_dir).map_err(|e| io::Error::other(e.0))?;
        let snapshot = store
            .load()
            .map_err(|e| io::Error::other(format!("{}: {}", store.path().display(), e.0)))?;
        let passwords =
            Passwords::new(config.password_cost).map_err(|e| io::Error::other(e.to_string()))?;
        let identity = identity::load_or_create(&config.data_dir).map_err(io::Error::other)?;
        let next_id = snapshot.max_message_id + 1;
        let config_backoff = config.login_backoff;
        let shared = Arc::new(Shared {
            config,
            identity,
            store: Box::new(store),
            passwords,
            state: Mutex::new(State::from_snapshot(snapshot)),
            next_id: AtomicU64::new(next_id),
            connections: Mutex::new(HashMap::new()),
            per_address: Arc::default(),
            throttle: LoginThrottle::new(config_backoff, Duration::from_secs(60)),
        });
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
        let conns: Vec<Outbox> = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let bye = Outgoing::from(&ServerMessage::Bye("server shutting down".into()));
        for o in conns {
            let _ = o.send(bye.clone());
            o.finish();
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
                log!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let id = next_session;
        next_session += 1;
        let max = shared.config.max_connections_per_ip;
        let Some(admission) = shared.per_address.admit(peer.ip(), max) else {
            log!("conn {id} from {peer}: refused: more than {max} connections from this address");
            let mut s = &stream;
            handshake::refuse(&mut s, "too many connections from your address");
            continue;
        };
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .stack_size(THREAD_STACK)
            .spawn(move || session::serve(stream, peer, id, shared, admission));
        if let Err(e) = spawned {
            log!("conn {id} from {peer}: refused: cannot start a thread: {e}");
        }
    }
}
