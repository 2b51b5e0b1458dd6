//! Scripted mode: commands from a pipe or file, one per line.
//!
//! Each command's reply is awaited (and printed) before the next is sent;
//! events print as they arrive, all in the [`super::display`] line format.
//! At end of input the client waits for its outgoing file transfers, then
//! exits 0; it exits 1 if the connection is lost first.
//! Blank lines and lines starting with `#` are skipped.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, HELP};
use crate::event::Reply;

use super::display::{event_line, reply_line};
use super::{Client, ClientError, ClientEvent};

/// Runs a script against a connected client; returns the process exit code.
pub fn run(client: Client, input: impl BufRead) -> i32 {
    let finishing = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let printer = {
        let events = client.events().clone();
        let (finishing, lost) = (Arc::clone(&finishing), Arc::clone(&lost));
        std::thread::spawn(move || {
            for e in events.iter() {
                if let ClientEvent::Disconnected(_) = e {
                    if !finishing.load(Ordering::SeqCst) {
                        lost.store(true, Ordering::SeqCst);
                        println!("{}", event_line(&e));
                    }
                    return;
                }
                println!("{}", event_line(&e));
            }
        })
    };

    for line in input.lines() {
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
            println!("{HELP}");
            continue;
        }
        match client.execute(&command) {
            Ok(reply) => println!("{}", reply_line(&reply)),
            Err(ClientError::Disconnected(_)) => break,
            Err(e) => println!("ERR LOCAL {e}"),
        }
        if matches!(command, Command::Plain(crate::request::Request::Quit)) {
            break;
        }
    }

    while client.transfers_in_progress() > 0 && !lost.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    finishing.store(true, Ordering::SeqCst);
    client.close();
    let _ = printer.join();
    i32::from(lost.load(Ordering::SeqCst))
}

/// The line printed for a typed command the client itself refused.
pub fn local_error(e: &crate::command::CommandError) -> String {
    use crate::command::CommandError;
    use crate::event::ErrorCode;
    let code = match e {
        CommandError::Unknown(_) => ErrorCode::UnknownCommand,
        CommandError::Usage(_) | CommandError::TooLong => ErrorCode::Usage,
        CommandError::BadName(_) => ErrorCode::BadName,
    };
    reply_line(&Reply::Err(code, e.to_string()))
}
