//! `loadgen --latency N`: one user sends another `N` direct messages, one
//! at a time, and the time from each send to its arrival is measured.
//!
//! The sender is client 0 and the receiver client 1, so with two or more
//! addresses the sender is on the first server and the receiver on the
//! second: what is measured is then cross-node delivery (the receiver's
//! server hears of the message from the cluster, reads it from the store
//! and delivers it). With one address both are on that server.
//!
//! Each message is sent only once the previous one has arrived, been
//! acknowledged by the receiver and answered `OK` to the sender, so
//! nothing queues behind anything: the figure is the latency of a lone
//! message, end to end (the sender's sealing, both servers, the
//! receiver's MAC check and decryption). The times are taken with one
//! clock in this process. A few messages first (not measured) warm up
//! the conversation on both servers. Every body is decrypted and checked
//! to be the message expected next; a repeated, out-of-order or foreign
//! one fails the run.

use std::time::{Duration, Instant};

use muchat::client::session::{Acks, Incoming, SessionError};
use muchat::content::ContentKey;
use muchat::event::{ErrorCode, Reply};
use muchat::request::{Request, SendId};

use super::modes::{clients, fail, Client, LoadError, Meters, Options};
use super::report::Report;

/// Messages sent (and awaited) before the measured ones.
pub const WARM_UP: usize = 5;

/// Runs `messages` measured direct messages (after [`WARM_UP`] more).
pub fn latency(opts: &Options, messages: usize) -> Result<Report, LoadError> {
    let started = Instant::now();
    let deadline = started + opts.deadline;
    let mut pair = clients(opts, 2)?;
    let mut receiver = pair.pop().ok_or_else(|| fail("no receiver"))?;
    let mut sender = pair.pop().ok_or_else(|| fail("no sender"))?;
    let (from, to) = (
        opts.addrs[0].as_str(),
        opts.addrs[1 % opts.addrs.len()].as_str(),
    );
    let mut run = Run {
        sender_acks: Acks::default(),
        receiver_acks: Acks::default(),
        deadline,
    };
    // The receiver's account was created through its own server: the
    // sender's may not know it yet (UNKNOWN_USER until it hears of it).
    let key = ContentKey::random();
    let first = Request::Send {
        to: receiver.name.clone(),
        send_id: SendId::random(),
        body: key.seal(b"hello"),
        key,
    };
    if let Some(waited) = sender.ok_once_known(&first, &[], ErrorCode::UnknownUser)? {
        eprintln!(
            "loadgen: the first message was refused UNKNOWN_USER (the receiver's account was \
             created through another server) and retried for {:.1} ms",
            waited.as_secs_f64() * 1e3
        );
    }
    run.arrival(&sender, &mut receiver, "hello")?;
    for n in 0..WARM_UP {
        run.one(&mut sender, &mut receiver, n)?;
    }
    let meters = Meters::start(opts);
    let mut latencies = Vec::with_capacity(messages);
    let mut failure = None;
    for n in WARM_UP..WARM_UP + messages {
        match run.one(&mut sender, &mut receiver, n) {
            Ok(us) => latencies.push(us),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut report = Report {
        mode: format!(
            "latency {messages} direct messages one at a time, sender on {from}, receiver on {to}"
        ),
        expected: messages as u64,
        deliveries: latencies.len() as u64,
        decrypted: latencies.len() as u64,
        ..Report::default()
    };
    meters.stop(&mut report);
    report.finish(latencies);
    if let Some(e) = failure {
        eprintln!("loadgen: {e}");
    }
    Ok(report)
}

/// The run's state between messages.
struct Run {
    sender_acks: Acks,
    receiver_acks: Acks,
    deadline: Instant,
}

impl Run {
    /// Sends message `n` and waits for it to arrive (returning the
    /// microseconds that took), then for the receiver's acknowledgement to
    /// go out and for the sender's `OK`.
    fn one(
        &mut self,
        sender: &mut Client,
        receiver: &mut Client,
        n: usize,
    ) -> Result<u64, LoadError> {
        let text = format!("n={n} ");
        let key = ContentKey::random();
        let body = key.seal(text.as_bytes());
        let request = Request::Send {
            to: receiver.name.clone(),
            send_id: SendId::random(),
            key,
            body,
        };
        let start = Instant::now();
        sender.session.writer.send(&request).map_err(fail)?;
        let arrived = self.arrival(sender, receiver, &text)?;
        let us = arrived.duration_since(start).as_micros() as u64;
        loop {
            match self.next(sender, &format!("the reply to message {n}"))? {
                Incoming::Reply(Reply::Ok { .. }) => break,
                Incoming::Reply(Reply::Err { code, text }) => {
                    return Err(fail(format!("message {n} refused: {code} {text}")))
                }
                // Its own copy (other sessions of a user see what it sent).
                Incoming::Message(d) => self.sender_acks.handled(&d.at),
                _ => {}
            }
        }
        for a in self.sender_acks.take() {
            sender.session.writer.send(&a).map_err(fail)?;
        }
        Ok(us)
    }

    /// Waits for the message `text` from `sender` to reach `receiver`
    /// (anything else arriving first fails the run), and acknowledges it at
    /// once, as a client showing one message does. Returns when it arrived.
    fn arrival(
        &mut self,
        sender: &Client,
        receiver: &mut Client,
        text: &str,
    ) -> Result<Instant, LoadError> {
        let arrived = loop {
            match self.next(receiver, &format!("message {text:?}"))? {
                Incoming::Message(d) if d.from == sender.name => {
                    let arrived = Instant::now();
                    let got = d.key.open(&d.body).map_err(fail)?;
                    if got != text.as_bytes() {
                        return Err(fail(format!(
                            "{} expected {text:?}, got {:?} at {} (repeated or out of order)",
                            receiver.name,
                            String::from_utf8_lossy(&got),
                            d.at
                        )));
                    }
                    self.receiver_acks.handled(&d.at);
                    break arrived;
                }
                Incoming::Message(d) => {
                    return Err(fail(format!(
                        "{} got a message from {} at {}",
                        receiver.name, d.from, d.at
                    )))
                }
                _ => {}
            }
        };
        for a in self.receiver_acks.take() {
            receiver.session.writer.send(&a).map_err(fail)?;
        }
        Ok(arrived)
    }

    /// The next thing `c`'s server sends (answering `PING`s on the way),
    /// waiting no later than the deadline.
    fn next(&self, c: &mut Client, waiting_for: &str) -> Result<Incoming, LoadError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(format!(
                    "{}: deadline passed waiting for {waiting_for}",
                    c.name
                )));
            }
            c.session
                .reader
                .set_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(fail)?;
            match c.session.reader.recv() {
                Ok(Incoming::Ping(n)) => c.session.writer.send(&Request::Pong(n)).map_err(fail)?,
                Ok(i) => return Ok(i),
                Err(SessionError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(fail(format!("{} waiting for {waiting_for}: {e}", c.name))),
            }
        }
    }
}
