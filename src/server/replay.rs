//! Stored messages back onto the wire: pending deliveries at login, and
//! answers to `HISTORY`.
//!
//! A stored message becomes the same `MSG`/`FILE` frames a live delivery
//! uses (so the client handles both alike and drops duplicates by id), or
//! `HIST`/`HIST_FILE` frames for history, which are not acknowledged.

use std::sync::Arc;

use crate::event::{Delivery, FileStart, ServerMessage};
use crate::log;
use crate::names::Username;
use crate::store::{Content, StoredMessage};

use super::outbox::{Outbox, OutboxError, Outgoing};
use super::state::SessionId;
use super::Shared;

/// File chunks read from the store at a time.
const CHUNK_PAGE: usize = 16;

/// The frame announcing a stored message: `MSG`/`FILE` for a delivery,
/// `HIST`/`HIST_FILE` for history.
pub(super) fn announce(m: &StoredMessage, history: bool) -> ServerMessage {
    match &m.content {
        Content::Text { key, body } => {
            let d = Delivery {
                id: m.id,
                at_ms: m.at_ms,
                from: m.from.clone(),
                to: m.to.clone(),
                key: key.clone(),
                body: body.clone(),
            };
            if history {
                ServerMessage::History(d)
            } else {
                ServerMessage::Msg(d)
            }
        }
        Content::File { size, sha256, name } => {
            let f = FileStart {
                id: m.id,
                at_ms: m.at_ms,
                from: m.from.clone(),
                to: m.to.clone(),
                size: *size,
                sha256: *sha256,
                name: name.clone(),
            };
            if history {
                ServerMessage::HistoryFile(f)
            } else {
                ServerMessage::File(f)
            }
        }
    }
}

/// Starts delivering `user`'s pending messages and files to a session that
/// just logged in, oldest first, in a thread of its own so a large backlog
/// never holds up the session's commands. Everything goes through the
/// bulk queue, which paces the replay to the client's reading.
///
/// The replay stops as soon as the session is no longer logged in as
/// `user`: its acknowledgements would no longer count.
pub(super) fn deliver_pending(
    shared: Arc<Shared>,
    user: Username,
    session: SessionId,
    outbox: Outbox,
) {
    let spawned = std::thread::Builder::new()
        .name("replay".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || {
            if let Err(why) = replay(&shared, &user, session, &outbox) {
                log!("pending delivery to {user} stopped: {why}");
            }
        });
    if let Err(e) = spawned {
        log!("cannot start pending delivery: {e}");
    }
}

fn replay(
    shared: &Shared,
    user: &Username,
    session: SessionId,
    outbox: &Outbox,
) -> Result<(), String> {
    let still_here = || shared.state().is_online_as(user, session);
    let pending = shared.store.pending(user).map_err(|e| e.to_string())?;
    let gone = |e: OutboxError| format!("{e:?}");
    for m in &pending {
        if !still_here() {
            return Ok(());
        }
        outbox
            .send_bulk(Outgoing::from(&announce(m, false)))
            .map_err(gone)?;
        if let Content::File { size, .. } = m.content {
            let mut from = 0;
            while from < size {
                let page = shared
                    .store
                    .chunks(m.id, from, CHUNK_PAGE)
                    .map_err(|e| e.to_string())?;
                let Some(last) = page.last() else { break };
                from = last.offset + 1;
                for c in page {
                    let chunk = ServerMessage::Chunk {
                        id: m.id,
                        offset: c.offset,
                        key: c.key,
                        body: c.body,
                    };
                    outbox.send_bulk(Outgoing::from(&chunk)).map_err(gone)?;
                }
            }
            outbox
                .send_bulk(Outgoing::from(&ServerMessage::FileEnd(m.id)))
                .map_err(gone)?;
        }
    }
    Ok(())
}
