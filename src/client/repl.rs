//! The interactive terminal: a rustyline prompt with history and tab
//! completion of command words. Replies and incoming events print above the
//! prompt through rustyline's external printer, so what the person is typing
//! is redrawn intact underneath, in the chat form of [`super::chat`]. One
//! printer thread prints both, events first, so events that came before a
//! reply (`HISTORY`) print before it.
//!
//! Passwords: `LOGIN alice` and `CREATE_USER name alice` ask for the
//! password without echo, and a line holding a password never enters the
//! history. Ctrl-C clears the line; a second Ctrl-C in a row, or Ctrl-D,
//! quits. `RATE_LIMITED` is waited out and the command sent again. The
//! prompt says who is logged in and whether the connection is up (the
//! client reconnects by itself and logs back in with its device token).

use std::borrow::Cow;

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter as _, Helper};

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::command::{help, words, Command};
use crate::request::Request;

use super::chat::{wrap, Chat};
use super::script::{local_reply, Exit, MAX_RETRY_WAIT};
use super::{lock, Client, ClientError, ClientEvent};

/// Completes command words (and `FILE` after `SEND`/`SEND_TO_GROUP`).
struct Words;

impl Completer for Words {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        let index = before[..start].split_whitespace().count();
        let first = before
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let candidates: Vec<String> = match index {
            0 => words().iter().map(|w| w.to_string()).collect(),
            1 if first == "SEND" || first == "SEND_TO_GROUP" => vec!["FILE".to_string()],
            _ => Vec::new(),
        };
        let upper = word.to_ascii_uppercase();
        let matches = candidates
            .into_iter()
            .filter(|c| c.starts_with(&upper))
            .map(|c| format!("{c} "))
            .collect();
        Ok((start, matches))
    }
}

impl Hinter for Words {
    type Hint = String;
}

