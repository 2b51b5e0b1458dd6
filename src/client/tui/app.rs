//! The full-screen client's state and what keys and events do to it: no
//! terminal here, so all of it is tested directly.
//!
//! Conversations are panes: `server` (replies and notices) and one per
//! group (`#ops`) or person (`@bob`), made when the first message arrives
//! or you join or write to one. A line typed into a pane is sent to its
//! conversation; a line starting with `/` or with a command word in
//! capitals (`LIST`, `SEND FILE bob x`) is a command, as at the prompt.

use std::collections::BTreeMap;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::command::{words, Command};
use crate::event::Reply;
use crate::names::Conversation;
use crate::request::Request;

use super::super::chat::Chat;
use super::super::progress::Progress;
use super::super::ClientEvent;

/// The pane for replies and notices.
pub const SERVER_PANE: &str = "server";

/// Lines kept per conversation.
const SCROLLBACK: usize = 2000;

/// One conversation's pane.
#[derive(Debug, Clone)]
pub struct Pane {
    /// `server`, `#group` or `@user`.
    pub name: String,
    /// What was said, oldest first.
    pub lines: Vec<String>,
    /// Lines that came while another pane was shown.
    pub unread: usize,
    /// Lines scrolled back from the newest.
    pub scroll: usize,
}

/// What the run loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command on the client.
    Run(Command),
    /// Leave.
    Quit,
}

/// The whole screen's state.
#[derive(Debug)]
pub struct App {
    /// The server as given.
    pub server: String,
    /// Its pinned key fingerprint.
    pub fingerprint: String,
    /// The connection is up.
    pub online: bool,
    /// The panes, `server` first.
    pub panes: Vec<Pane>,
    /// The pane shown.
    pub selected: usize,
    /// The line being typed.
    pub input: String,
    /// The cursor, in characters into `input`.
    pub cursor: usize,
    /// Lines typed before (never one with a password).
    history: Vec<String>,
    /// Where Up/Down is in the history.
    history_at: Option<usize>,
    /// Transfers in progress: label and progress, by transfer.
    pub transfers: BTreeMap<String, (String, Progress)>,
    /// The key help is shown.
    pub help: bool,
    /// A command waiting for its password (typed hidden).
    pub secret: Option<Command>,
    /// A first Ctrl-C on an empty line: the next one quits.
    interrupted: bool,
    /// How lines are written (the prompt's rules, one pane each).
    pub chat: Chat,
}

impl App {
    /// A screen for `server`.
    pub fn new(server: &str, fingerprint: &str) -> App {
        App {
            server: server.to_string(),
            fingerprint: fingerprint.to_string(),
            online: true,
            panes: vec![Pane {
                name: SERVER_PANE.to_string(),
                lines: vec![format!(
                    "-- connected to {server}; type HELP for commands, ? for keys"
                )],
                unread: 0,
                scroll: 0,
            }],
            selected: 0,
            input: String::new(),
            cursor: 0,
            history: Vec::new(),
            history_at: None,
            transfers: BTreeMap::new(),
            help: false,
            secret: None,
            interrupted: false,
            chat: Chat {
                pane: true,
                ..Chat::default()
            },
        }
    }

    /// The pane named `name`, made if new.
    fn pane(&mut self, name: &str) -> usize {
        if let Some(i) = self.panes.iter().position(|p| p.name == name) {
            return i;
        }
        self.panes.push(Pane {
            name: name.to_string(),
            lines: Vec::new(),
            unread: 0,
            scroll: 0,
        });
        self.panes.len() - 1
    }

    /// Adds a line to a pane (counted unread if another is shown).
    pub fn say(&mut self, pane: &str, line: String) {
        let i = self.pane(pane);
        let p = &mut self.panes[i];
        p.lines.push(line);
        if p.lines.len() > SCROLLBACK {
            p.lines.drain(..p.lines.len() - SCROLLBACK);
        }
        if i != self.selected {
            p.unread += 1;
        } else if p.scroll > 0 {
            // Keep the view where the reader left it.
            p.scroll += 1;
        }
    }

    /// Shows pane `i`.
    pub fn select(&mut self, i: usize) {
        if i < self.panes.len() {
            self.selected = i;
            self.panes[i].unread = 0;
        }
    }

    fn selected_name(&self) -> String {
        self.panes[self.selected].name.clone()
    }

