//! The real `loadgen` binary at toy sizes against a server running in this
//! process, so it never rots. The real runs are benchmarks
//! (docs/BENCHMARKS.md), not tests.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A hang detector for a whole run, not a performance bound: the runs here
/// take well under a second (the cipher measurement a few seconds), and
/// loadgen's own `--deadline` is set below this.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Every field of the JSON line.
const FIELDS: [&str; 17] = [
    "mode",
    "deliveries",
    "expected",
    "per_second",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "wall_s",
    "server_cpu_s",
    "server_us_per_delivery",
    "generator_cpu_s",
    "rss_per_session_kib",
    "server_rss_kib",
    "mb_per_s",
    "decrypted",
    "repeats",
];

/// How a loadgen run ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON line, every field present.
    fn json(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rfind(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON line: {self:?}"));
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for f in FIELDS {
            assert!(v.get(f).is_some(), "no {f:?} in {line}");
        }
        v
    }
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// Runs loadgen with `args`. No `MUCHAT_*` variable of ours reaches it,
/// and its home, temporary and working directory are `sandbox`.
fn loadgen(sandbox: &Path, args: &[String]) -> Run {
    let mut cmd = Command::new(LOADGEN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MUCHAT_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "info")
        .env("HOME", sandbox)
        .env("XDG_DATA_HOME", sandbox)
        .env("XDG_STATE_HOME", sandbox)
        .env("TMPDIR", sandbox)
        .current_dir(sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let (tx, rx) = channel();
    for (i, mut from) in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = from.read_to_string(&mut s);
            let _ = tx.send((i, s));
        });
    }
    let mut out = [String::new(), String::new()];
    for _ in 0..2 {
        match rx.recv_timeout(RUN_LIMIT) {
            Ok((i, s)) => out[i] = s,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("loadgen {args:?} did not finish; printed {out:?}");
            }
        }
    }
    let status = child.wait().expect("wait");
    let [stdout, stderr] = out;
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// The arguments every run against `server` takes, then `more`.
fn args(server: &TestServer, prefix: &str, more: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        server.local_addr().to_string(),
        "--server-fingerprint".into(),
        server.fingerprint().to_string(),
        "--server-pid".into(),
        std::process::id().to_string(),
        "--deadline".into(),
        "120".into(),
        "--prefix".into(),
        prefix.into(),
    ];
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

