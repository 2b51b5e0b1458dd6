//! `client --tui`: the full-screen terminal client (ratatui over
//! crossterm), on the same [`Client`] as the prompt and the same line
//! rules ([`super::chat`]).
//!
//! The state and its keys are in [`app`], the drawing in [`view`]; this
//! loop only moves things between them: terminal keys -> [`App::key`] ->
//! commands run on a worker thread (a reply can take a while, and the
//! screen must not freeze) -> [`App::reply`]; client events ->
//! [`App::event`]; and a redraw after each.

pub mod app;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::command::Command;
use crate::event::Reply;

use super::script::{Exit, MAX_RETRY_WAIT};
use super::{Client, ClientError};
use app::{Action, App};

/// Runs the full-screen client until the person quits.
pub fn run(client: Client, server: &str, fingerprint: &str) -> Exit {
    let mut app = App::new(server, fingerprint);
    if let Some(note) = client.first_use_note() {
        app.say(app::SERVER_PANE, format!("-- {note}"));
    }
    let client = std::sync::Arc::new(client);
    let (commands, results) = worker(&client);
    let events = client.events().clone();
    let mut terminal = ratatui::init();
    let exit = loop {
        if let Err(e) = terminal.draw(|f| view::draw(f, &app)) {
            ratatui::restore();
            eprintln!("cannot draw: {e}");
            return Exit::Usage;
        }
        // Whatever came from the server or the worker first.
        while let Ok(e) = events.try_recv() {
            app.event(&e);
        }
        while let Ok((command, result)) = results.try_recv() {
            if let Err(ClientError::Disconnected(why)) = &result {
                let line = app.chat.alert(&format!("disconnected: {why}"));
                app.say(app::SERVER_PANE, line);
            }
            app.reply(&command, result.map_err(|e| e.to_string()));
        }
        match event::poll(Duration::from_millis(50)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break Exit::Usage,
        }
        let key = match event::read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => k,
            Ok(_) => continue,
            Err(_) => break Exit::Usage,
        };
        match app.key(key) {
            Some(Action::Run(c)) => {
                let _ = commands.send(c);
            }
            Some(Action::Quit) => break Exit::Ok,
            None => {}
        }
    };
    ratatui::restore();
    drop(commands);
    if client.transfers_in_progress() > 0 {
        println!("waiting for outgoing files to finish...");
        while client.transfers_in_progress() > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    exit
}

type Done = (Command, Result<Reply, ClientError>);

/// A thread that runs commands one at a time, in order, waiting out
/// `RATE_LIMITED` as the prompt does.
fn worker(client: &Arc<Client>) -> (crossbeam_channel::Sender<Command>, Receiver<Done>) {
    let (tx, rx) = unbounded::<Command>();
    let (done_tx, done) = unbounded::<Done>();
    let client = Arc::clone(client);
    std::thread::spawn(move || {
        for c in rx {
            let result = client.execute_patiently(&c, MAX_RETRY_WAIT, |wait| {
                std::thread::sleep(wait);
                Ok::<(), std::convert::Infallible>(())
            });
            let Ok(result) = result;
            if done_tx.send((c, result)).is_err() {
                return;
            }
        }
    });
    (tx, done)
}
