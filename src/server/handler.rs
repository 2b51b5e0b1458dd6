//! What each request does: one handler per verb.
//!
//! [`handle`] dispatches a parsed, admitted [`Request`] (the session has
//! already applied the verb table's login and rate rules) to its handler.
//! A handler checks the request against the in-memory [`State`], makes the
//! change durable in the [`Store`], records it in the state, and answers:
//! at once, or (for anything that appends to a log or changes a
//! membership) from the store's completion, in commit order, which then
//! also offers the new entries to every follower's [`Link`].
//!
//! Handlers only queue frames; whether a connection exists behind the
//! outbox does not matter to them, so they run the same in unit tests
//! without sockets.

use std::sync::Arc;

use tracing::{info, warn};

use crate::clock::now_ms;
use crate::content::{Body, ContentKey};
use crate::event::{Delivery, ErrorCode, Reply, ReplyData, ServerMessage};
use crate::names::{GroupName, MessageRef, Username};
use crate::request::{HistoryTarget, Request, SendId, Verb};
use crate::store::{Append, Appended, Content, ConvId, LogEntry, StoreError, UserRecord};

use super::delivery::{entry_message, Link, Prepared};
use super::outbox::Outgoing;
use super::session::{Flow, Login, Session};
use super::state::{plural, Failure, Notices};
use super::{CloseReason, Shared};

/// Runs one request.
pub(super) fn handle(s: &mut Session, request: Request) -> Flow {
    let answer = match request {
        Request::CreateUser {
            username,
            password,
            name,
        } => create_user(s, &username, &password, name),
        Request::Login { username, password } => login(s, &username, &password),
        Request::CreateGroup(g) => create_group(s, &g),
        Request::Join(g) => set_member(s, &g, true),
        Request::Leave(g) => set_member(s, &g, false),
        Request::List => s
            .user()
            .map(|me| Reply::ok(s.shared.state().list(&me)))
            .into(),
        Request::Help => Answer::Now(Reply::ok(wire_help())),
        Request::Logout => {
            s.logout("sender logged out");
            Answer::Now(Reply::ok("logged out"))
        }
        Request::Quit => {
            s.reply(Reply::ok("bye"));
            return Flow::Close(CloseReason::ClientQuit);
        }
        Request::Send {
            to,
            send_id,
            key,
            body,
        } => send_text(s, Target::User(to), send_id, key, body),
        Request::SendToGroup {
            groups,
            send_id,
            key,
            body,
        } => send_text(s, Target::Groups(groups), send_id, key, body),
        Request::SendFile(offer) => match s.user() {
            Ok(me) => s
                .transfers
                .offer(&s.shared, &me, offer)
                .map_or_else(|f| Answer::Now(f.into()), Answer::Now),
            Err(f) => Answer::Now(f.into()),
        },
        Request::Chunk {
            transfer,
            offset,
            key,
            body,
        } => {
            if let Some(abort) = s.transfers.chunk(&s.shared, transfer, offset, key, body) {
                let _ = s.outbox.send(&abort);
            }
            Answer::Nothing
        }
        Request::FileEnd(id) => file_end(s, id),
        Request::FileAbort(id) => {
            if s.transfers
                .abort(&s.shared, &s.outbox, id, "sender cancelled")
            {
                Answer::Now(Reply::ok(format!("{id} transfer cancelled")))
            } else {
                Answer::Now(no_transfer(id).into())
            }
        }
        Request::Ack(refs) => {
            ack(s, &refs);
            Answer::Nothing
        }
        // Any frame proves the connection is alive; nothing else to do.
        Request::Pong(_) => Answer::Nothing,
        Request::History { with, limit } => history(s, &with, limit),
    };
    match answer {
        Answer::Now(reply) => s.reply(reply),
        Answer::Later | Answer::Nothing => {}
    }
    Flow::Continue
}

/// What a handler leaves to do.
enum Answer {
    /// Reply now (behind replies still waiting for commits).
    Now(Reply),
    /// A store completion will reply.
    Later,
    /// The verb gets no reply.
    Nothing,
}

impl From<Result<Reply, Failure>> for Answer {
    fn from(r: Result<Reply, Failure>) -> Self {
        Answer::Now(r.unwrap_or_else(Reply::from))
    }
}

