//! Several servers as one: nodes sharing a real PostgreSQL and a real
//! Redis, talked to by the real client over TCP.
//!
//! Each test starts its own engines (tests/common/engines.rs) and nodes
//! (in this process, each on 127.0.0.1:0 with the cluster's one key), so
//! tests never see each other's data. Without PostgreSQL or Redis
//! installed a test says it is skipped and passes, unless
//! `MUCHAT_REQUIRE_ENGINES=1` (as in CI) makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::engines::{Postgres, Redis};
use common::*;
use muchat::client::{Client, ClientEvent};
use muchat::event::{ErrorCode, Reply};
use muchat::server::Config;
use tempfile::TempDir;

/// PostgreSQL, Redis and the nodes of one test's cluster.
struct Cluster {
    pg: Postgres,
    redis: Redis,
    url: String,
    /// The key every node shares.
    key: PathBuf,
    nodes: Vec<TestServer>,
    _dir: TempDir,
}

impl Cluster {
    /// `n` nodes on fresh engines, or `None` when an engine is missing.
    fn start(n: usize) -> Option<Cluster> {
        Self::start_with(n, |_| {})
    }

    fn start_with(n: usize, f: impl Fn(&mut Config)) -> Option<Cluster> {
        let pg = Postgres::start()?;
        let redis = Redis::start()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            url: pg.url(),
            pg,
            redis,
            key: dir.path().join("server_key"),
            nodes: Vec::new(),
            _dir: dir,
        };
        for _ in 0..n {
            cluster.add_node(&f);
        }
        Some(cluster)
    }

    fn add_node(&mut self, f: &impl Fn(&mut Config)) {
        let (url, redis, key) = (self.url.clone(), self.redis.url(), self.key.clone());
        self.nodes.push(start_server_with(|c| {
            c.database_url = Some(url);
            c.redis_url = Some(redis);
            c.key_file = Some(key);
            f(c);
        }));
    }

    fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }
}

/// Waits for the next message, skipping other events (keys, notices).
fn next_msg(c: &Client) -> Msg {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.events().recv_timeout(left).expect("a message in time") {
            ClientEvent::Message { at, from, text, .. } => {
                return Msg {
                    at: at.to_string(),
                    from: from.to_string(),
                    text,
                }
            }
            _ => continue,
        }
    }
}

/// Runs `line` until it is not refused for the store, for up to `limit`.
fn ok_once_stored(c: &Client, line: &str, limit: Duration) -> Reply {
    let deadline = Instant::now() + limit;
    loop {
        let r = run(c, line);
        match &r {
            Reply::Err {
                code: ErrorCode::Storage,
                ..
            } if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => return r,
        }
    }
}

#[test]
fn every_node_presents_one_identity() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    assert_eq!(cluster.node(0).fingerprint(), cluster.node(1).fingerprint());
}

