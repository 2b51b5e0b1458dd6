//! Files being relayed from one connection's client: announced, chunked,
//! ended or aborted.
//!
//! Live recipients get each chunk as it arrives (the very bytes the sender
//! encrypted); the chunks are also written to the store so that recipients
//! who are offline, or drop off mid-transfer, get the file at their next
//! login. The file becomes a stored message, with a pending row per
//! recipient user, only when the sender ends it: a transfer cut short
//! leaves nothing behind.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::clock::now_ms;
use crate::content::{Body, ContentKey};
use crate::event::{ErrorCode, ServerMessage};
use crate::names::{Conversation, Username};
use crate::request::{FileOffer, FileTarget, FILE_CHUNK_SIZE};
use crate::store::{Content, StoredChunk, StoredMessage};
use crate::tdes;

use super::outbox::Outgoing;
use super::replay::announce;
use super::state::{Failure, Online, SessionId};
use super::Shared;

struct Transfer {
    /// The file as it will be stored when complete.
    message: StoredMessage,
    /// Live sessions receiving it now; a session stays one only while it is
    /// logged in as the same user.
    live: Vec<Online>,
    /// Users it is kept for until they acknowledge it.
    keep_for: Vec<Username>,
    /// The offset the next chunk must carry.
    next_offset: u64,
}

impl Transfer {
    fn size(&self) -> u64 {
        match self.message.content {
            Content::File { size, .. } => size,
            Content::Text { .. } => 0,
        }
    }
}

/// One connection's open transfers.
#[derive(Default)]
pub(super) struct Transfers {
    open: HashMap<u64, Transfer>,
    /// Transfers this connection aborted: their in-flight chunks are dropped quietly.
    aborted: HashSet<u64>,
}

impl Transfers {
    /// Accepts a file announcement from `me` on `session`; returns the reply text.
    pub(super) fn offer(
        &mut self,
        shared: &Shared,
        me: &Username,
        session: SessionId,
        offer: FileOffer,
    ) -> Result<String, Failure> {
        let max = shared.config.max_file_size;
        if offer.size > max {
            return Err(Failure(
                ErrorCode::TooLarge,
                format!(
                    "file is {} bytes; this server accepts at most {max}",
                    offer.size
                ),
            ));
        }
        // Each recipient user gets the file once, labelled with the first
        // listed conversation they belong to.
        let labelled: Vec<(Conversation, Vec<Username>)> = match &offer.target {
            FileTarget::User(u) => {
                shared.state().check_user(u)?;
                vec![(Conversation::User(u.clone()), vec![u.clone()])]
            }
            FileTarget::Groups(gs) => shared
                .state()
                .group_members(me, gs)?
                .into_iter()
                .map(|(g, members)| (Conversation::Group(g), members))
                .collect(),
        };
        let mut users = BTreeSet::new();
        let mut keep_for = Vec::new();
        let mut over_quota = Vec::new();
        let mut labels = Vec::new();
        for (to, members) in labelled {
            for u in members {
                if !users.insert(u.clone()) {
                    continue;
                }
                let queued = shared.store.pending_bytes(&u).map_err(storage)?;
                if queued.saturating_add(offer.size) > shared.config.max_pending_bytes {
                    over_quota.push(u.clone());
                } else {
                    keep_for.push(u.clone());
                }
                labels.push((to.clone(), u));
            }
        }
        if let (FileTarget::User(u), [_]) = (&offer.target, over_quota.as_slice()) {
            return Err(Failure(
                ErrorCode::QuotaExceeded,
                format!("{u} has too many undelivered files waiting; try again once they have caught up"),
            ));
        }
        let id = shared.next_id();
        let at_ms = now_ms();
        let content = Content::File {
            size: offer.size,
            sha256: offer.sha256,
            name: offer.name.clone(),
        };
        let mut live = Vec::new();
        let mut seen = HashSet::new();
        let mut message = None;
        for (to, user) in labels {
            let m = StoredMessage {
                id,
                at_ms,
                from: me.clone(),
                to,
                content: content.clone(),
            };
            let start = Outgoing::from(&announce(&m, false));
            for o in shared.state().sessions_of([&user], session) {
                if seen.insert(o.session) && o.outbox.send_bulk(start.clone()).is_ok() {
                    live.push(o);
                }
            }
            // Stored under the first label, as the conversation's history.
            message.get_or_insert(m);
        }
        let message = message.unwrap_or(StoredMessage {
            id,
            at_ms,
            from: me.clone(),
            to: match &offer.target {
                FileTarget::User(u) => Conversation::User(u.clone()),
                FileTarget::Groups(gs) => Conversation::Group(gs[0].clone()),
            },
            content,
        });
        let mut text = format!(
            "{id} sending {} ({} bytes) to {} session{} now, kept for {} user{}",
            offer.name,
            offer.size,
            live.len(),
            plural(live.len()),
            keep_for.len(),
            plural(keep_for.len())
        );
        if !over_quota.is_empty() {
            let names: Vec<&str> = over_quota.iter().map(Username::as_str).collect();
            text.push_str(&format!(
                "; not kept for {} (too much waiting)",
                names.join(", ")
            ));
        }
        self.open.insert(
            id,
            Transfer {
                message,
                live,
                keep_for,
                next_offset: 0,
            },
        );
        Ok(text)
    }

