//! `loadgen --hoard`: clients that stop reading, to measure that the
//! server's memory stays within its budget and that everyone else is still
//! served. The shapes are the ones that once took a server to gigabytes:
//!
//! * one account with 8 sessions, each pipelining `HISTORY #group 500`
//!   requests and never reading;
//! * 4 members of a flooded group that never read (`--messages`, 3000 by
//!   default here, before the hoarders come and as many during);
//! * a member with a large backlog logging in 4 times and never reading.
//!
//! Meanwhile a reading member asks for `HISTORY #group 50` every 200 ms
//! (its latency is what "other users are unaffected" means), and the
//! server's RSS is sampled every 100 ms. At the end the hoarders leave and
//! the RSS is read again after 5 s (is the memory given back?). Bounded by
//! the counts below and by `--deadline`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use muchat::client::session::Session;
use muchat::content::ContentKey;
use muchat::names::{GroupName, Username};
use muchat::request::{HistoryTarget, Request, SendId};

use super::modes::{clients, fail, form_group, Client, LoadError, Options};
use super::report::rss_kib;

/// Bytes of text per message.
const SIZE: usize = 1000;
/// `HISTORY` requests each hoarding session pipelines.
const PIPELINED: usize = 100;

/// Runs the hoarding shapes with `messages` in the group before the
/// hoarders come and as many during; returns what was measured.
pub fn hoard(opts: &Options, messages: usize) -> Result<Value, LoadError> {
    let (before, flood) = (messages, messages);
    let started = Instant::now();
    let past_deadline = || started.elapsed() >= opts.deadline;
    let pid = opts
        .server_pids
        .first()
        .copied()
        .ok_or_else(|| fail("--hoard needs --server-pid (it measures the server's memory)"))?;
    let group = GroupName::parse(&format!("{}g", opts.prefix)).map_err(fail)?;
    // 0 floods, 1 hoards, 2..=5 stop reading, 6 has a backlog, 7 probes.
    let mut all = clients(opts, 8)?;
    form_group(&mut all, &group)?;
    let lagger = all[6].name.clone();
    all[6].ok(&Request::Logout, &[])?;
    let mut flooder = all.remove(0);
    send_all(&mut flooder, &group, before)?;
    let rss_before = rss_kib(pid).unwrap_or(0.0);

    // The RSS, sampled until the hoarders are gone.
    let peak = AtomicU64::new(rss_before as u64);
    let sampling = AtomicBool::new(true);
    let mut probe_ms: Vec<f64> = Vec::new();
    let hoarder = all[0].name.clone();
    let mut held: Vec<Session> = Vec::new();
    let mut probe = all.pop().ok_or_else(|| fail("no probe"))?;
    let flooding = AtomicBool::new(true);
    let (flooding, group_ref, past) = (&flooding, &group, &past_deadline);
    std::thread::scope(|s| -> Result<(), LoadError> {
        s.spawn(|| {
            while sampling.load(Ordering::Relaxed) && !past_deadline() {
                if let Some(k) = rss_kib(pid) {
                    peak.fetch_max(k as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // 8 sessions of one account pipelining HISTORY, never reading.
        for _ in 0..8 {
            let mut session = login_as(opts, &hoarder)?;
            let stream = session.writer.stream();
            // A server that stops reading a non-reader's requests blocks
            // these writes: give up on the rest after a moment.
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let request = Request::History {
                with: HistoryTarget::Group(group.clone()),
                limit: 500,
            };
            for _ in 0..PIPELINED {
                if session.writer.send(&request).is_err() {
                    break;
                }
            }
            held.push(session);
        }
        // The backlog user logs in 4 times and reads nothing.
        for _ in 0..4 {
            held.push(login_as(opts, &lagger)?);
        }
        // The other four members stop reading; the group is flooded; the
        // last member probes.
        let probes = s.spawn(move || {
            let mut times = Vec::new();
            let request = Request::History {
                with: HistoryTarget::Group(group_ref.clone()),
                limit: 50,
            };
            while (flooding.load(Ordering::Relaxed) || times.len() < 10) && !past() {
                let t0 = Instant::now();
                if probe.session.request(&request).is_err() {
                    break;
                }
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(200));
            }
            times
        });
        let sent = send_all(&mut flooder, &group, flood);
        flooding.store(false, Ordering::Relaxed);
        probe_ms = probes.join().map_err(|_| fail("the probe panicked"))?;
        sent?;
        // Let queues settle, then the hoarders leave.
        std::thread::sleep(Duration::from_secs(2));
        sampling.store(false, Ordering::Relaxed);
        Ok(())
    })?;
    let rss_peak = peak.load(Ordering::Relaxed) as f64;
    drop(held);
    drop(all);
    std::thread::sleep(Duration::from_secs(5));
    let rss_after = rss_kib(pid).unwrap_or(0.0);
    probe_ms.sort_by(f64::total_cmp);
    let q = |f: f64| {
        probe_ms
            .get(((probe_ms.len() as f64 * f) as usize).min(probe_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let mib = |k: f64| k / 1024.0;
    println!(
        "hoard: 8 sessions pipelining HISTORY 500 unread, 4 members not reading a flood of \
         {flood} x {SIZE} B, a backlog user logged in 4 times unread: server RSS {:.0} MiB \
         before, {:.0} MiB at the peak, {:.0} MiB 5 s after they left; another member's \
         HISTORY 50 took {:.1} ms (median) / {:.1} ms (max) over {} probes",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
        q(0.5),
        q(1.0),
        probe_ms.len()
    );
    Ok(json!({
        "mode": "hoard", "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(rss_peak),
        "rss_after_mib": mib(rss_after), "probe_history_p50_ms": q(0.5),
        "probe_history_max_ms": q(1.0), "probes": probe_ms.len(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Another session of an existing account (its password is `pw-<name>`).
fn login_as(opts: &Options, name: &Username) -> Result<Session, LoadError> {
    let addr = &opts.addrs[0];
    let mut c = Client {
        session: Session::connect(addr, &opts.trust).map_err(fail)?,
        name: name.clone(),
    };
    c.ok(
        &Request::Login {
            username: name.clone(),
            password: format!("pw-{name}"),
            token: None,
        },
        &[],
    )?;
    Ok(c.session)
}

/// Sends `n` messages of [`SIZE`] bytes to the group, eight unanswered at
/// a time.
fn send_all(c: &mut Client, group: &GroupName, n: usize) -> Result<(), LoadError> {
    let text = vec![b'x'; SIZE];
    let mut unanswered = 0;
    for _ in 0..n {
        let key = ContentKey::random();
        let body = key.seal(&text);
        c.session
            .writer
            .send(&Request::SendToGroup {
                groups: vec![group.clone()],
                send_id: SendId::random(),
                key,
                body,
            })
            .map_err(fail)?;
        unanswered += 1;
        while unanswered >= 8 {
            c.await_reply()?;
            unanswered -= 1;
        }
    }
    while unanswered > 0 {
        c.await_reply()?;
        unanswered -= 1;
    }
    Ok(())
}