    /// Something arrived from the client.
    pub fn event(&mut self, e: &ClientEvent) {
        let line = self.chat.event(e);
        match e {
            ClientEvent::Message { at, .. }
            | ClientEvent::HistoryFile { at, .. }
            | ClientEvent::BadMessage { at, .. } => self.say(&at.conv.to_string(), line),
            ClientEvent::FileReceived { at, .. } | ClientEvent::FileFailed { at, .. } => {
                self.transfers.remove(&format!("in {at}"));
                self.say(&at.conv.to_string(), line);
            }
            ClientEvent::FileProgress { at, name, progress } => {
                let label = format!("{name} from {}", at.conv);
                self.transfers
                    .insert(format!("in {at}"), (label, *progress));
            }
            ClientEvent::UploadProgress { id, path, progress } => {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                self.transfers.insert(
                    format!("out {id}"),
                    (format!("{name} (sending)"), *progress),
                );
            }
            ClientEvent::FileSent { id, reply, .. } => {
                self.transfers.remove(&format!("out {id}"));
                let pane = reply
                    .sent()
                    .first()
                    .map_or(SERVER_PANE.to_string(), |r| r.conv.to_string());
                self.say(&pane, line);
            }
            ClientEvent::FileSendFailed { id, .. } => {
                self.transfers.remove(&format!("out {id}"));
                let pane = self.selected_name();
                self.say(&pane, line);
            }
            ClientEvent::ConnectionLost { .. } => {
                self.online = false;
                self.say(SERVER_PANE, line);
            }
            ClientEvent::Reconnected => {
                self.online = true;
                self.say(SERVER_PANE, line);
            }
            ClientEvent::Disconnected(_) => {
                self.online = false;
                self.say(SERVER_PANE, line);
            }
            ClientEvent::Notice(_) => self.say(SERVER_PANE, line),
        }
    }

