//! Scripted mode: commands from a pipe or file, one per line.
//!
//! Each command's reply is awaited (and printed) before the next is sent;
//! events print as they arrive, all in the [`super::display`] line format,
//! and events that arrived before a reply (such as `HISTORY`'s messages)
//! print before it. At end of input the client waits for its outgoing file
//! transfers, then exits 0; it exits 1 if the connection is lost first.
//! Blank lines and lines starting with `#` are skipped.

use std::io::BufRead;
use std::time::Duration;

use crossbeam_channel::{select, tick, unbounded};

use crate::command::{help, Command, CommandError};
use crate::event::{ErrorCode, Reply};
use crate::request::Request;

use super::display::{event_line, reply_line};
use super::{Client, ClientError, ClientEvent};

/// Runs a script against a connected client; returns the process exit code.
pub fn run(client: Client, input: impl BufRead + Send + 'static) -> i32 {
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
    let events = client.events().clone();
    let print = |e: &ClientEvent| -> bool {
        println!("{}", event_line(e));
        !matches!(e, ClientEvent::Disconnected(_))
    };
    // Prints every event already received; false once disconnected.
    let drain = || events.try_iter().all(|e| print(&e));
    // Waits for outgoing files, still printing events; false if disconnected.
    let finish_transfers = || {
        let ticks = tick(Duration::from_millis(20));
        while client.transfers_in_progress() > 0 {
            select! {
                recv(events) -> e => match e {
                    Ok(e) if print(&e) => {}
                    _ => return false,
                },
                recv(ticks) -> _ => {}
            }
        }
        true
    };

    loop {
        select! {
            recv(events) -> e => match e {
                Ok(e) if print(&e) => {}
                _ => return 1,
            },
            recv(lines) -> line => {
                let Ok(line) = line else { break };
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let command = match Command::parse(&line) {
                    Ok(c) => c,
                    Err(e) => {
                        println!("{}", local_error(&e));
                        continue;
                    }
                };
                if command == Command::Help {
                    println!("{}", help());
                    continue;
                }
                let quit = command == Command::Plain(Request::Quit);
                if quit && !finish_transfers() {
                    return 1;
                }
                let result = client.execute(&command);
                if !drain() {
                    return 1;
                }
                match result {
                    Ok(reply) => println!("{}", reply_line(&reply)),
                    Err(ClientError::Disconnected(_)) => {
                        // The Disconnected event says why.
                        let _ = events.recv_timeout(Duration::from_secs(5)).map(|e| print(&e));
                        return 1;
                    }
                    Err(e) => println!("ERR LOCAL {e}"),
                }
                if quit {
                    return 0;
                }
            }
        }
    }
    // End of input.
    if finish_transfers() && drain() {
        0
    } else {
        1
    }
}

/// The line printed for a typed command the client itself refused.
pub fn local_error(e: &CommandError) -> String {
    let code = match e {
        CommandError::Unknown(_) => ErrorCode::UnknownCommand,
        CommandError::Usage(_) | CommandError::TooLong => ErrorCode::Usage,
        CommandError::BadName(_) => ErrorCode::BadName,
    };
    reply_line(&Reply::err(code, e.to_string()))
}