#[test]
fn fan_out_delivers_everything_and_reports_json() {
    let server = start_server();
    let sandbox = server.path("loadgen");
    let run = loadgen(
        &sandbox,
        &args(
            &server,
            "fo",
            &[
                "--members",
                "5",
                "--senders",
                "2",
                "--messages",
                "20",
                "--size",
                "100",
                "--window",
                "4",
                "--sample",
                "3",
            ],
        ),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    // Each sender's messages reach the other four members.
    assert_eq!(v["expected"], 2 * 20 * 4, "{v}");
    assert_eq!(v["deliveries"], v["expected"], "{v}");
    assert!(v["mode"].is_string(), "{v}");
    assert!(num(&v, "decrypted") > 0.0, "{v}");
    assert!(num(&v, "per_second") > 0.0, "{v}");
    assert!(num(&v, "max_ms") > 0.0, "{v}");
    assert!(num(&v, "p50_ms") <= num(&v, "max_ms"), "{v}");
    assert!(num(&v, "wall_s") > 0.0, "{v}");
    // The server runs in this process, whose id was given.
    assert!(num(&v, "server_cpu_s") >= 0.0, "{v}");
    assert!(num(&v, "generator_cpu_s") >= 0.0, "{v}");
    // The summary for people comes first.
    assert!(run.stdout.contains("160 of 160"), "{}", run.stdout);
}

/// The cluster shapes (several addresses; cross-node latency) at toy size,
/// against one server given twice: the real runs are bench/cluster.sh.
#[test]
fn several_addresses_and_latency_mode_run() {
    let server = start_server();
    let sandbox = server.path("loadgen");
    let addr = server.local_addr().to_string();
    let with = |addrs: &[&str], prefix: &str, more: &[&str]| {
        let mut a: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
        // args() puts the one address first; the others follow it.
        a.extend(args(&server, prefix, more).into_iter().skip(1));
        a
    };

    // One comma-separated list: members (and senders) alternate.
    let both = format!("{addr},{addr}");
    let run = loadgen(
        &sandbox,
        &with(
            &[&both],
            "ca",
            &[
                "--members",
                "6",
                "--senders",
                "2",
                "--messages",
                "10",
                "--sample",
                "1",
            ],
        ),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["expected"], 2 * 10 * 5, "{v}");
    assert_eq!(v["deliveries"], v["expected"], "{v}");
    assert_eq!(v["repeats"], 0, "{v}");

    // Two addresses: the sender on the first, the receiver on the second.
    let run = loadgen(&sandbox, &with(&[&addr, &addr], "la", &["--latency", "20"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!((&v["deliveries"], &v["expected"]), (&20.into(), &20.into()));
    assert_eq!(v["decrypted"], 20, "{v}");
    assert!(num(&v, "p50_ms") > 0.0, "{v}");
    assert!(num(&v, "p99_ms") <= num(&v, "max_ms"), "{v}");
    assert!(v["mode"].as_str().unwrap().contains("receiver on"), "{v}");
}

#[test]
fn storm_idle_and_file_modes_count_what_they_expect() {
    let server = start_server();
    let sandbox = server.path("loadgen");

    let run = loadgen(&sandbox, &args(&server, "st", &["--storm", "6"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!((&v["deliveries"], &v["expected"]), (&6.into(), &6.into()));

    let run = loadgen(&sandbox, &args(&server, "id", &["--idle", "4"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let v = run.json();
    assert_eq!(v["deliveries"], 4, "{v}");
    assert!(num(&v, "p50_ms") > 0.0, "the probe arrived: {v}");
    assert!(num(&v, "rss_per_session_kib").is_finite(), "{v}");

    for (to, members) in [("user", 1), ("group", 10)] {
        let run = loadgen(
            &sandbox,
            &args(
                &server,
                &format!("fi{to}"),
                &["--file", "100000", "--to", to],
            ),
        );
        assert_eq!(run.code, Some(0), "{run:?}");
        let v = run.json();
        assert_eq!(v["deliveries"], members, "{v}");
        assert!(num(&v, "mb_per_s") > 0.0, "{v}");
    }
}

#[test]
fn cipher_prints_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path();
    // An address is required; --cipher never uses it (as in
    // docs/BENCHMARKS.md).
    let run = loadgen(sandbox, &["127.0.0.1:1".into(), "--cipher".into()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let rate = run
        .stdout
        .trim()
        .strip_prefix("3DES-CBC")
        .and_then(|s| s.strip_suffix(" MB/s"))
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate: {run:?}"));
    assert!(rate > 0.0, "{run:?}");
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path();
    for bad in [
        &[][..],
        &["127.0.0.1:1", "--members", "many"],
        &["127.0.0.1:1", "--to", "everyone"],
        &["127.0.0.1:1", "--server-fingerprint", "SHA256:nope"],
        &["127.0.0.1:1", "--bogus"],
    ] {
        let args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
        let run = loadgen(sandbox, &args);
        assert_eq!(run.code, Some(2), "{bad:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{bad:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{bad:?}: {run:?}");
    }

    // Nothing listening there: the run cannot proceed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = [&format!("127.0.0.1:{port}"), "--members", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let run = loadgen(sandbox, &args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("loadgen: "), "{run:?}");
}

#[test]
fn attacks_report_what_the_limits_let_through() {
    // The server's default abuse limits (only the password hash is cheap).
    let defaults = muchat::server::Config::default();
    let server = start_server_with(|c| {
        c.max_connections_per_ip = defaults.max_connections_per_ip;
        c.handshake_rate = defaults.handshake_rate;
        c.max_password_checks = defaults.max_password_checks;
    });
    let sandbox = server.path("loadgen");
    let attack = |prefix: &str, more: &[&str]| {
        let run = loadgen(&sandbox, &args(&server, prefix, more));
        assert_eq!(run.code, Some(0), "{run:?}");
        let line = run.stdout.lines().rfind(|l| l.starts_with('{'));
        let line = line.unwrap_or_else(|| panic!("no JSON line: {run:?}"));
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };

    // Users behind one address all get in and are served.
    let v = attack("na", &["--attack", "nat", "--count", "20"]);
    assert_eq!(
        (&v["logged_in"], &v["served"]),
        (&20.into(), &20.into()),
        "{v}"
    );

    // 12 parallel guesses at one account: the throttle lets few be checked.
    let v = attack("gu", &["--attack", "guess", "--count", "12"]);
    let checked = num(&v, "checked_first_10s");
    assert!((1.0..=5.0).contains(&checked), "{v}");
    let o = &v["outcomes"];
    let total: f64 = ["accepted", "wrong", "rate_limited", "refused", "other"]
        .iter()
        .map(|k| num(o, k))
        .sum();
    assert_eq!(total, 12.0, "every attempt is accounted for: {v}");

    // A one-second handshake flood: answered up to the burst and rate only.
    let v = attack("dh", &["--attack", "dh-flood", "--secs", "1"]);
    assert!(num(&v, "refused") > 0.0, "{v}");
    let burst = f64::from(4 * defaults.handshake_rate);
    assert!(
        num(&v, "answered") <= burst + 2.0 * f64::from(defaults.handshake_rate),
        "{v}"
    );
}

#[test]
fn hoard_reports_memory_and_another_members_history() {
    let server = start_server();
    let sandbox = server.path("loadgen");
    let run = loadgen(
        &sandbox,
        &args(&server, "ho", &["--hoard", "--messages", "100"]),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let line = run.stdout.lines().rfind(|l| l.starts_with('{'));
    let v: Value = serde_json::from_str(line.unwrap_or_else(|| panic!("{run:?}"))).unwrap();
    assert_eq!(v["mode"], "hoard", "{v}");
    assert!(num(&v, "rss_peak_mib") >= num(&v, "rss_before_mib"), "{v}");
    assert!(num(&v, "probes") >= 10.0, "{v}");
    assert!(num(&v, "probe_history_p50_ms") > 0.0, "{v}");
}
