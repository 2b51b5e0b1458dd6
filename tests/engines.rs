//! The engine harness (tests/common/engines.rs) itself: each engine starts,
//! answers, and comes back after a stop. A missing engine makes its test
//! pass after printing `skipped: ...`, unless `MUCHAT_REQUIRE_ENGINES=1`.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::engines::{Haproxy, Postgres, Redis, Resp};

#[test]
fn postgres_answers_and_keeps_data_across_stop_and_kill() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    assert_eq!(
        pg.url(),
        format!("postgres://muchat@127.0.0.1:{}/muchat", pg.port())
    );
    assert_eq!(pg.psql("muchat", "select 1").unwrap(), "1");
    pg.psql(
        "muchat",
        "create table t (n int); insert into t values (1), (2)",
    )
    .unwrap();

    pg.stop();
    assert!(
        pg.psql("muchat", "select 1").is_err(),
        "answers while stopped"
    );
    pg.start_again();
    assert_eq!(pg.psql("muchat", "select sum(n) from t").unwrap(), "3");

    // A crash: committed rows survive, and the restart waits out the
    // killed server's backends.
    pg.psql("muchat", "insert into t values (4)").unwrap();
    pg.kill();
    pg.start_again();
    assert_eq!(pg.psql("muchat", "select sum(n) from t").unwrap(), "7");

    let url = pg.fresh_database("engines_fresh");
    assert_eq!(
        url,
        format!("postgres://muchat@127.0.0.1:{}/engines_fresh", pg.port())
    );
    assert_eq!(
        pg.psql(
            "engines_fresh",
            "select count(*) from pg_tables where schemaname = 'public'"
        )
        .unwrap(),
        "0"
    );
}

/// Sends raw RESP bytes on `stream` and reads one reply line.
fn resp_line(stream: &mut BufReader<TcpStream>, request: &str) -> String {
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    line
}

#[test]
fn redis_answers_over_raw_tcp_and_restarts_empty() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    let stream = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut stream = BufReader::new(stream);
    assert_eq!(resp_line(&mut stream, "PING\r\n"), "+PONG\r\n");
    assert_eq!(
        resp_line(&mut stream, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"),
        "+OK\r\n"
    );
    assert_eq!(
        resp_line(&mut stream, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        "$5\r\n"
    );
    assert_eq!(resp_line(&mut stream, ""), "hello\r\n");

    redis.stop();
    assert!(redis.command(&["PING"]).is_err(), "answers while stopped");
    redis.start_again();
    assert_eq!(
        redis.command(&["PING"]).unwrap(),
        Resp::Simple("PONG".into())
    );
    // No persistence: a restarted Redis has forgotten everything.
    assert_eq!(redis.command(&["GET", "k"]).unwrap(), Resp::Bulk(None));
}

/// A backend that answers each connection with its `tag` and then echoes.
fn echo_backend(tag: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                // HAProxy's health checks connect and close: errors are normal.
                if stream.write_all(tag.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn haproxy_forwards_connections_round_robin() {
    let backends = [echo_backend("a"), echo_backend("b")];
    let Some(proxy) = Haproxy::start(&backends) else {
        return;
    };
    assert!(proxy.admin("show stat").contains("node1"));
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"hello").unwrap();
        let mut reply = [0; 6];
        stream.read_exact(&mut reply).unwrap();
        let reply = String::from_utf8(reply.to_vec()).unwrap();
        assert_eq!(&reply[1..], "hello");
        seen.insert(reply[..1].to_string());
    }
    assert_eq!(seen.len(), 2, "both backends used: {seen:?}");
}