#[test]
fn a_message_to_a_user_on_another_node_arrives_live() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let alice = login(cluster.node(0), "alice");
    // Created on node 0 a moment ago: node 1 knows the account already.
    let bob = login(cluster.node(1), "bob");
    let refs = sent(&alice, "SEND bob hello from node 0");
    assert_eq!(refs[0].to_string(), "@bob:1");
    let m = next_msg(&bob);
    assert_eq!(
        (m.at.as_str(), m.text.as_str()),
        ("@alice:1", "hello from node 0")
    );
    // And back.
    sent(&bob, "SEND alice and back");
    assert_eq!(next_msg(&alice).text, "and back");
    // LIST shows who is online anywhere (presence is rewritten every 2 s).
    let deadline = Instant::now() + WAIT;
    loop {
        let list = ok(&alice, "LIST");
        if list.contains("online: alice, bob") {
            break;
        }
        assert!(Instant::now() < deadline, "bob never shown online: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_group_spread_over_three_nodes_sees_one_order() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let names = ["ann", "ben", "cat", "dan", "eve", "fay"];
    let clients: Vec<Client> = names
        .iter()
        .enumerate()
        .map(|(i, n)| login(cluster.node(i % 3), n))
        .collect();
    ok(&clients[0], "CREATE_GROUP ops");
    for c in &clients[1..] {
        ok(c, "JOIN ops");
    }
    // Everyone sends at once, from every node.
    const EACH: usize = 20;
    let own: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let senders: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    (0..EACH)
                        .map(|k| {
                            let text = format!("m{i}-{k}");
                            let at = sent(c, &format!("SEND_TO_GROUP ops {text}"));
                            (at[0].to_string(), text)
                        })
                        .collect()
                })
            })
            .collect();
        senders.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = EACH * names.len();
    // The one order: what each sequence number holds, from the replies.
    let order: BTreeMap<String, String> = own.iter().flatten().cloned().collect();
    let want: Vec<String> = (1..=total).map(|i| format!("#ops:{i}")).collect();
    let mut all: Vec<String> = order.keys().cloned().collect();
    all.sort_by_key(|at| at[5..].parse::<usize>().unwrap());
    assert_eq!(all, want, "sequence numbers 1..={total}, each once");
    for (i, c) in clients.iter().enumerate() {
        // Everything but its own sends (its replies said where they went),
        // in sequence order, each once.
        let mut got = Vec::new();
        while got.len() < total - EACH {
            let m = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next_msg(c)))
                .unwrap_or_else(|_| {
                    panic!(
                        "{} (node {}) got only {}: {:?}",
                        names[i],
                        i % 3,
                        got.len(),
                        got.iter()
                            .map(|(a, _): &(String, String)| a.clone())
                            .collect::<Vec<_>>()
                    )
                });
            got.push((m.at, m.text));
        }
        let expected: Vec<(String, String)> = want
            .iter()
            .filter(|at| !own[i].iter().any(|(a, _)| a == *at))
            .map(|at| (at.clone(), order[at].clone()))
            .collect();
        assert_eq!(got, expected, "{} on node {}", names[i], i % 3);
        assert_no_event(c);
    }
}

#[test]
fn a_user_on_two_nodes_gets_everything_on_both() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let alice = login(cluster.node(0), "alice");
    let bob0 = login(cluster.node(0), "bob");
    let bob1 = login_again(cluster.node(1), "bob");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob1, "JOIN ops");
    sent(&alice, "SEND bob direct");
    sent(&alice, "SEND_TO_GROUP ops grouped");
    for b in [&bob0, &bob1] {
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        for _ in 0..2 {
            let m = next_msg(b);
            texts.insert(m.at, m.text);
        }
        assert_eq!(texts["@alice:1"], "direct");
        assert_eq!(texts["#ops:1"], "grouped");
    }
    // What bob sends on one node reaches his session on the other.
    sent(&bob1, "SEND alice from bob");
    assert_eq!(next_msg(&bob0).text, "from bob");
}

#[test]
fn a_group_file_reaches_members_on_every_node_intact() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let sender = login(cluster.node(0), "ann");
    ok(&sender, "CREATE_GROUP ops");
    let mut receivers = Vec::new();
    for (i, name) in ["ben", "cat", "dan"].iter().enumerate() {
        let node = cluster.node(i);
        let downloads = node.path("dl");
        let c = Client::connect(node.local_addr(), client_config(node, downloads.clone()))
            .expect("connect");
        ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
        ok(&c, &format!("LOGIN {name} pw-{name}"));
        ok(&c, "JOIN ops");
        receivers.push((c, downloads));
    }
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let path = cluster.node(0).path("up").join("report.bin");
    std::fs::write(&path, &data).unwrap();
    let r = run(
        &sender,
        &format!("SEND_TO_GROUP FILE ops {}", path.display()),
    );
    assert!(r.is_ok(), "{r:?}");
    for (c, downloads) in &receivers {
        let deadline = Instant::now() + WAIT;
        let saved = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.events().recv_timeout(left).expect("the file in time") {
                ClientEvent::FileReceived { path, .. } => break path,
                ClientEvent::FileFailed { reason, .. } => panic!("file failed: {reason}"),
                _ => continue,
            }
        };
        assert!(saved.starts_with(downloads));
        assert_eq!(std::fs::read(&saved).unwrap(), data);
    }
}