impl Highlighter for Words {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for Words {}

impl Helper for Words {}

/// Runs the interactive prompt until the person quits.
///
/// `server` is shown in the prompt; `verbose` starts with message ids
/// shown (`/ids` toggles them).
pub fn run(client: Client, server: &str, verbose: bool) -> Exit {
    let mut editor: Editor<Words, DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the terminal editor: {e}");
            return Exit::Usage;
        }
    };
    editor.set_helper(Some(Words));
    let mut printer = match editor.create_external_printer() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot print above the prompt: {e}");
            return Exit::Usage;
        }
    };
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let chat = Arc::new(Mutex::new(Chat {
        me: None,
        ids: verbose,
        color,
        pane: false,
    }));
    let online = Arc::new(AtomicBool::new(true));
    let events = client.events().clone();
    let (replies, reply_lines) = crossbeam_channel::unbounded::<String>();
    {
        let (chat, online) = (Arc::clone(&chat), Arc::clone(&online));
        std::thread::spawn(move || loop {
            let (line, last) = crossbeam_channel::select_biased! {
                recv(events) -> e => match e {
                    Ok(e) => {
                        match e {
                            ClientEvent::ConnectionLost { .. } => online.store(false, Ordering::SeqCst),
                            ClientEvent::Reconnected => online.store(true, Ordering::SeqCst),
                            _ => {}
                        }
                        (lock(&chat).event(&e), matches!(e, ClientEvent::Disconnected(_)))
                    }
                    Err(_) => return,
                },
                recv(reply_lines) -> r => match r {
                    Ok(line) => (line, false),
                    Err(_) => return,
                },
            };
            let line = wrap(&line, textwrap::termwidth());
            // Outside raw mode (while a command runs) rustyline writes the
            // text as is, so the line needs its own newline.
            if printer.print(format!("{line}\n")).is_err() || last {
                return;
            }
        });
    }
    let say = |line: String| {
        let _ = replies.send(line);
    };
    println!("connected to {server}; type HELP for commands, Ctrl-D to quit");
    let mut interrupted = false;
    loop {
        let prompt = {
            let who = lock(&chat)
                .me
                .as_ref()
                .map_or("muchat".to_string(), ToString::to_string);
            if online.load(Ordering::SeqCst) {
                format!("{who}> ")
            } else {
                format!("{who} (offline)> ")
            }
        };
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            // The line is cleared; a second Ctrl-C in a row quits.
            Err(ReadlineError::Interrupted) if !interrupted => {
                interrupted = true;
                continue;
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("terminal error: {e}");
                return Exit::Usage;
            }
        };
        interrupted = false;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = Command::parse(&line);
        if !holds_password(&line, parsed.as_ref().ok()) {
            let _ = editor.add_history_entry(line.as_str());
        }
        let command = match parsed {
            Ok(c) => c,
            Err(_) if line.trim().eq_ignore_ascii_case("/ids") => {
                let mut c = lock(&chat);
                c.ids = !c.ids;
                say(format!(
                    "-- message ids {}",
                    if c.ids { "shown" } else { "hidden" }
                ));
                continue;
            }
            Err(e) => {
                say(lock(&chat).reply(&local_reply(&e)));
                continue;
            }
        };
        let command = match command {
            Command::Help => {
                say(help());
                continue;
            }
            c @ Command::NeedsPassword { .. } => match ask_password(&c) {
                Some(pw) => c.with_password(pw),
                None => continue,
            },
            c => c,
        };
        // While the connection is down a command would wait for it
        // (sends are kept and go when it is back); at the prompt, say so
        // instead of blocking it.
        if !online.load(Ordering::SeqCst) {
            if command == Command::Plain(Request::Quit) {
                break;
            }
            say(lock(&chat).alert("not connected; try again once it says reconnected"));
            continue;
        }
        if let Command::Record { secs, .. } = &command {
            say(lock(&chat).note(&format!("recording {secs} s from the microphone...")));
        }
        let result = client.execute_patiently(&command, MAX_RETRY_WAIT, |wait| {
            say(format!(
                "-- the server asks to wait {} s; sending it again then",
                wait.as_secs()
            ));
            std::thread::sleep(wait);
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(result) = result;
        match result {
            Ok(reply) => say(shown(&chat, &command, &reply)),
            Err(e @ ClientError::Disconnected(_)) => {
                println!("{e}");
                return Exit::Connection;
            }
            Err(e) => say(lock(&chat).alert(&e.to_string())),
        }
        if command == Command::Plain(Request::Quit) {
            break;
        }
    }
    if client.transfers_in_progress() > 0 {
        println!("waiting for outgoing files to finish...");
        while client.transfers_in_progress() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Exit::Ok
}

/// What the prompt shows for a command's reply: your message as a chat
/// line once the server has it; for anything else the reply. Logging in
/// and out changes who "you" are.
fn shown(chat: &Mutex<Chat>, command: &Command, reply: &crate::event::Reply) -> String {
    let mut chat = lock(chat);
    if reply.is_ok() {
        match command {
            Command::Plain(Request::Login { username, .. }) => chat.me = Some(username.clone()),
            Command::Plain(Request::Logout) => chat.me = None,
            Command::Send { to, text } => {
                return chat.sent(
                    crate::clock::now_ms(),
                    &format!("@{to}"),
                    reply.sent(),
                    text,
                )
            }
            Command::SendToGroup { groups, text } => {
                let to: Vec<String> = groups.iter().map(|g| format!("#{g}")).collect();
                return chat.sent(crate::clock::now_ms(), &to.join(","), reply.sent(), text);
            }
            _ => {}
        }
    }
    chat.reply(reply)
}

/// Whether a typed line carries a password (and so stays out of the
/// history): a parsed `LOGIN`/`CREATE_USER` with one, or a line starting
/// with either that did not parse (it may hold one all the same).
fn holds_password(line: &str, parsed: Option<&Command>) -> bool {
    match parsed {
        Some(c) => c.has_password(),
        None => {
            let first = line.split_whitespace().next().unwrap_or("");
            first.eq_ignore_ascii_case("LOGIN") || first.eq_ignore_ascii_case("CREATE_USER")
        }
    }
}

/// Asks for a password without echo (twice for a new account); None if
/// the person gave up or the two differ.
fn ask_password(c: &Command) -> Option<String> {
    let Command::NeedsPassword { create, username } = c else {
        return None;
    };
    let pw = rpassword::prompt_password(format!("password for {username}: ")).ok()?;
    let Some(pw) = crate::command::password(&pw) else {
        println!("-- a password is 1 to 255 bytes without spaces; nothing sent");
        return None;
    };
    if create.is_some() {
        let again = rpassword::prompt_password("the same again: ").ok()?;
        if again != pw {
            println!("-- the two passwords differ; nothing sent");
            return None;
        }
    }
    Some(pw)
}