    /// A command's reply arrived.
    pub fn reply(&mut self, command: &Command, result: Result<Reply, String>) {
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                let (pane, line) = (self.selected_name(), self.chat.alert(&e));
                return self.say(&pane, line);
            }
        };
        let now = crate::clock::now_ms();
        if reply.is_ok() {
            match command {
                Command::Plain(Request::Login { username, .. }) => {
                    self.chat.me = Some(username.clone())
                }
                Command::Plain(Request::Logout) => self.chat.me = None,
                Command::Plain(Request::Join(g) | Request::CreateGroup { group: g, .. }) => {
                    let i = self.pane(&format!("#{g}"));
                    self.select(i);
                }
                Command::Send { to, text } => {
                    let line = self.chat.sent(now, "", reply.sent(), text);
                    return self.say(&format!("@{to}"), line);
                }
                Command::SendToGroup { groups, text } => {
                    let line = self.chat.sent(now, "", reply.sent(), text);
                    for g in groups {
                        self.say(&format!("#{g}"), line.clone());
                    }
                    return;
                }
                _ => {}
            }
        }
        let (pane, line) = (self.selected_name(), self.chat.reply(&reply));
        self.say(&pane, line);
    }

    /// A key was pressed: maybe something to run.
    pub fn key(&mut self, k: KeyEvent) -> Option<Action> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if !(ctrl && k.code == KeyCode::Char('c')) {
            self.interrupted = false;
        }
        if self.help {
            // Any key closes the help.
            self.help = false;
            return None;
        }
        match k.code {
            // Clears the line; a second one in a row quits.
            KeyCode::Char('c') if ctrl => {
                if self.interrupted {
                    return Some(Action::Quit);
                }
                self.interrupted = true;
                self.clear_input();
                self.secret = None;
            }
            KeyCode::Char('d') if ctrl && self.input.is_empty() => return Some(Action::Quit),
            KeyCode::Char('n') if ctrl => self.select((self.selected + 1) % self.panes.len()),
            KeyCode::Char('p') if ctrl => {
                self.select((self.selected + self.panes.len() - 1) % self.panes.len())
            }
            KeyCode::Char('?') if self.input.is_empty() && self.secret.is_none() => {
                self.help = true
            }
            KeyCode::Char(c) if !ctrl => {
                let at = self.byte_at(self.cursor);
                self.input.insert(at, c);
                self.cursor += 1;
            }
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                let at = self.byte_at(self.cursor);
                self.input.remove(at);
            }
            KeyCode::Delete if self.cursor < self.input.chars().count() => {
                let at = self.byte_at(self.cursor);
                self.input.remove(at);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.input.chars().count(),
            KeyCode::Up if self.secret.is_none() => self.recall(-1),
            KeyCode::Down if self.secret.is_none() => self.recall(1),
            KeyCode::PageUp => {
                let p = &mut self.panes[self.selected];
                p.scroll = (p.scroll + 10).min(p.lines.len().saturating_sub(1));
            }
            KeyCode::PageDown => {
                let p = &mut self.panes[self.selected];
                p.scroll = p.scroll.saturating_sub(10);
            }
            KeyCode::Tab => self.complete(),
            KeyCode::Enter => return self.enter(),
            _ => {}
        }
        None
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input
            .char_indices()
            .nth(chars)
            .map_or(self.input.len(), |(i, _)| i)
    }

    fn clear_input(&mut self) {
        self.input.clear();
        self.cursor = 0;
        self.history_at = None;
    }

    fn set_input(&mut self, s: String) {
        self.cursor = s.chars().count();
        self.input = s;
    }

    fn recall(&mut self, step: isize) {
        if self.history.is_empty() {
            return;
        }
        let last = self.history.len() as isize - 1;
        let at = match self.history_at {
            None if step < 0 => last,
            None => return,
            Some(i) => i as isize + step,
        };
        if at > last {
            self.history_at = None;
            return self.set_input(String::new());
        }
        let at = at.max(0) as usize;
        self.history_at = Some(at);
        self.set_input(self.history[at].clone());
    }

    /// Completes the word before the cursor: a command word first, then
    /// the names of conversations (`#group`, `@user`).
    fn complete(&mut self) {
        let at = self.byte_at(self.cursor);
        let before = &self.input[..at];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return;
        }
        let names = self.panes.iter().skip(1).map(|p| p.name.clone());
        let candidates: Vec<String> = if start == 0 {
            words().into_iter().map(String::from).collect()
        } else {
            names.collect()
        };
        let upper = word.to_ascii_uppercase();
        let hit = candidates.into_iter().find(|c| {
            c.to_ascii_uppercase().starts_with(&upper)
                || c.get(1..)
                    .is_some_and(|bare| bare.to_ascii_uppercase().starts_with(&upper))
        });
        if let Some(hit) = hit {
            let rest = self.input[at..].to_string();
            let line = format!("{}{hit} {rest}", &self.input[..start]);
            self.input = line;
            self.cursor = self.input[..start].chars().count() + hit.chars().count() + 1;
        }
    }

    /// Enter: a command, a line for the shown conversation, or a password.
    fn enter(&mut self) -> Option<Action> {
        let line = std::mem::take(&mut self.input);
        self.cursor = 0;
        self.history_at = None;
        if let Some(waiting) = self.secret.take() {
            return match crate::command::password(&line) {
                Some(pw) => Some(Action::Run(waiting.with_password(pw))),
                None => {
                    let text = self
                        .chat
                        .alert("a password is 1 to 255 bytes without spaces; nothing sent");
                    self.say(SERVER_PANE, text);
                    None
                }
            };
        }
        if line.trim().is_empty() {
            return None;
        }
        let command = if is_command(&line) {
            Command::parse(&line)
        } else {
            self.text_for_pane(&line)
        };
        let keep = !matches!(&command, Ok(c) if c.has_password());
        if keep {
            self.history.push(line.clone());
        }
        match command {
            Ok(Command::Help) => {
                for l in crate::command::help().lines() {
                    self.say(SERVER_PANE, l.to_string());
                }
                self.select(0);
                None
            }
            Ok(Command::Plain(Request::Quit)) => Some(Action::Quit),
            Ok(c @ Command::NeedsPassword { .. }) => {
                self.secret = Some(c);
                None
            }
            Ok(c) => {
                if let Command::Record { secs, .. } = &c {
                    let note = self
                        .chat
                        .note(&format!("recording {secs} s from the microphone..."));
                    let pane = self.selected_name();
                    self.say(&pane, note);
                }
                // Writing to someone opens (and shows) their pane.
                if let Command::Send { to, .. } = &c {
                    let i = self.pane(&format!("@{to}"));
                    self.select(i);
                }
                Some(Action::Run(c))
            }
            Err(e) => {
                let (pane, text) = (self.selected_name(), self.chat.alert(&e.to_string()));
                self.say(&pane, text);
                None
            }
        }
    }

    /// Plain text for the conversation shown.
    fn text_for_pane(&self, text: &str) -> Result<Command, crate::command::CommandError> {
        let name = &self.panes[self.selected].name;
        match Conversation::parse(name).ok() {
            Some(Conversation::Group(g)) => Ok(Command::SendToGroup {
                groups: vec![g],
                text: text.to_string(),
            }),
            Some(Conversation::User(u)) => Ok(Command::Send {
                to: u,
                text: text.to_string(),
            }),
            None => Err(crate::command::CommandError::Usage(
                "pick a conversation (Ctrl-N/Ctrl-P), or type a command (HELP)",
            )),
        }
    }
}

