//! The load generator at toy sizes against a real server, so it never rots.
//! The real runs are benchmarks (docs/BENCHMARKS.md), not tests.

mod common;

use std::time::Duration;

use common::*;
use muchat::loadgen::{run, Mode, Options};

fn options(server: &muchat::server::Server, mode: Mode, prefix: &str) -> Options {
    Options {
        addr: server.local_addr(),
        mode,
        prefix: prefix.into(),
        deadline: Duration::from_secs(60),
        server_pid: Some(std::process::id()),
        sample: 3,
    }
}

#[test]
fn every_mode_runs_and_counts_what_it_expects() {
    let server = start_server();
    let fan_out = Mode::FanOut {
        members: 5,
        senders: 2,
        messages: 20,
        size: 100,
        window: 8,
    };
    let r = run(&options(&server, fan_out, "fo")).unwrap();
    assert_eq!(r.expected, 2 * 20 * 4);
    assert_eq!(r.deliveries, r.expected, "{}", r.summary());
    assert!(r.decrypted > 0 && r.latency_ms[3] > 0.0);
    assert!(r.json().contains("\"deliveries\":160"));

    let r = run(&options(&server, Mode::Storm { clients: 6 }, "st")).unwrap();
    assert_eq!((r.deliveries, r.expected), (6, 6));

    let r = run(&options(&server, Mode::Idle { sessions: 4 }, "id")).unwrap();
    assert_eq!(r.deliveries, 4);
    assert!(r.latency_ms[0] > 0.0, "the probe arrived");
    assert!(r.rss_per_session_kib.is_some());

    for members in [1, 3] {
        let file = Mode::File {
            size: 100_000,
            members,
        };
        let r = run(&options(&server, file, &format!("fi{members}x"))).unwrap();
        assert_eq!(r.deliveries, members as u64, "{}", r.summary());
        assert!(r.mb_per_s.unwrap() > 0.0);
    }
}