    /// Relays and stores one chunk. Chunks get no reply: a bad one aborts
    /// the transfer, with a `FILE_ABORT` to the sender.
    pub(super) fn chunk(
        &mut self,
        shared: &Shared,
        id: u64,
        offset: u64,
        key: ContentKey,
        body: Body,
    ) -> Option<ServerMessage> {
        if self.aborted.contains(&id) {
            return None;
        }
        let Some(t) = self.open.get_mut(&id) else {
            self.aborted.insert(id);
            return Some(ServerMessage::FileAbort(id, "no such transfer".into()));
        };
        // Chunks are FILE_CHUNK_SIZE bytes, except a shorter last one. The
        // server sees only ciphertext, whose padded length is fixed by the
        // plaintext length, so it can check each chunk carries exactly the
        // bytes due at its offset.
        let size = t.size();
        let padded = body.ciphertext_len().saturating_sub(tdes::BLOCK_LEN);
        let expected = size.saturating_sub(offset).min(FILE_CHUNK_SIZE as u64);
        let fits = offset == t.next_offset
            && offset < size
            && padded == tdes::padded_len(expected as usize);
        if !fits {
            let why = "chunk does not fit the announced size, or out of order";
            self.abort(shared, id, why);
            return Some(ServerMessage::FileAbort(id, why.into()));
        }
        t.next_offset = offset + expected;
        if !t.keep_for.is_empty() {
            let chunk = StoredChunk {
                offset,
                key: key.clone(),
                body: body.clone(),
            };
            shared.store.save_chunk(id, &chunk);
        }
        let frame = Outgoing::from(&ServerMessage::Chunk {
            id,
            offset,
            key,
            body,
        });
        let state = shared.state();
        t.live.retain(|o| state.is_online_as(&o.user, o.session));
        drop(state);
        // A recipient that is gone or stuck drops out; the rest carry on.
        t.live.retain(|o| o.outbox.send_bulk(frame.clone()).is_ok());
        None
    }

    /// The sender finished: store the file for those who must still get it,
    /// then tell live recipients. Returns the reply text.
    pub(super) fn end(&mut self, shared: &Shared, id: u64) -> Result<String, Failure> {
        let t = self.open.remove(&id).ok_or_else(|| no_transfer(id))?;
        if t.next_offset < t.size() {
            self.aborted.insert(id);
            shared.store.discard_file(id);
            let abort = Outgoing::from(&ServerMessage::FileAbort(id, "sender ended early".into()));
            for o in &t.live {
                let _ = o.outbox.send_bulk(abort.clone());
            }
            return Err(Failure(
                ErrorCode::Usage,
                format!(
                    "{id} ended after {} of {} bytes; transfer cancelled",
                    t.next_offset,
                    t.size()
                ),
            ));
        }
        // Every chunk must be on disk before the file is committed (a chunk
        // write that failed shows up here, not as a short file later).
        let chunks = t.size().div_ceil(FILE_CHUNK_SIZE as u64);
        let stored = if t.keep_for.is_empty() {
            Ok(chunks)
        } else {
            shared.store.stored_chunks(id)
        };
        let committed = stored.and_then(|n| {
            if n != chunks {
                return Err(crate::store::StoreError(format!(
                    "only {n} of {chunks} chunks of file {id} were stored"
                )));
            }
            // Committed even when kept for nobody, so it is in the history.
            shared
                .store
                .save_messages(&[(t.message.clone(), t.keep_for.clone())])
        });
        if let Err(e) = committed {
            self.aborted.insert(id);
            shared.store.discard_file(id);
            let why = "server could not store the file";
            let abort = Outgoing::from(&ServerMessage::FileAbort(id, why.into()));
            for o in &t.live {
                let _ = o.outbox.send_bulk(abort.clone());
            }
            return Err(storage(e));
        }
        if t.keep_for.is_empty() {
            shared.store.discard_file(id);
        }
        let end = Outgoing::from(&ServerMessage::FileEnd(id));
        let n = t
            .live
            .iter()
            .filter(|o| o.outbox.send_bulk(end.clone()).is_ok())
            .count();
        Ok(format!(
            "{id} file sent to {n} session{} now, kept for {} user{}",
            plural(n),
            t.keep_for.len(),
            plural(t.keep_for.len())
        ))
    }

    /// Ends an open transfer, telling live recipients why. False if it was not open.
    pub(super) fn abort(&mut self, shared: &Shared, id: u64, why: &str) -> bool {
        let Some(t) = self.open.remove(&id) else {
            return false;
        };
        self.aborted.insert(id);
        shared.store.discard_file(id);
        let abort = Outgoing::from(&ServerMessage::FileAbort(id, why.into()));
        for o in &t.live {
            let _ = o.outbox.send_bulk(abort.clone());
        }
        true
    }

    /// Aborts every open transfer (logout or disconnect).
    pub(super) fn abort_all(&mut self, shared: &Shared, why: &str) {
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.abort(shared, id, why);
        }
    }
}

/// A storage failure as an `ERR` reply.
pub(super) fn storage(e: crate::store::StoreError) -> Failure {
    crate::log!("{e}");
    Failure(
        ErrorCode::Storage,
        format!("{e}; nothing was sent, try again"),
    )
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn no_transfer(id: u64) -> Failure {
    Failure(ErrorCode::NoSuchTransfer, format!("no open transfer {id}"))
}
