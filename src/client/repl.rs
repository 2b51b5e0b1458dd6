//! The interactive terminal: a rustyline prompt with history and tab
//! completion of command words. Replies and incoming events print above the
//! prompt through rustyline's external printer, so what the person is typing
//! is redrawn intact underneath. One printer thread prints both, events
//! first, so events that came before a reply (`HISTORY`) print before it.

use std::borrow::Cow;

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, ExternalPrinter as _, Helper};

use crate::command::{help, words, Command};
use crate::request::Request;

use super::display::{event_line, reply_line};
use super::script::local_error;
use super::{Client, ClientError, ClientEvent};

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

/// Runs the interactive prompt; returns the process exit code.
pub fn run(client: Client) -> i32 {
    let mut editor: Editor<Words, DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the terminal editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(Words));
    let mut printer = match editor.create_external_printer() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot print above the prompt: {e}");
            return 1;
        }
    };
    let events = client.events().clone();
    let (replies, reply_lines) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || loop {
        let (line, last) = crossbeam_channel::select_biased! {
            recv(events) -> e => match e {
                Ok(e) => (event_line(&e), matches!(e, ClientEvent::Disconnected(_))),
                Err(_) => return,
            },
            recv(reply_lines) -> r => match r {
                Ok(line) => (line, false),
                Err(_) => return,
            },
        };
        // Outside raw mode (while a command runs) rustyline writes the text
        // as is, so the line needs its own newline.
        if printer.print(format!("{line}\n")).is_err() || last {
            return;
        }
    });
    let say = |line: String| {
        let _ = replies.send(line);
    };
    println!("connected; type HELP for commands, Ctrl-D to quit");
    loop {
        let line = match editor.readline("muchat> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("terminal error: {e}");
                return 1;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        let command = match Command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                say(local_error(&e));
                continue;
            }
        };
        if command == Command::Help {
            say(help());
            continue;
        }
        match client.execute(&command) {
            Ok(reply) => say(reply_line(&reply)),
            Err(e @ ClientError::Disconnected(_)) => {
                println!("{e}");
                return 1;
            }
            Err(e) => say(format!("ERR LOCAL {e}")),
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
    0
}