#[test]
fn a_send_repeated_on_another_node_is_recognised_not_duplicated() {
    let Some(cluster) = Cluster::start(2) else {
        return;
    };
    let bob = login(cluster.node(1), "bob");
    let a0 = login(cluster.node(0), "alice");
    let a1 = login_again(cluster.node(1), "alice");
    // The same send (same id), as a client retries it after reconnecting
    // through the load balancer to another node.
    let key = muchat::content::ContentKey::random();
    let send = muchat::request::Request::Send {
        to: user("bob"),
        send_id: muchat::request::SendId::parse("retry-1").unwrap(),
        body: key.seal(b"only once"),
        key,
    };
    let first = a0.request(&send).expect("reply");
    let again = a1.request(&send).expect("reply");
    assert_eq!(first.sent(), again.sent(), "{again:?}");
    assert!(matches!(&again, Reply::Ok { text, .. } if text.contains("already sent")));
    assert_eq!(next_msg(&bob).text, "only once");
    assert_no_event(&bob);
}

#[test]
fn postgres_away_gives_err_storage_and_the_node_recovers_by_itself() {
    let Some(mut cluster) = Cluster::start(1) else {
        return;
    };
    let alice = login(cluster.node(0), "alice");
    let _bob = login(cluster.node(0), "bob");
    sent(&alice, "SEND bob before");
    cluster.pg.stop();
    // No false OK while the database is away.
    err(&alice, "SEND bob during", ErrorCode::Storage);
    // The session is still up.
    assert!(run(&alice, "HELP").is_ok());
    cluster.pg.start_again();
    let r = ok_once_stored(&alice, "SEND bob after", Duration::from_secs(20));
    assert_eq!(r.sent()[0].to_string(), "@bob:2", "{r:?}");
}

#[test]
fn redis_restarted_loses_nothing_and_live_delivery_resumes() {
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let alice = login(cluster.node(0), "alice");
    let bob = login(cluster.node(1), "bob");
    sent(&alice, "SEND bob one");
    assert_eq!(next_msg(&bob).text, "one");
    cluster.redis.stop();
    // Committed in PostgreSQL; the notice has nowhere to go.
    sent(&alice, "SEND bob two");
    cluster.redis.start_again();
    let back = Instant::now();
    assert_eq!(next_msg(&bob).text, "two");
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "caught up {:?} after Redis came back",
        back.elapsed()
    );
    sent(&alice, "SEND bob three");
    assert_eq!(next_msg(&bob).text, "three");
    assert_no_event(&bob);
}

#[test]
fn login_guesses_spread_over_three_nodes_meet_the_limits_of_one() {
    let Some(cluster) = Cluster::start_with(3, |c| {
        c.login_backoff = Duration::from_secs(30);
    }) else {
        return;
    };
    drop(login(cluster.node(0), "alice"));
    // The first guesses are free (3 per account), whichever node takes them.
    let guess = |i: usize, code| {
        err(
            &connect(cluster.node(i % 3)),
            "LOGIN alice wrong-password",
            code,
        )
    };
    for i in 0..3 {
        guess(i, ErrorCode::LoginFailed);
    }
    // The next is refused on every node, without a password check.
    for i in 0..3 {
        guess(i, ErrorCode::RateLimited);
    }
}

