//! Files being uploaded on one connection: announced, chunked, ended or
//! aborted.
//!
//! A file is stored whole before anyone gets it: chunks go straight to the
//! store as they arrive (the very bytes the sender encrypted), and at
//! `FILE_END`, once every chunk is on disk, the file is appended to each
//! target conversation's log in one commit. From there it is delivered like
//! any entry (see [`super::delivery`]): each recipient pages it from the
//! store at its own pace, so a recipient that does not read never slows
//! the sender or anyone else. A transfer cut short leaves nothing behind.

use std::collections::{HashMap, HashSet};

use crate::clock::now_ms;
use crate::content::{Body, ContentKey};
use crate::event::{ErrorCode, Reply, ReplyData, ServerMessage};
use crate::names::Username;
use crate::request::{FileOffer, FileTarget, SendId, FILE_CHUNK_SIZE};
use crate::store::{Append, Content, ConvId, FileInfo, StoreError, StoredChunk};
use crate::tdes;

use super::handler::{sent_reply, storage};
use super::outbox::Outbox;
use super::state::Failure;
use super::Shared;

struct Upload {
    /// The file as it will be stored.
    info: FileInfo,
    /// Where it goes.
    convs: Vec<ConvId>,
    /// The sender's id for the send.
    send_id: SendId,
    /// The offset the next chunk must carry.
    next_offset: u64,
}

/// One connection's open uploads.
#[derive(Default)]
pub(super) struct Transfers {
    open: HashMap<u64, Upload>,
    /// Uploads this connection aborted: their in-flight chunks are dropped quietly.
    aborted: HashSet<u64>,
}

impl Transfers {
    /// Accepts a file announcement from `me`; the reply carries the
    /// transfer id, or, for a send id already used, where the file went.
    pub(super) fn offer(
        &mut self,
        shared: &Shared,
        me: &Username,
        offer: FileOffer,
    ) -> Result<Reply, Failure> {
        let max = shared.config.max_file_size;
        if offer.size > max {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!(
                    "file is {} bytes; this server accepts at most {max}",
                    offer.size
                ),
            ));
        }
        let convs: Vec<ConvId> = {
            let st = shared.state();
            match &offer.target {
                FileTarget::User(u) => {
                    st.check_user(u)?;
                    vec![ConvId::direct(me, u)]
                }
                FileTarget::Groups(gs) => {
                    st.check_sender(me, gs)?;
                    gs.iter().cloned().map(ConvId::Group).collect()
                }
            }
        };
        if let Some(refs) = shared
            .store
            .previous_send(me, &offer.send_id)
            .map_err(storage)?
        {
            let refs = refs
                .iter()
                .map(|(c, seq)| c.message_ref(me, *seq))
                .collect();
            return Ok(sent_reply(refs, "already sent"));
        }
        for conv in &convs {
            let waiting = shared.store.undelivered_file_bytes(conv).map_err(storage)?;
            if waiting.saturating_add(offer.size) > shared.config.max_pending_bytes {
                return Err(Failure::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "{} has too many undelivered files waiting; try again once its members have caught up",
                        conv.as_seen_by(me)
                    ),
                ));
            }
        }
        let mut info = FileInfo {
            id: 0,
            size: offer.size,
            sha256: offer.sha256,
            name: offer.name.clone(),
            voice: offer.voice,
        };
        info.id = shared.store.new_file(&info).map_err(storage)?;
        let id = info.id;
        self.open.insert(
            id,
            Upload {
                info,
                convs,
                send_id: offer.send_id,
                next_offset: 0,
            },
        );
        Ok(Reply::Ok {
            data: ReplyData::Transfer(id),
            text: format!(
                "send {} ({} bytes) as transfer {id}",
                offer.name, offer.size
            ),
        })
    }

    /// Stores one chunk. Chunks get no reply: a bad one aborts the upload,
    /// with an `UPLOAD_ABORT` to the sender.
    pub(super) fn chunk(
        &mut self,
        shared: &Shared,
        id: u64,
        offset: u64,
        key: ContentKey,
        body: Body,
    ) -> Option<ServerMessage> {
        let Some(u) = self.open.get_mut(&id) else {
            // Chunks still in flight for an upload this connection stopped
            // are dropped quietly; any other is answered once.
            if self.aborted.insert(id) {
                return Some(ServerMessage::UploadAbort(id, "no such transfer".into()));
            }
            return None;
        };
        // Chunks are FILE_CHUNK_SIZE bytes, except a shorter last one. The
        // server sees only ciphertext, whose padded length is fixed by the
        // plaintext length, so it can check each chunk carries exactly the
        // bytes due at its offset.
        let size = u.info.size;
        let padded = body.ciphertext_len().saturating_sub(tdes::BLOCK_LEN);
        let expected = size.saturating_sub(offset).min(FILE_CHUNK_SIZE as u64);
        let fits = offset == u.next_offset
            && offset < size
            && padded == tdes::padded_len(expected as usize);
        if !fits {
            let why = "chunk does not fit the announced size, or out of order";
            self.drop_upload(shared, id);
            return Some(ServerMessage::UploadAbort(id, why.into()));
        }
        u.next_offset = offset + expected;
        shared
            .store
            .save_chunk(id, &StoredChunk { offset, key, body });
        None
    }

    /// The sender finished: checks every chunk is stored and returns the
    /// append that delivers the file.
    pub(super) fn end(
        &mut self,
        shared: &Shared,
        outbox: &Outbox,
        me: &Username,
        id: u64,
    ) -> Result<Append, Failure> {
        let u = self.open.remove(&id).ok_or_else(|| no_transfer(id))?;
        if u.next_offset < u.info.size {
            self.aborted.insert(id);
            shared.store.discard_file(id);
            let _ = outbox.send(&ServerMessage::UploadAbort(id, "ended early".into()));
            return Err(Failure::new(
                ErrorCode::Usage,
                format!(
                    "{id} ended after {} of {} bytes; transfer cancelled",
                    u.next_offset, u.info.size
                ),
            ));
        }
        // Every chunk must be on disk before the file is committed (a chunk
        // write that failed shows up here, not as a short file later).
        let expected = u.info.size.div_ceil(FILE_CHUNK_SIZE as u64);
        let stored = shared.store.stored_chunks(id).map_err(storage)?;
        if stored != expected {
            self.aborted.insert(id);
            shared.store.discard_file(id);
            return Err(storage(StoreError::MissingChunks {
                file: id,
                stored,
                expected,
            }));
        }
        Ok(Append {
            from: me.clone(),
            send_id: u.send_id,
            at_ms: now_ms(),
            convs: u.convs,
            content: Content::File(u.info),
        })
    }

    /// Stops an open upload, telling the sender why. False if it was not open.
    pub(super) fn abort(&mut self, shared: &Shared, outbox: &Outbox, id: u64, why: &str) -> bool {
        if !self.open.contains_key(&id) {
            return false;
        }
        self.drop_upload(shared, id);
        let _ = outbox.send(&ServerMessage::UploadAbort(id, why.into()));
        true
    }

    fn drop_upload(&mut self, shared: &Shared, id: u64) {
        self.open.remove(&id);
        self.aborted.insert(id);
        shared.store.discard_file(id);
    }

    /// Stops every open upload (logout or disconnect).
    pub(super) fn abort_all(&mut self, shared: &Shared, outbox: &Outbox, why: &str) {
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.abort(shared, outbox, id, why);
        }
    }
}

fn no_transfer(id: u64) -> Failure {
    Failure::new(ErrorCode::NoSuchTransfer, format!("no open transfer {id}"))
}
