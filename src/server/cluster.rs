//! Several servers as one: what crosses between the servers of a cluster
//! while they run, over Redis.
//!
//! The store (PostgreSQL) is the record; Redis only carries what is live,
//! and nothing in it needs keeping:
//!
//! * **Notices** on one pub/sub channel, [`CHANNEL`]: "conversation C
//!   advanced to N", "group G changed", "user U was created". A server
//!   that hears that C advanced reads the new entries from the store once
//!   and offers them to its own connections, exactly as if it had
//!   committed them itself (a group message is still sealed once per
//!   server, under that server's group key).
//! * **Presence**: each server keeps the set of users logged in to it
//!   under its own key, rewritten every [`PRESENCE_EVERY`] with a short
//!   expiry, so `LIST` shows who is online anywhere and a server that dies
//!   drops out by itself.
//!
//! Pub/sub is lossy: a notice sent while a server was cut off from Redis
//! never reaches it. So every time a server (re)subscribes it catches up
//! from the store ([`Cluster`]'s resync: accounts, groups and every
//! conversation's head), and a server that could not publish keeps its
//! notices (merged per conversation, so they stay few) until it can.
//! Redis going away therefore pauses live delivery between servers; it
//! never loses a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use rand::RngExt as _;

use super::limits::Count;
use crate::names::{GroupName, Username};
use crate::store::ConvId;

use super::Shared;

/// The pub/sub channel every server publishes to and listens on.
pub const CHANNEL: &str = "muchat:notices";

/// Servers seen lately, scored by the time of their last presence write.
const NODES: &str = "muchat:nodes";

/// How often a server rewrites its presence set.
const PRESENCE_EVERY: Duration = Duration::from_secs(2);

/// How long a presence set outlives its server's last write.
const PRESENCE_TTL: Duration = Duration::from_secs(6);

/// How long to wait for Redis before giving up on one try.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait between attempts to reach Redis again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Entries read from the store at a time when another server's messages
/// are fetched.
pub(super) const PAGE: usize = 256;

/// Something one server tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The conversation's last sequence number is now at least this.
    Advanced(ConvId, u64),
    /// The group's members, roles or invitations changed (or it was created).
    Group(GroupName),
    /// The account was created.
    User(Username),
}

impl Notice {
    /// The message published: `<node> adv <conv> <seq>`, `<node> grp
    /// <group>` or `<node> usr <user>` (names never contain spaces).
    fn to_wire(&self, node: &str) -> String {
        match self {
            Notice::Advanced(c, seq) => format!("{node} adv {} {seq}", c.key()),
            Notice::Group(g) => format!("{node} grp {g}"),
            Notice::User(u) => format!("{node} usr {u}"),
        }
    }

    /// Parses a published message: the sending node and the notice.
    fn parse(s: &str) -> Option<(&str, Notice)> {
        let mut words = s.split(' ');
        let node = words.next()?;
        let notice = match (words.next()?, words.next()?) {
            ("adv", conv) => {
                Notice::Advanced(ConvId::parse_key(conv)?, words.next()?.parse().ok()?)
            }
            ("grp", g) => Notice::Group(GroupName::parse(g).ok()?),
            ("usr", u) => Notice::User(Username::parse(u).ok()?),
            _ => return None,
        };
        words.next().is_none().then_some((node, notice))
    }
}

/// Merges notices waiting to be published: one per conversation (its
/// highest), group or user, so they stay few however long a burst or an
/// outage.
fn merge(notices: Vec<Notice>) -> Vec<Notice> {
    let mut heads: BTreeMap<ConvId, u64> = BTreeMap::new();
    let mut others: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in notices {
        match n {
            Notice::Advanced(c, seq) => {
                let h = heads.entry(c).or_insert(0);
                *h = (*h).max(seq);
            }
            other => {
                if others.insert(other.to_wire("")) {
                    out.push(other);
                }
            }
        }
    }
    out.extend(heads.into_iter().map(|(c, s)| Notice::Advanced(c, s)));
    out
}

/// What the notice worker does next.
enum Work {
    /// Another server's notice.
    Notice(Notice),
    /// Catch up from the store (just (re)subscribed).
    Resync,
}

/// This server's part in a cluster.
pub struct Cluster {
    /// Names this server in notices (random, new at every start).
    node: String,
    client: redis::Client,
    outgoing: Sender<Notice>,
    outgoing_rx: Receiver<Notice>,
    /// For requests (LIST's presence).
    requests: Kept,
    stopping: AtomicBool,
}