#[test]
fn a_data_directory_moves_into_postgres_whole() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    // A single server on SQLite, used for a while.
    let mut single = start_server();
    let alice = login(&single, "alice");
    let bob = login(&single, "bob");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob, "JOIN ops");
    sent(&alice, "SEND bob hello bob");
    sent(&alice, "SEND_TO_GROUP ops hello ops");
    assert_eq!(next_msg(&bob).text, "hello bob");
    assert_eq!(next_msg(&bob).text, "hello ops");
    drop(bob);
    // A file for bob while he is away: it waits in the store.
    let path = single.path("up").join("notes.txt");
    std::fs::write(&path, b"file kept across the move").unwrap();
    let r = run(&alice, &format!("SEND FILE bob {}", path.display()));
    assert!(r.is_ok(), "{r:?}");
    loop {
        match next_event(&alice) {
            ClientEvent::FileSent { .. } => break,
            ClientEvent::FileSendFailed { .. } => panic!("the upload failed"),
            _ => {}
        }
    }
    drop(alice);
    let fingerprint = single.fingerprint();
    single.stop();

    let url = pg.fresh_database("moved");
    let copied =
        muchat::store::migrate::sqlite_to_postgres(&single.config.data_dir, &url).expect("migrate");
    let text = copied.to_string();
    assert!(
        text.contains("2 users") && text.contains("1 groups"),
        "{text}"
    );
    // Twice is refused: the database is no longer empty.
    assert!(muchat::store::migrate::sqlite_to_postgres(&single.config.data_dir, &url).is_err());

    let node = start_server_with(|c| {
        c.database_url = Some(url.clone());
        c.key_file = Some(single.config.key_path());
    });
    assert_eq!(
        node.fingerprint(),
        fingerprint,
        "the same key, so pinned clients still trust it"
    );
    // Bob's file was waiting for him, and still is.
    let bob = login_again(&node, "bob");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match bob.events().recv_timeout(left).expect("the file in time") {
            ClientEvent::FileReceived { path, .. } => {
                assert_eq!(std::fs::read(path).unwrap(), b"file kept across the move");
                break;
            }
            // Messages whose acknowledgement was still on its way come
            // again (at least once); nothing else may.
            ClientEvent::Message { text, .. } => {
                assert!(
                    ["hello bob", "hello ops"].contains(&text.as_str()),
                    "{text}"
                )
            }
            _ => {}
        }
    }
    // The group's history moved too.
    assert!(run(&bob, "HISTORY ops 10").is_ok());
    let m = next_msg(&bob);
    assert_eq!((m.at.as_str(), m.text.as_str()), ("#ops:1", "hello ops"));
    let alice = login_again(&node, "alice");
    // Sequence numbers go on from where they were.
    assert_eq!(
        sent(&alice, "SEND bob after the move")[0].to_string(),
        "@bob:3"
    );
}

/// A node process of its own (so it can be killed with SIGKILL), on a
/// port that stays the same across restarts, behind the load balancer.
struct Node {
    child: std::process::Child,
    port: u16,
    args: Vec<String>,
}

impl Node {
    fn start(cluster: &Cluster, dir: &std::path::Path, port: u16) -> Node {
        let args = vec![
            "--database-url".into(),
            cluster.url.clone(),
            "--redis-url".into(),
            cluster.redis.url(),
            "--key-file".into(),
            cluster.key.display().to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            // Behind HAProxy every client comes from one address.
            "--rate".into(),
            "0".into(),
            "--max-connections-per-ip".into(),
            "0".into(),
            "--handshake-rate".into(),
            "0".into(),
        ];
        Self::spawn(args, port)
    }

