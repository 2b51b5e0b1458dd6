//! Scripted mode: commands from a pipe or file, one per line, and the
//! contract a script relies on.
//!
//! Each command's reply is awaited (and printed) before the next is sent;
//! events print as they arrive, in the [`super::display`] line format or,
//! with `--json`, as [`super::json`] objects. Events that arrived before a
//! reply (such as `HISTORY`'s messages) print before it. A `RATE_LIMITED`
//! reply is not printed: the command is sent again after the wait the
//! server names (for up to [`MAX_RETRY_WAIT`] in all). Blank lines and
//! lines starting with `#` are skipped.
//!
//! How it ends is its [`Exit`] code: 0 when every command succeeded, 1 if
//! any got an `ERR` (at the first one with `--fail-fast`) or an upload
//! failed, 3 if the connection was lost, 141 if standard output was closed
//! (as `client | head -1` does: the client stops quietly). At end of input
//! the client waits for its outgoing files first; `QUIT` ends it at once.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, unbounded, Receiver};

use crate::command::{help, Command, CommandError};
use crate::event::{ErrorCode, Reply};
use crate::request::Request;

use super::display::{event_line, reply_line};
use super::{json, Client, ClientError, ClientEvent};

/// The longest a command waits, in all, for `RATE_LIMITED` to pass.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);

/// The client's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every command succeeded.
    Ok = 0,
    /// Some command got an `ERR`, or an upload failed.
    Failed = 1,
    /// The command line was wrong (clap's code too).
    Usage = 2,
    /// The connection could not be made or was lost.
    Connection = 3,
    /// Standard output was closed: nobody reads what follows.
    OutputClosed = 141,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// How scripted mode behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptOptions {
    /// One JSON object per reply and event instead of text lines.
    pub json: bool,
    /// Stop at the first `ERR`.
    pub fail_fast: bool,
}

/// Where replies and events go. A failed write means standard output was
/// closed: the script ends with [`Exit::OutputClosed`].
struct Out {
    json: bool,
}

impl Out {
    fn write(&self, line: &str) -> Step {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|_| Exit::OutputClosed)
    }

    fn event(&self, e: &ClientEvent) -> Step {
        if self.json {
            self.write(&json::event(e).to_string())
        } else {
            self.write(&event_line(e))
        }
    }

    fn reply(&self, line: usize, request: &str, r: &Reply) -> Step {
        if self.json {
            self.write(&json::reply(line, request, r).to_string())
        } else {
            self.write(&reply_line(r))
        }
    }

    /// A command the client refused to send.
    fn refused(&self, line: usize, request: &str, e: &CommandError) -> Step {
        let r = local_reply(e);
        if self.json {
            self.write(&json::local_reply(line, request, &r).to_string())
        } else {
            self.write(&reply_line(&r))
        }
    }

    /// A command the client could not carry out (a file it cannot read).
    fn failed(&self, line: usize, request: &str, e: &ClientError) -> Step {
        if self.json {
            self.write(&json::local_failure(line, request, &e.to_string()).to_string())
        } else {
            self.write(&format!("ERR LOCAL {e}"))
        }
    }
}

/// The script's progress.
struct Script<'a> {
    client: &'a Client,
    events: Receiver<ClientEvent>,
    out: Out,
    /// Some command failed.
    failed: bool,
    /// `QUIT` was sent: the connection's end is expected.
    quitting: bool,
    /// Stop at the first failure.
    fail_fast: bool,
}

/// How a step of the script ended it, if it did.
type Step = Result<(), Exit>;