/// The server's `HELP`: the wire usage of every verb.
fn wire_help() -> String {
    let usages: Vec<&str> = Verb::ALL.iter().map(|v| v.spec().usage).collect();
    format!("requests: {}", usages.join(" | "))
}

/// A storage failure as an `ERR` reply (and a log line).
pub(super) fn storage(e: StoreError) -> Failure {
    tracing::error!("{e}");
    Failure::new(
        ErrorCode::Storage,
        format!("{e}; nothing was done, try again"),
    )
}

fn no_transfer(id: u64) -> Failure {
    Failure::new(ErrorCode::NoSuchTransfer, format!("no open transfer {id}"))
}

fn create_user(s: &Session, username: &Username, password: &str, name: String) -> Answer {
    let shared = &s.shared;
    if let Err(f) = shared.state().check_new_user(username) {
        return Answer::Now(f.into());
    }
    // The slow hash runs without any lock held.
    let verifier = match shared.passwords.hash(password) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("{e}");
            return Answer::Now(Reply::err(
                ErrorCode::Storage,
                "could not secure the password; try again",
            ));
        }
    };
    let record = UserRecord {
        username: username.clone(),
        name,
        verifier,
    };
    match shared.store.create_user(&record) {
        Ok(true) => {
            shared.state().add_account(&record);
            info!(user = %username, "created user");
            Answer::Now(Reply::ok(format!(
                "created user {username}; now LOGIN {username} <password>"
            )))
        }
        Ok(false) => Answer::Now(super::state::user_taken(username).into()),
        Err(e) => Answer::Now(storage(e).into()),
    }
}

fn login(s: &mut Session, username: &Username, password: &str) -> Answer {
    let shared = Arc::clone(&s.shared);
    // Repeated failures make each further attempt wait (same wait, same
    // reply, whether or not the account exists).
    let attempt = shared.throttle.begin(username, s.peer.ip());
    if !attempt.wait.is_zero() {
        std::thread::sleep(attempt.wait);
    }
    let verifier = shared.state().verifier(username);
    if !shared.passwords.check(verifier.as_deref(), password) {
        shared.throttle.failed(username, s.peer.ip(), attempt);
        s.log_failed_login(username);
        return Answer::Now(Reply::err(
            ErrorCode::LoginFailed,
            "wrong username or password",
        ));
    }
    shared.throttle.succeeded(username, s.peer.ip(), attempt);
    let link = Link::new(s.id, username.clone(), s.outbox.clone(), &shared.catch_up);
    s.login = Some(Login {
        user: username.clone(),
        link: Arc::clone(&link),
    });
    info!(user = %username, "logged in");
    // Cursors are read, and the link registered, in commit order with
    // appends: every message committed after the read is offered to it.
    let done = s.begin_commit();
    let (store, user) = (Arc::clone(&shared.store), username.clone());
    store.cursors(
        username,
        Box::new(move |cursors| {
            let reply = match cursors {
                Ok(cursors) => {
                    let notices = shared.state().add_link(&link);
                    // Group keys first, so no GMSG can come before its key.
                    notices.send();
                    let _ = link.outbox.send(&ServerMessage::Reply(Reply::ok(format!(
                        "logged in as {user}"
                    ))));
                    link.start(cursors);
                    None
                }
                Err(e) => Some(Reply::from(storage(e))),
            };
            if let Some(r) = reply {
                let _ = link.outbox.send(&ServerMessage::Reply(r));
            }
            done.finish();
        }),
    );
    Answer::Later
}

fn create_group(s: &Session, g: &GroupName) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let shared = &s.shared;
    let check = {
        let st = shared.state();
        st.check_new_group(g)
            .and_then(|()| st.check_group_count(&me, shared.config.max_groups_per_user))
    };
    if let Err(f) = check {
        return Answer::Now(f.into());
    }
    match shared.store.create_group(g, &me) {
        Ok(true) => {
            let (notices, links) = {
                let mut st = shared.state();
                (st.add_group(&me, g), st.links_of(&me))
            };
            for l in &links {
                l.follow(ConvId::Group(g.clone()), 0);
            }
            notices.send();
            Answer::Now(Reply::ok(format!("created #{g}; you are its first member")))
        }
        Ok(false) => Answer::Now(super::state::group_taken(g).into()),
        Err(e) => Answer::Now(storage(e).into()),
    }
}