    fn spawn(args: Vec<String>, port: u16) -> Node {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .arg(format!("127.0.0.1:{port}"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a node");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let port = loop {
            let line = lines.next().expect("node output").expect("a log line");
            if let Some(a) = line.split("addr=127.0.0.1:").nth(1) {
                break a.trim().parse().expect("a port");
            }
        };
        // Keep draining the log so the node never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Node { child, port, args }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        *self = Node::spawn(self.args.clone(), self.port);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill -9 of each node in turn, mid-traffic, with clients that reach the
/// cluster through HAProxy and reconnect on their own (to whichever node
/// HAProxy picks): every acknowledged message arrives, none is shown
/// twice, and retried sends are stored once.
#[test]
fn kill_dash_nine_of_a_node_behind_haproxy_loses_nothing_and_shows_nothing_twice() {
    use muchat::client::{ClientConfig, Trust};
    let Some(cluster) = Cluster::start(0) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = [
        Node::start(&cluster, &tmp.path().join("n0"), 0),
        Node::start(&cluster, &tmp.path().join("n1"), 0),
    ];
    let Some(lb) = common::engines::Haproxy::start(&[nodes[0].addr(), nodes[1].addr()]) else {
        return;
    };
    let known = tmp.path().join("known_servers");
    let client = |name: &str| {
        let config = ClientConfig {
            trust: Trust::KnownServers(known.clone()),
            downloads: tmp.path().join("dl"),
            state_dir: Some(tmp.path().join("state")),
            reconnect: true,
        };
        let c = Client::connect(lb.addr(), config).unwrap();
        let _ = run(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
        ok(&c, &format!("LOGIN {name} pw-{name}"));
        c
    };
    let alice = client("alice");
    let bob = client("bob");
    const MESSAGES: usize = 200;
    let sender = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            // Each send is retried by the client across reconnects until
            // it gets a reply.
            match alice.send_text(&user("bob"), &format!("m{i}")) {
                Ok(r) if r.is_ok() => {}
                other => panic!("m{i}: {other:?}"),
            }
        }
        alice
    });
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shown.len() < MESSAGES {
        assert!(Instant::now() < deadline, "only {} arrived", shown.len());
        let Ok(event) = bob.events().recv_timeout(Duration::from_secs(30)) else {
            panic!("no event; {} shown, {kills} kills", shown.len());
        };
        match event {
            ClientEvent::Message { text, .. } => {
                *shown.entry(text).or_default() += 1;
                if kills < 2 && shown.len() >= (kills + 1) * MESSAGES / 3 {
                    nodes[kills].kill_and_restart();
                    kills += 1;
                }
            }
            ClientEvent::ConnectionLost { .. } | ClientEvent::Reconnected => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let alice = sender.join().unwrap();
    assert_eq!(kills, 2);
    let twice: Vec<_> = shown.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown twice: {twice:?}");
    // Retried sends were stored once: the log holds exactly MESSAGES.
    while alice.events().try_recv().is_ok() {}
    let history = ok_once_stored(&alice, "HISTORY @bob 500", WAIT);
    assert!(
        matches!(&history, Reply::Ok { text, .. } if *text == format!("{MESSAGES} messages with @bob")),
        "{history:?}"
    );
}

/// A raw connection to `to` from the loopback address `from` (each
/// attacker or office its own address, as the load balancer sees them).
fn raw_from(from: [u8; 4], to: std::net::SocketAddr) -> Raw {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from((from, 0)).into())
        .expect("bind a loopback source address");
    socket.connect(&to.into()).expect("connect");
    Raw::over(socket.into())
}

/// Behind HAProxy sending the PROXY protocol, the per-address limits count
/// each client's own address: guesses from one address are slowed, and a
/// user elsewhere logs in at once (without the header, every client would
/// be the balancer's one address, and the guesser would lock everyone out).
#[test]
fn behind_haproxy_the_limits_count_the_client_not_the_balancer() {
    let balancer: std::net::IpAddr = [127, 0, 0, 2].into();
    let Some(cluster) = Cluster::start_with(1, |c| {
        c.proxy_from = vec![balancer];
        c.login_backoff = Duration::from_secs(30);
    }) else {
        return;
    };
    let Some(lb) =
        common::engines::Haproxy::start_sending_proxy(&[cluster.node(0).local_addr()], balancer)
    else {
        return;
    };
    // Direct connections (not from the balancer) need no header.
    drop(login(cluster.node(0), "alice"));
    for i in 0..3 {
        let r = raw_from([127, 10, 1, 1], lb.addr()).request(&format!("LOGIN nobody{i} wrong"));
        assert!(
            matches!(
                &r,
                Reply::Err {
                    code: ErrorCode::LoginFailed,
                    ..
                }
            ),
            "guess {i}: {r:?}"
        );
    }
    let r = raw_from([127, 10, 1, 1], lb.addr()).request("LOGIN nobody9 wrong");
    assert!(
        matches!(
            &r,
            Reply::Err {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "the guesser's address is slowed: {r:?}"
    );
    let r = raw_from([127, 10, 2, 1], lb.addr()).request("LOGIN alice pw-alice");
    assert!(r.is_ok(), "alice, elsewhere, is not: {r:?}");
}