impl Script<'_> {
    /// Prints an event; ends the script if the connection is gone.
    fn print(&mut self, e: &ClientEvent) -> Step {
        if self.quitting && matches!(e, ClientEvent::Disconnected(_)) {
            return Ok(());
        }
        self.out.event(e)?;
        match e {
            ClientEvent::FileSendFailed { .. } => self.failed = true,
            ClientEvent::Disconnected(_) => return Err(Exit::Connection),
            _ => {}
        }
        Ok(())
    }

    /// Prints every event already received.
    fn drain(&mut self) -> Step {
        while let Ok(e) = self.events.try_recv() {
            self.print(&e)?;
        }
        Ok(())
    }

    /// Prints events for `d`.
    fn wait(&mut self, d: Duration) -> Step {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.events.recv_timeout(left) {
                Ok(e) => self.print(&e)?,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Ok(()),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(Exit::Connection)
                }
            }
        }
    }

    /// Waits for outgoing files, still printing events.
    fn finish_transfers(&mut self) -> Step {
        let ticks = tick(Duration::from_millis(20));
        while self.client.transfers_in_progress() > 0 {
            select! {
                recv(self.events) -> e => match e {
                    Ok(e) => self.print(&e)?,
                    Err(_) => return Err(Exit::Connection),
                },
                recv(ticks) -> _ => {}
            }
        }
        Ok(())
    }

    /// Runs one command line.
    fn command(&mut self, n: usize, line: &str) -> Step {
        let request = line.split_whitespace().next().unwrap_or("").to_uppercase();
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                self.out.refused(n, &request, &e)?;
                return self.failure();
            }
        };
        if command == Command::Help {
            return self.out.write(&help());
        }
        let quit = command == Command::Plain(Request::Quit);
        if quit {
            self.finish_transfers()?;
            self.quitting = true;
        }
        let client = self.client;
        let result = client.execute_patiently(&command, MAX_RETRY_WAIT, |d| self.wait(d))?;
        self.drain()?;
        match result {
            Ok(reply) => {
                self.out.reply(n, &request, &reply)?;
                if quit {
                    return Err(self.end());
                }
                if !reply.is_ok() {
                    return self.failure();
                }
                Ok(())
            }
            Err(ClientError::Disconnected(_)) if quit => Err(self.end()),
            Err(ClientError::Disconnected(_)) => {
                // The Disconnected event says why.
                self.wait(Duration::from_secs(5))?;
                Err(Exit::Connection)
            }
            Err(e) => {
                self.out.failed(n, &request, &e)?;
                self.failure()
            }
        }
    }

    fn failure(&mut self) -> Step {
        self.failed = true;
        if self.fail_fast {
            return Err(Exit::Failed);
        }
        Ok(())
    }

    /// The code for a script that ran to its end.
    fn end(&self) -> Exit {
        if self.failed {
            Exit::Failed
        } else {
            Exit::Ok
        }
    }
}

/// Runs a script against a connected client.
pub fn run(client: Client, input: impl BufRead + Send + 'static, opts: ScriptOptions) -> Exit {
    // Standard input is read on its own thread so events print while the
    // script is idle (for example `(printf ...; sleep 2) | client`).
    let (lines_tx, lines) = unbounded();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut s = Script {
        client: &client,
        events: client.events().clone(),
        out: Out { json: opts.json },
        failed: false,
        quitting: false,
        fail_fast: opts.fail_fast,
    };
    let mut n = 0;
    let step = (|| -> Step {
        loop {
            select! {
                recv(s.events) -> e => match e {
                    Ok(e) => s.print(&e)?,
                    Err(_) => return Err(Exit::Connection),
                },
                recv(lines) -> line => {
                    let Ok(line) = line else { break };
                    n += 1;
                    let trimmed = line.trim();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    s.command(n, &line)?;
                }
            }
        }
        // End of input.
        s.finish_transfers()?;
        s.drain()
    })();
    match step {
        Ok(()) => s.end(),
        Err(exit) => exit,
    }
}

/// The reply standing for a typed command the client itself refused.
pub fn local_reply(e: &CommandError) -> Reply {
    let code = match e {
        CommandError::Unknown(_) => ErrorCode::UnknownCommand,
        CommandError::Usage(_) | CommandError::TooLong => ErrorCode::Usage,
        CommandError::BadName(_) => ErrorCode::BadName,
    };
    Reply::err(code, e.to_string())
}