fn set_member(s: &Session, g: &GroupName, join: bool) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let shared = Arc::clone(&s.shared);
    let check = {
        let st = shared.state();
        st.check_membership(&me, g, !join).and_then(|()| {
            if join {
                st.check_group_count(&me, shared.config.max_groups_per_user)
            } else {
                Ok(())
            }
        })
    };
    if let Err(f) = check {
        return Answer::Now(f.into());
    }
    let done = s.begin_commit();
    let (outbox, group) = (s.outbox.clone(), g.clone());
    let store = Arc::clone(&shared.store);
    store.set_member(
        g,
        &me.clone(),
        join,
        Box::new(move |result| {
            let reply = match result {
                Ok((head, changed)) => {
                    let conv = ConvId::Group(group.clone());
                    let (n, notices, links) = {
                        let mut st = shared.state();
                        let (n, notices) = st.set_member(&me, &group, join);
                        (n, notices, st.links_of(&me))
                    };
                    for l in &links {
                        if join && changed {
                            l.follow(conv.clone(), head);
                        } else if !join {
                            l.unfollow(&conv);
                        }
                    }
                    notices.send();
                    if join {
                        Reply::ok(format!("joined #{group} ({n} member{})", plural(n)))
                    } else {
                        Reply::ok(format!("left #{group}"))
                    }
                }
                Err(e) => storage(e).into(),
            };
            let _ = outbox.send(&ServerMessage::Reply(reply));
            done.finish();
        }),
    );
    Answer::Later
}

/// Where a text goes.
enum Target {
    User(Username),
    Groups(Vec<GroupName>),
}

fn send_text(s: &Session, to: Target, send_id: SendId, key: ContentKey, body: Body) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let convs = {
        let st = s.shared.state();
        let checked = match &to {
            Target::User(u) => st.check_user(u).map(|()| vec![ConvId::direct(&me, u)]),
            Target::Groups(gs) => st
                .check_sender(&me, gs)
                .map(|()| gs.iter().cloned().map(ConvId::Group).collect()),
        };
        match checked {
            Ok(c) => c,
            Err(f) => return Answer::Now(f.into()),
        }
    };
    let append = Append {
        from: me,
        send_id,
        at_ms: now_ms(),
        convs,
        content: Content::Text { key, body },
    };
    commit(s, append);
    Answer::Later
}

/// Appends without blocking this connection; from the store's writer, in
/// commit order, replies and offers the entries to their followers.
pub(super) fn commit(s: &Session, append: Append) {
    let done = s.begin_commit();
    let (shared, outbox) = (Arc::clone(&s.shared), s.outbox.clone());
    let me = append.from.clone();
    // The sending connection is not sent its own message back: the reply
    // tells it where the message went.
    let own = s.login.as_ref().map(|login| Arc::clone(&login.link));
    let store = Arc::clone(&shared.store);
    store.append(
        append,
        Box::new(move |result| {
            let reply = match result {
                Ok(Appended::New(entries)) => {
                    if let Some(link) = own {
                        for e in &entries {
                            link.skip(e.conv.clone(), e.seq);
                        }
                    }
                    let refs: Vec<MessageRef> = entries
                        .iter()
                        .map(|e| e.conv.message_ref(&me, e.seq))
                        .collect();
                    let reply = sent_reply(refs, "sent");
                    let _ = outbox.send(&ServerMessage::Reply(reply));
                    done.finish();
                    deliver(&shared, entries);
                    return;
                }
                Ok(Appended::Repeat(refs)) => {
                    let refs = refs
                        .iter()
                        .map(|(conv, seq)| conv.message_ref(&me, *seq))
                        .collect();
                    sent_reply(refs, "already sent (a repeated send id)")
                }
                Err(e) => storage(e).into(),
            };
            let _ = outbox.send(&ServerMessage::Reply(reply));
            done.finish();
        }),
    );
}

/// The `OK` for a send: its references first, then words.
pub(super) fn sent_reply(refs: Vec<MessageRef>, what: &str) -> Reply {
    let text = format!("{what} to {}", MessageRef::format_list(&refs));
    Reply::Ok {
        data: ReplyData::Sent(refs),
        text,
    }
}