/// Connection failures, logged once per outage rather than once per try.
struct Outage {
    what: &'static str,
    since: Option<Instant>,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage { what, since: None }
    }

    fn failed(&mut self, e: &dyn std::fmt::Display) {
        if self.since.is_none() {
            tracing::warn!("redis unreachable ({}): {e}; retrying", self.what);
            self.since = Some(Instant::now());
        }
    }

    fn ok(&mut self) {
        if let Some(t) = self.since.take() {
            tracing::info!(
                after_ms = t.elapsed().as_millis() as u64,
                "redis reachable again ({})",
                self.what
            );
        }
    }
}

impl Cluster {
    /// A cluster member using the Redis at `url`. Fails only on a URL that
    /// cannot work; Redis being down now is logged and retried.
    pub fn new(url: &str) -> Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        let node = format!("{:016x}", rand::rng().random::<u64>());
        let (outgoing, outgoing_rx) = unbounded();
        Ok(Cluster {
            node,
            requests: Kept::new(&client),
            client,
            outgoing,
            outgoing_rx,
            stopping: AtomicBool::new(false),
        })
    }

    /// This server's name in the cluster.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts the threads that publish, listen and keep presence.
    pub(super) fn start(self: &Arc<Self>, shared: Weak<Shared>) -> std::io::Result<()> {
        let (work, todo) = unbounded();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(super::THREAD_STACK * 4)
                .spawn(f)
                .map(|_| ())
        };
        let me = Arc::clone(self);
        spawn("cluster-publish", Box::new(move || me.publish_loop()))?;
        let me = Arc::clone(self);
        spawn("cluster-listen", Box::new(move || me.listen_loop(&work)))?;
        let (me, s) = (Arc::clone(self), shared.clone());
        spawn("cluster-apply", Box::new(move || me.apply_loop(&s, &todo)))?;
        let me = Arc::clone(self);
        spawn(
            "cluster-presence",
            Box::new(move || me.presence_loop(&shared)),
        )?;
        Ok(())
    }

    /// Stops the threads (they notice within a second).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Tells the other servers (never blocks: a thread of its own publishes).
    pub fn publish(&self, notice: Notice) {
        let _ = self.outgoing.send(notice);
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect(&self.client)
    }

    fn publish_loop(&self) {
        let con = Kept::new(&self.client);
        let mut pending: Vec<Notice> = Vec::new();
        let mut outage = Outage::new("publishing");
        let mut backoff = Duration::from_millis(50);
        while !self.stopping() {
            let wait = if pending.is_empty() {
                Duration::from_millis(500)
            } else {
                backoff
            };
            match self.outgoing_rx.recv_timeout(wait) {
                Ok(n) => pending.push(n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            pending.extend(self.outgoing_rx.try_iter());
            if pending.is_empty() {
                continue;
            }
            // A burst (or an outage) that advanced a conversation several
            // times is told once, at its highest.
            pending = merge(pending);
            let sent = con.with(|con| {
                let mut pipe = redis::pipe();
                for n in &pending {
                    pipe.cmd("PUBLISH")
                        .arg(CHANNEL)
                        .arg(n.to_wire(&self.node))
                        .ignore();
                }
                pipe.exec(con)
            });
            match sent {
                Ok(()) => {
                    pending.clear();
                    outage.ok();
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    outage.failed(&e);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn listen_loop(&self, work: &Sender<Work>) {
        let mut outage = Outage::new("listening");
        let mut backoff = Duration::from_millis(50);
        while !self.stopping() {
            let mut con = match self.connect() {
                Ok(c) => c,
                Err(e) => {
                    outage.failed(&e);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let mut sub = con.as_pubsub();
            if let Err(e) = sub.subscribe(CHANNEL) {
                outage.failed(&e);
                continue;
            }
            let _ = sub.set_read_timeout(Some(Duration::from_millis(500)));
            outage.ok();
            backoff = Duration::from_millis(50);
            // Whatever was published while this server was not listening
            // is in the store: catch up from there.
            if work.send(Work::Resync).is_err() {
                return;
            }
            while !self.stopping() {
                match sub.get_message() {
                    Ok(msg) => {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        match Notice::parse(&text) {
                            Some((node, _)) if node == self.node => {}
                            Some((_, n)) => {
                                if work.send(Work::Notice(n)).is_err() {
                                    return;
                                }
                            }
                            None => tracing::warn!(notice = %text, "unreadable cluster notice"),
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => {
                        outage.failed(&e);
                        break;
                    }
                }
            }
        }
    }

    /// Applies other servers' notices in arrival order, a burst at a time
    /// (a conversation that advanced several times is read once).
    fn apply_loop(&self, shared: &Weak<Shared>, todo: &Receiver<Work>) {
        // Conversations whose entries could not be read yet (the store was
        // unreachable): tried again every second.
        let mut retry: BTreeMap<ConvId, u64> = BTreeMap::new();
        let mut resync_failed = false;
        while !self.stopping() {
            let mut burst = Vec::new();
            if std::mem::take(&mut resync_failed) {
                burst.push(Work::Resync);
            }
            match todo.recv_timeout(Duration::from_secs(1)) {
                Ok(w) => burst.push(w),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            burst.extend(todo.try_iter());
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut heads = std::mem::take(&mut retry);
            for w in burst {
                match w {
                    Work::Resync => {
                        if let Err(e) = resync(&shared, &mut heads) {
                            tracing::warn!("cannot catch up from the store: {e}; trying again");
                            resync_failed = true;
                        }
                    }
                    Work::Notice(Notice::Advanced(c, seq)) => {
                        let h = heads.entry(c).or_insert(0);
                        *h = (*h).max(seq);
                    }
                    Work::Notice(Notice::Group(g)) => refresh_group(&shared, &g),
                    Work::Notice(Notice::User(u)) => refresh_user(&shared, &u),
                }
            }
            for (conv, seq) in heads {
                if let Err(e) = advance(&shared, &conv, seq) {
                    tracing::warn!(%conv, "cannot read another server's messages: {e}");
                    retry.insert(conv, seq);
                }
            }
        }
    }

    fn presence_loop(&self, shared: &Weak<Shared>) {
        let con = Kept::new(&self.client);
        let mut outage = Outage::new("presence");
        let key = presence_key(&self.node);
        while !self.stopping() {
            let Some(users) = shared.upgrade().map(|s| s.state().online_users()) else {
                return;
            };
            let now = crate::clock::now_ms();
            let wrote = con.with(|con| {
                let mut pipe = redis::pipe();
                pipe.atomic().del(&key).ignore();
                if !users.is_empty() {
                    pipe.sadd(&key, users.iter().map(Username::as_str).collect::<Vec<_>>())
                        .ignore();
                }
                pipe.pexpire(&key, PRESENCE_TTL.as_millis() as i64)
                    .ignore()
                    .zadd(NODES, &self.node, now)
                    .ignore()
                    .zrembyscore(NODES, 0, now.saturating_sub(60_000))
                    .ignore();
                pipe.exec(con)
            });
            match wrote {
                Ok(()) => outage.ok(),
                Err(e) => outage.failed(&e),
            }
            let until = Instant::now() + PRESENCE_EVERY;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Users logged in to the other servers (empty if Redis cannot be
    /// reached: `LIST` then shows this server's users only).
    pub fn online_elsewhere(&self) -> BTreeSet<Username> {
        let result = self
            .requests
            .with(|con| -> redis::RedisResult<Vec<String>> {
                let since = crate::clock::now_ms().saturating_sub(PRESENCE_TTL.as_millis() as u64);
                let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(NODES)
                    .arg(since)
                    .arg("+inf")
                    .query(con)?;
                let keys: Vec<String> = nodes
                    .iter()
                    .filter(|n| **n != self.node)
                    .map(|n| presence_key(n))
                    .collect();
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                redis::cmd("SUNION").arg(keys).query(con)
            });
        match result {
            Ok(names) => names
                .iter()
                .filter_map(|n| Username::parse(n).ok())
                .collect(),
            Err(e) => {
                tracing::debug!("presence unavailable: {e}");
                BTreeSet::new()
            }
        }
    }
}

/// Login counts every server of the cluster shares, in Redis (see
/// [`super::limits::LoginThrottle`]): each key's count is a hash read and
/// written in one optimistic transaction (`WATCH`/`MULTI`), so attempts
/// on several servers at once all see each other.
pub struct RedisCounts {
    /// For the counts' transactions.
    counts: Kept,
    /// For the password-check budget (taken while a transaction is open).
    checks: Kept,
}

/// Transactions retried when another server changed the counts meanwhile.
const COUNT_RETRIES: usize = 20;

impl RedisCounts {
    /// Counts in the Redis the cluster uses.
    pub fn new(cluster: &Cluster) -> RedisCounts {
        RedisCounts {
            counts: Kept::new(&cluster.client),
            checks: Kept::new(&cluster.client),
        }
    }
}

/// A Redis connection kept between calls: opened when first needed, and
/// dropped when a call on it fails, so the next one opens a new one (how
/// every thread here rides out a Redis restart).
struct Kept {
    client: redis::Client,
    slot: Mutex<Option<redis::Connection>>,
}

impl Kept {
    fn new(client: &redis::Client) -> Kept {
        Kept {
            client: client.clone(),
            slot: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection, one caller at a time.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let con = match &mut *slot {
            Some(con) => con,
            empty => empty.insert(connect(&self.client)?),
        };
        let r = f(con);
        if r.is_err() {
            *slot = None;
        }
        r
    }
}

/// A connection with the timeouts every Redis call here runs under.
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let c = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    c.set_read_timeout(Some(REDIS_TIMEOUT))?;
    c.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(c)
}

impl super::limits::SharedCounts for RedisCounts {
    fn update(
        &self,
        keys: &[String],
        lapse: Duration,
        f: &mut dyn FnMut(&mut [Option<Count>]) -> bool,
    ) -> Result<bool, String> {
        let names: Vec<String> = keys.iter().map(|k| format!("muchat:login:{k}")).collect();
        self.counts
            .with(|con| {
                for _ in 0..COUNT_RETRIES {
                    redis::cmd("WATCH").arg(&names).exec(con)?;
                    let mut counts = Vec::with_capacity(names.len());
                    for n in &names {
                        let v: Vec<Option<u64>> = redis::cmd("HMGET")
                            .arg(n)
                            .arg(&["f", "i", "la", "l"])
                            .query(con)?;
                        counts.push(match v.as_slice() {
                            [Some(f), Some(i), Some(la), Some(l)] => Some(Count {
                                failures: *f as u32,
                                in_flight: *i as u32,
                                last_attempt_ms: *la,
                                last_ms: *l,
                            }),
                            _ => None,
                        });
                    }
                    let before = counts.clone();
                    let result = f(&mut counts);
                    if counts == before {
                        redis::cmd("UNWATCH").exec(con)?;
                        return Ok(result);
                    }
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for (n, c) in names.iter().zip(&counts) {
                        if let Some(c) = c {
                            pipe.hset_multiple(
                                n,
                                &[
                                    ("f", u64::from(c.failures)),
                                    ("i", u64::from(c.in_flight)),
                                    ("la", c.last_attempt_ms),
                                    ("l", c.last_ms),
                                ],
                            )
                            .pexpire(n, lapse.as_millis() as i64);
                        }
                    }
                    let done: redis::Value = pipe.query(con)?;
                    if !matches!(done, redis::Value::Nil) {
                        return Ok(result);
                    }
                    // Another server changed a count meanwhile: decide again.
                }
                Err(redis::RedisError::from(std::io::Error::other(
                    "login counts kept changing under this server",
                )))
            })
            .map_err(|e| e.to_string())
    }

    fn take_check(&self, rate: u32) -> Result<Result<(), Duration>, String> {
        let now = crate::clock::now_ms();
        let key = format!("muchat:checks:{}", now / 1000);
        let taken: (u64, bool) = self
            .checks
            .with(|con| {
                redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .expire(&key, 2)
                    .query(con)
            })
            .map_err(|e| e.to_string())?;
        Ok(if taken.0 <= u64::from(rate) {
            Ok(())
        } else {
            Err(Duration::from_millis(1000 - now % 1000))
        })
    }
}

fn presence_key(node: &str) -> String {
    format!("muchat:presence:{node}")
}

/// Catches up with the store after a time of not listening: accounts and
/// groups as stored, and every conversation whose head moved (added to
/// `heads`, read by the caller).
fn resync(
    shared: &Shared,
    heads: &mut BTreeMap<ConvId, u64>,
) -> Result<(), crate::store::StoreError> {
    let snapshot = shared.store.load()?;
    for user in &snapshot.users {
        shared.state().add_account(user);
    }
    for group in snapshot.groups {
        apply_group(shared, group);
    }
    let st = shared.state();
    for (conv, head) in snapshot.heads {
        if head > st.head(&conv) {
            let h = heads.entry(conv).or_insert(0);
            *h = (*h).max(head);
        }
    }
    Ok(())
}

/// Reads an account another server may have created: known here after
/// this, if it exists.
pub(super) fn learn_user(shared: &Shared, user: &Username) -> Result<(), crate::store::StoreError> {
    if let Some(record) = shared.store.user(user)? {
        shared.state().add_account(&record);
    }
    Ok(())
}

/// [`learn_user`], where a failure is only worth a warning.
pub(super) fn refresh_user(shared: &Shared, user: &Username) {
    if let Err(e) = learn_user(shared, user) {
        tracing::warn!(%user, "cannot read a new account: {e}");
    }
}

pub(super) fn refresh_group(shared: &Shared, group: &GroupName) {
    match shared.store.group(group) {
        Ok(Some(record)) => apply_group(shared, record),
        Ok(None) => {}
        Err(e) => tracing::warn!(%group, "cannot read a changed group: {e}"),
    }
}

/// Takes a group as stored: members who joined elsewhere start following
/// it here from their cursor, members who left stop.
fn apply_group(shared: &Shared, record: crate::store::GroupRecord) {
    let conv = ConvId::Group(record.name.clone());
    let (joined, left, notices, links) = {
        let mut st = shared.state();
        let (joined, left, notices) = st.refresh_group(record);
        let links: Vec<_> = joined
            .iter()
            .chain(left.iter())
            .map(|u| (u.clone(), st.links_of(u)))
            .collect();
        (joined, left, notices, links)
    };
    // Keys first, so no GMSG can come before its key.
    notices.send();
    for (user, links) in links {
        if links.is_empty() {
            continue;
        }
        if left.contains(&user) {
            for l in &links {
                l.unfollow(&conv);
            }
        } else if joined.contains(&user) {
            let conv = conv.clone();
            shared.store.cursors(
                &user,
                Box::new(move |cursors| {
                    let Ok(cursors) = cursors else { return };
                    let mine: Vec<_> = cursors.into_iter().filter(|c| c.conv == conv).collect();
                    for l in &links {
                        l.start(mine.clone());
                    }
                }),
            );
        }
    }
}

/// Another server committed `conv` up to `seq`: reads what this server
/// has not seen and offers it to its connections.
///
/// The offer runs on the store's writer, after the completions of every
/// local write queued before it: an entry this server committed itself
/// may be read here before its own completion ran (which tells the
/// sending connection it need not get it back), and the writer's order
/// settles that.
fn advance(shared: &Arc<Shared>, conv: &ConvId, seq: u64) -> Result<(), crate::store::StoreError> {
    loop {
        let from = shared.state().head(conv) + 1;
        if from > seq {
            return Ok(());
        }
        let entries = shared.store.read(conv, from, PAGE)?;
        if entries.is_empty() {
            return Ok(());
        }
        let (done, wait) = crossbeam_channel::bounded(1);
        let s = Arc::clone(shared);
        shared.store.then(Box::new(move |r| {
            if r.is_ok() {
                super::handler::deliver(&s, entries);
            }
            let _ = done.send(r);
        }));
        wait.recv()
            .map_err(|_| crate::store::StoreError::Stopped)??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_junk_is_refused() {
        let a = Username::parse("alice").unwrap();
        let b = Username::parse("bob").unwrap();
        for n in [
            Notice::Advanced(ConvId::direct(&b, &a), 17),
            Notice::Advanced(ConvId::Group(GroupName::parse("ops").unwrap()), 1),
            Notice::Group(GroupName::parse("ops").unwrap()),
            Notice::User(a.clone()),
        ] {
            let wire = n.to_wire("n1");
            assert_eq!(Notice::parse(&wire), Some(("n1", n)));
        }
        for junk in [
            "",
            "n1",
            "n1 adv #ops",
            "n1 adv #ops x",
            "n1 grp",
            "n1 usr a b",
            "n1 zzz x",
        ] {
            assert_eq!(Notice::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn notices_kept_through_an_outage_are_merged() {
        let g = ConvId::Group(GroupName::parse("ops").unwrap());
        let u = Notice::User(Username::parse("alice").unwrap());
        let merged = merge(vec![
            Notice::Advanced(g.clone(), 3),
            u.clone(),
            Notice::Advanced(g.clone(), 9),
            u.clone(),
            Notice::Advanced(g.clone(), 5),
        ]);
        assert_eq!(merged, vec![u, Notice::Advanced(g, 9)]);
    }
}