/// Whether a typed line is a command rather than text for the pane: it
/// starts with `/`, or with a command word written in capitals.
pub fn is_command(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    first.starts_with('/') || (first == first.to_ascii_uppercase() && words().contains(&first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::testing::message;
    use crate::names::GroupName;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn type_line(app: &mut App, s: &str) -> Option<Action> {
        for c in s.chars() {
            assert_eq!(app.key(key(KeyCode::Char(c))), None);
        }
        app.key(key(KeyCode::Enter))
    }

    #[test]
    fn messages_go_to_their_conversation_and_count_unread() {
        let mut app = App::new("h:1", "SHA256:x");
        app.event(&message("#ops:1", "bob", "hi"));
        app.event(&message("@carol:1", "carol", "psst"));
        app.event(&message("#ops:2", "bob", "again"));
        let ops = app.panes.iter().find(|p| p.name == "#ops").unwrap();
        assert_eq!(ops.unread, 2);
        assert!(ops.lines[0].ends_with("<bob> hi"), "{:?}", ops.lines);
        // The pane does not repeat its conversation on each line.
        assert!(!ops.lines[0].contains("#ops"));
        let i = app.panes.iter().position(|p| p.name == "@carol").unwrap();
        app.select(i);
        assert_eq!(app.panes[i].unread, 0);
    }

    #[test]
    fn text_goes_to_the_shown_conversation_and_commands_run() {
        let mut app = App::new("h:1", "SHA256:x");
        // The server pane takes no text.
        assert_eq!(type_line(&mut app, "hello"), None);
        app.event(&message("#ops:1", "bob", "hi"));
        app.select(1);
        assert_eq!(
            type_line(&mut app, "hello all"),
            Some(Action::Run(Command::SendToGroup {
                groups: vec![GroupName::parse("ops").unwrap()],
                text: "hello all".into()
            }))
        );
        // A command word in capitals, or a slash: a command.
        assert_eq!(
            type_line(&mut app, "LIST"),
            Some(Action::Run(Command::Plain(Request::List)))
        );
        assert!(matches!(
            type_line(&mut app, "/msg @dave yo"),
            Some(Action::Run(Command::Send { .. }))
        ));
        assert_eq!(app.panes[app.selected].name, "@dave");
        // Lower case is text.
        assert!(matches!(
            type_line(&mut app, "list of things"),
            Some(Action::Run(Command::Send { .. }))
        ));
    }

    #[test]
    fn passwords_are_asked_for_and_kept_out_of_history() {
        let mut app = App::new("h:1", "SHA256:x");
        assert_eq!(type_line(&mut app, "LOGIN alice"), None);
        assert!(app.secret.is_some());
        let run = type_line(&mut app, "pw1");
        assert!(matches!(
            run,
            Some(Action::Run(Command::Plain(Request::Login { ref password, .. }))) if password == "pw1"
        ));
        assert!(matches!(
            type_line(&mut app, "LOGIN bob pw2"),
            Some(Action::Run(_))
        ));
        app.key(key(KeyCode::Up));
        assert_eq!(app.input, "LOGIN alice");
    }

    #[test]
    fn ctrl_c_clears_then_quits_and_question_mark_shows_help() {
        let mut app = App::new("h:1", "SHA256:x");
        app.key(key(KeyCode::Char('x')));
        assert_eq!(app.key(ctrl('c')), None);
        assert_eq!(app.input, "");
        // Another key in between: not in a row.
        app.key(key(KeyCode::Left));
        assert_eq!(app.key(ctrl('c')), None);
        assert_eq!(app.key(ctrl('c')), Some(Action::Quit));
        let mut app = App::new("h:1", "SHA256:x");
        app.key(key(KeyCode::Char('?')));
        assert!(app.help);
        app.key(key(KeyCode::Esc));
        assert!(!app.help);
    }

    #[test]
    fn tab_completes_commands_and_conversations() {
        let mut app = App::new("h:1", "SHA256:x");
        app.event(&message("#ops:1", "bob", "hi"));
        for c in "SEND_TO_G".chars() {
            app.key(key(KeyCode::Char(c)));
        }
        app.key(key(KeyCode::Tab));
        assert_eq!(app.input, "SEND_TO_GROUP ");
        for c in "op".chars() {
            app.key(key(KeyCode::Char(c)));
        }
        app.key(key(KeyCode::Tab));
        assert_eq!(app.input, "SEND_TO_GROUP #ops ");
    }
}