/// Offers committed entries to every connection that follows their
/// conversation (runs on the store's writer, in commit order).
fn deliver(shared: &Shared, entries: Vec<LogEntry>) {
    for entry in entries {
        let (links, group_key, notices) = {
            let mut st = shared.state();
            st.note_head(&entry.conv, entry.seq);
            let group_key = match (&entry.conv, &entry.content) {
                (ConvId::Group(g), Content::Text { .. }) => {
                    let blocks = envelope_blocks(&entry);
                    st.group_key(g, blocks)
                }
                _ => None,
            };
            let (key, notices) = match group_key {
                Some((k, n)) => (Some(k), n),
                None => (None, Notices::default()),
            };
            (st.followers(&entry.conv), key, notices)
        };
        notices.send();
        // The envelope is sealed once, outside the lock; each recipient's
        // frame adds only a MAC.
        let group_frame = group_key.and_then(|k| {
            let ServerMessage::Msg(d) = entry_message(&entry, &entry.from, false) else {
                return None;
            };
            Some(Outgoing::from(&ServerMessage::GroupMsg {
                key_id: k.id,
                seq: entry.seq,
                body: d.seal_for_group(&k.key),
            }))
        });
        let prepared = Prepared::new(entry, group_frame);
        for link in links {
            link.offer(&prepared);
        }
    }
}

fn envelope_blocks(entry: &LogEntry) -> u64 {
    match entry_message(entry, &entry.from, false) {
        ServerMessage::Msg(d) => Delivery::envelope_blocks(&d),
        _ => 0,
    }
}

fn file_end(s: &mut Session, id: u64) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    match s.transfers.end(&s.shared, &s.outbox, &me, id) {
        Ok(append) => {
            commit(s, append);
            Answer::Later
        }
        Err(f) => Answer::Now(f.into()),
    }
}

/// Moves the user's cursors: each reference acknowledges everything up to
/// it, but never past what this connection was actually sent.
fn ack(s: &Session, refs: &[MessageRef]) {
    let Some(login) = &s.login else { return };
    for r in refs {
        let conv = ConvId::from_view(&login.user, &r.conv);
        let seq = r.seq.min(login.link.sent_up_to(&conv));
        if login.link.note_ack(&conv, seq) {
            s.shared.store.ack(&login.user, &conv, seq);
        }
    }
}

/// Streams the last `limit` entries of a conversation as `HIST` events
/// (a page at a time, waiting for the client to read), then replies.
fn history(s: &Session, with: &HistoryTarget, limit: usize) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let conv = {
        let st = s.shared.state();
        let group = |g: &GroupName| -> Result<ConvId, Failure> {
            st.check_membership(&me, g, true)?;
            Ok(ConvId::Group(g.clone()))
        };
        let user = |u: &Username| -> Result<ConvId, Failure> {
            st.check_user(u)?;
            Ok(ConvId::direct(&me, u))
        };
        let resolved = match with {
            HistoryTarget::User(u) => user(u),
            HistoryTarget::Group(g) => group(g),
            HistoryTarget::Either(name) => {
                // Valid by the parser; both kinds of name share the rules.
                match (Username::parse(name), GroupName::parse(name)) {
                    (Ok(u), _) if st.user_exists(&u) => user(&u),
                    (_, Ok(g)) if st.group_exists(&g) => group(&g),
                    _ => Err(Failure::new(
                        ErrorCode::UnknownUser,
                        format!("no user or group named {name}"),
                    )),
                }
            }
        };
        match resolved {
            Ok(c) => c,
            Err(f) => return Answer::Now(f.into()),
        }
    };
    // Messages this connection's earlier requests sent are included.
    if let Err(e) = s.shared.store.sync() {
        return Answer::Now(storage(e).into());
    }
    let head = s.shared.state().head(&conv);
    let mut next = head.saturating_sub(limit as u64) + 1;
    let mut sent = 0usize;
    while next <= head {
        let page = match s.shared.store.read(&conv, next, 50.min(limit)) {
            Ok(p) => p,
            Err(e) => return Answer::Now(storage(e).into()),
        };
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for entry in page.iter().filter(|e| e.seq <= head) {
            if s.outbox.send(&entry_message(entry, &me, true)).is_err() {
                return Answer::Nothing;
            }
            sent += 1;
        }
        if !s.outbox.wait_for_room() {
            warn!("client stopped reading during HISTORY");
            return Answer::Nothing;
        }
    }
    Answer::Now(Reply::ok(format!(
        "{sent} message{} with {with}",
        plural(sent)
    )))
}
