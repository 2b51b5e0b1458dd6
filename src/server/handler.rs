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
//! without sockets: the tests below build the server's [`Shared`] parts
//! on a temporary directory, drive `Session::detached` sessions with
//! request frames through [`Session::receive`] (the reader's own path:
//! parse, verb table, handler), and take what was queued for each
//! session off its detached outbox.

use std::sync::Arc;

use tracing::{info, warn};

use crate::clock::now_ms;
use crate::content::{Body, ContentKey};
use crate::event::{Delivery, ErrorCode, GroupNotice, NoticeKind, Reply, ReplyData, ServerMessage};
use crate::names::{GroupName, MessageRef, Username};
use crate::request::{DeviceToken, FileTarget, HistoryTarget, Manage, Request, SendId, Verb};
use crate::store::{
    Append, Appended, Content, ConvId, GroupChange, LogEntry, StoreError, UserRecord,
};

use super::cluster::Notice;
use super::delivery::{self, entry_message, Link, Prepared};
use super::limits::TryLater;
use super::session::{Flow, Login, Places, Session};
use super::state::{plural, Failure, Membership, Notices};
use super::{CloseReason, Shared};

/// Runs one request.
pub(super) fn handle(s: &mut Session, request: Request) -> Flow {
    if s.shared.cluster.is_some() {
        learn_names(&s.shared, s.user().ok().as_ref(), &request);
    }
    let answer = match request {
        Request::CreateUser {
            username,
            password,
            name,
        } => create_user(s, &username, &password, name),
        Request::Login {
            username,
            password,
            token,
        } => login(s, &username, Some(&password), token.as_ref()),
        Request::Resume { username, token } => login(s, &username, None, Some(&token)),
        Request::CreateGroup { group, private } => create_group(s, &group, private),
        Request::Join(g) => set_member(s, &g, None, Membership::Join),
        Request::Leave(g) => set_member(s, &g, None, Membership::Leave),
        Request::Manage {
            action,
            group,
            user,
        } => manage(s, action, &group, &user),
        Request::List => s
            .user()
            .map(|me| {
                let elsewhere = match &s.shared.cluster {
                    Some(c) => c.online_elsewhere(),
                    None => Default::default(),
                };
                Reply::ok(s.shared.state().list(&me, &elsewhere))
            })
            .into(),
        Request::Help => Answer::Now(Reply::ok(wire_help())),
        Request::Logout => {
            s.logout("sender logged out");
            // Signing out of this device: its token goes too.
            if let Some(hash) = s.device.take() {
                s.shared.store.forget_device(hash);
            }
            // Back under its address's cap, with a new login deadline.
            let max = s.shared.config.max_connections_per_ip;
            match s.shared.per_address.admit(s.peer.ip(), max) {
                Some(place) => s.places = Places::Address(place),
                None => {
                    s.reply(Reply::ok("logged out"));
                    return Flow::Close(CloseReason::TooManyConnections);
                }
            }
            s.restart_login_clock();
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
            shared.tell(Notice::User(username.clone()));
            info!(user = %username, "created user");
            Answer::Now(Reply::ok(format!(
                "created user {username}; now LOGIN {username} <password>"
            )))
        }
        Ok(false) => Answer::Now(super::state::user_taken(username).into()),
        Err(e) => Answer::Now(storage(e).into()),
    }
}

/// A login, with a password (and maybe this device's token), or with the
/// device's token alone (`RESUME`).
fn login(
    s: &mut Session,
    username: &Username,
    password: Option<&str>,
    token: Option<&DeviceToken>,
) -> Answer {
    let shared = Arc::clone(&s.shared);
    let presented = token.map(DeviceToken::hash);
    let valid_token = match presented {
        Some(hash) => match shared.store.device_owner(hash) {
            Ok(owner) => owner.as_ref() == Some(username),
            Err(e) => return Answer::Now(storage(e).into()),
        },
        None => false,
    };
    // A valid token is counted on its own (so guesses at the account do not
    // lock its owner's devices out); anything else is a possible guess.
    let counted = presented.filter(|_| valid_token);
    let attempt = match shared.throttle.begin(username, s.peer.ip(), counted) {
        Ok(a) => a,
        Err(TryLater(wait)) => {
            warn!(user = %username, peer = %s.peer, "login refused: too many attempts");
            return Answer::Now(Reply::rate_limited(wait, "too many login attempts"));
        }
    };
    let ok = match password {
        Some(pw) => {
            let mut verifier = shared.state().verifier(username);
            // Another server of a cluster may have created the account
            // a moment ago.
            if verifier.is_none() && shared.cluster.is_some() {
                if let Err(e) = super::cluster::learn_user(&shared, username) {
                    return Answer::Now(storage(e).into());
                }
                verifier = shared.state().verifier(username);
            }
            shared.passwords.check(verifier.as_deref(), pw)
        }
        None => valid_token,
    };
    shared.throttle.finish(attempt, ok);
    if !ok {
        s.log_failed_login(username);
        return Answer::Now(Reply::err(
            ErrorCode::LoginFailed,
            "wrong username, password or device token",
        ));
    }
    let max = shared.config.max_sessions_per_user;
    let Some(place) = shared.per_user.admit(username.clone(), max) else {
        return Answer::Now(Reply::err(
            ErrorCode::TooManySessions,
            format!("{username} already has {max} sessions, the most this server allows; close one first"),
        ));
    };
    // Logged in, it counts per user, no longer against its address.
    s.places = Places::User(place);
    // The device keeps its token; a device without a valid one gets one.
    let token = match (valid_token, token) {
        (true, Some(t)) => t.clone(),
        _ => {
            let t = DeviceToken::random();
            if let Err(e) = shared.store.add_device(username, t.hash()) {
                return Answer::Now(storage(e).into());
            }
            t
        }
    };
    s.device = Some(token.hash());
    let link = Link::new(
        s.id,
        username.clone(),
        s.outbox.clone(),
        &shared.catch_up,
        s.bundles,
    );
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
                Ok(mut cursors) => {
                    let notices = {
                        let mut st = shared.state();
                        // Another server's messages noted here since the
                        // read were offered before this link was
                        // registered: it fetches them from the store.
                        for c in &mut cursors {
                            c.head = c.head.max(st.head(&c.conv));
                        }
                        st.add_link(&link)
                    };
                    // Group keys first, so no GMSG can come before its key.
                    notices.send();
                    let ok = Reply::Ok {
                        data: ReplyData::Token(token),
                        text: format!("logged in as {user}"),
                    };
                    let _ = link.outbox.send(&ServerMessage::Reply(ok));
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

fn create_group(s: &Session, g: &GroupName, private: bool) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let shared = &s.shared;
    // Name and cap decided under the lock; the store then commits.
    let reserved = shared
        .state()
        .reserve_group(&me, g, private, shared.config.max_groups_per_user);
    if let Err(f) = reserved {
        return Answer::Now(f.into());
    }
    match shared.store.create_group(g, &me, private) {
        Ok(true) => {
            let (notices, links) = {
                let st = shared.state();
                (st.group_created(&me, g), st.links_of(&me))
            };
            for l in &links {
                l.follow(ConvId::Group(g.clone()), 0);
            }
            notices.send();
            shared.tell(Notice::Group(g.clone()));
            let kind = if private { "private group" } else { "group" };
            Answer::Now(Reply::ok(format!(
                "created the {kind} #{g}; you are its owner and first member"
            )))
        }
        Ok(false) => {
            shared.state().unreserve_group(g);
            Answer::Now(super::state::group_taken(g).into())
        }
        Err(e) => {
            shared.state().unreserve_group(g);
            Answer::Now(storage(e).into())
        }
    }
}

/// Joins, leaves, or (by an owner or admin) removes a member: decided
/// under the state's lock, committed by the store, and finished in commit
/// order (the joiner follows the group from the head the commit saw).
fn set_member(s: &Session, g: &GroupName, user: Option<&Username>, change: Membership) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let target = user.cloned().unwrap_or_else(|| me.clone());
    let shared = Arc::clone(&s.shared);
    let reserved =
        match shared
            .state()
            .reserve(&me, &target, g, change, shared.config.max_groups_per_user)
        {
            Ok(r) => r,
            Err(f) => return Answer::Now(f.into()),
        };
    let join = change == Membership::Join;
    let done = s.begin_commit();
    let (outbox, group) = (s.outbox.clone(), g.clone());
    let store = Arc::clone(&shared.store);
    store.set_member(
        g,
        &target.clone(),
        join,
        Box::new(move |result| {
            let reply = match result {
                Ok((head, changed)) => {
                    group_committed(&shared, &group, changed);
                    let conv = ConvId::Group(group.clone());
                    let (n, notices, links) = {
                        let mut st = shared.state();
                        let (n, notices) = st.membership_done(&target, &group, change);
                        (n, notices, st.links_of(&target))
                    };
                    for l in &links {
                        if join {
                            l.follow(conv.clone(), head);
                        } else {
                            l.unfollow(&conv);
                            if change == Membership::Kick {
                                let _ = l.outbox.send(&ServerMessage::Notice(GroupNotice {
                                    kind: NoticeKind::Removed,
                                    group: group.clone(),
                                    by: me.clone(),
                                }));
                            }
                        }
                    }
                    notices.send();
                    match change {
                        Membership::Join => {
                            Reply::ok(format!("joined #{group} ({n} member{})", plural(n)))
                        }
                        Membership::Leave => Reply::ok(format!("left #{group}")),
                        Membership::Kick => Reply::ok(format!("removed {target} from #{group}")),
                    }
                }
                Err(e) => {
                    shared.state().unreserve(&target, &group, change, reserved);
                    storage(e).into()
                }
            };
            let _ = outbox.send(&ServerMessage::Reply(reply));
            done.finish();
        }),
    );
    Answer::Later
}

/// `INVITE`, `PROMOTE`, `DEMOTE`, `HANDOVER` (and `KICK`, a membership
/// change): checked and applied under the state's lock, then stored.
fn manage(s: &Session, action: Manage, g: &GroupName, user: &Username) -> Answer {
    let me = match s.user() {
        Ok(me) => me,
        Err(f) => return Answer::Now(f.into()),
    };
    let (change, done) = match action {
        Manage::Kick => return set_member(s, g, Some(user), Membership::Kick),
        Manage::Invite => (
            GroupChange::Invite {
                user: user.clone(),
                by: me.clone(),
            },
            format!("invited {user} to #{g}"),
        ),
        Manage::Promote => (
            GroupChange::Admin(user.clone(), true),
            format!("{user} is an admin of #{g}"),
        ),
        Manage::Demote => (
            GroupChange::Admin(user.clone(), false),
            format!("{user} is no longer an admin of #{g}"),
        ),
        Manage::Handover => (
            GroupChange::Owner(user.clone()),
            format!("{user} owns #{g} now; you are an admin"),
        ),
    };
    let shared = &s.shared;
    let undo = match shared.state().change_group(&me, g, &change) {
        Ok(undo) => undo,
        Err(f) => return Answer::Now(f.into()),
    };
    if let Err(e) = shared.store.change_group(g, &change) {
        shared.state().undo_change(g, undo);
        return Answer::Now(storage(e).into());
    }
    group_committed(shared, g, true);
    if let GroupChange::Invite { .. } = change {
        let invited = ServerMessage::Notice(GroupNotice {
            kind: NoticeKind::Invited,
            group: g.clone(),
            by: me.clone(),
        });
        // Sent after the state's lock is released.
        let links = shared.state().links_of(user);
        for l in links {
            let _ = l.outbox.send(&invited);
        }
    }
    Answer::Now(Reply::ok(done))
}

/// After a change to group `g` is stored (`changed`: it did change
/// something): other servers are told, and in a cluster this one reads the
/// group back. Its own change is in memory but not in the version it last
/// read, so a reading from before it, still in flight from another
/// server's notice, could otherwise undo it (or have left it out).
fn group_committed(shared: &Shared, g: &GroupName, changed: bool) {
    if changed {
        shared.tell(Notice::Group(g.clone()));
    }
    if shared.cluster.is_some() {
        super::cluster::refresh_group(shared, g);
    }
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
                    for e in &entries {
                        shared.tell(Notice::Advanced(e.conv.clone(), e.seq));
                    }
                    deliver(&shared, entries);
                    return;
                }
                Ok(Appended::Repeat(refs)) => {
                    let refs = refs
                        .iter()
                        .map(|(conv, seq)| conv.message_ref(&me, *seq))
                        .collect();
                    sent_reply(refs, "already sent")
                }
                Err(e) => storage(e).into(),
            };
            let _ = outbox.send(&ServerMessage::Reply(reply));
            done.finish();
        }),
    );
}

/// The `OK` for a send: its references, then a word for people. Short on
/// purpose: it is encrypted once per message sent, and the references
/// already say where the message went.
pub(super) fn sent_reply(refs: Vec<MessageRef>, what: &str) -> Reply {
    Reply::Ok {
        data: ReplyData::Sent(refs),
        text: what.to_string(),
    }
}

/// Offers committed entries to every connection that follows their
/// conversation (runs on the store's writer, in commit order; for
/// another server's entries, on the cluster's notice thread). On the
/// store's writer the offers of group texts wait for the end of the
/// commit's completions, to go out bundled ([`delivery::bundling`]).
///
/// An entry at or below the conversation's head here was offered already.
/// In a cluster, entries another server committed just before ours may not
/// have been announced yet: they are read first, once, rather than have
/// every follower find the gap and read it for itself.
pub(super) fn deliver(shared: &Shared, entries: Vec<LogEntry>) {
    for entry in entries {
        // A group text is sealed once for every recipient (below); its size
        // counts towards the key's limit.
        let group_text = match (&entry.conv, &entry.content) {
            (ConvId::Group(_), Content::Text { .. }) => {
                match entry_message(&entry, &entry.from, false) {
                    ServerMessage::Msg(d) => Some(d),
                    _ => None,
                }
            }
            _ => None,
        };
        let (links, group_key, notices) = {
            let mut st = shared.state();
            let head = st.head(&entry.conv);
            if entry.seq <= head {
                continue;
            }
            if entry.seq > head + 1 && shared.cluster.is_some() {
                drop(st);
                // What is gathered goes first: it comes before the gap.
                delivery::offer_gathered();
                fill_gap(shared, &entry.conv, head + 1, entry.seq);
                st = shared.state();
            }
            st.note_head(&entry.conv, entry.seq);
            let group_key = match (&entry.conv, &group_text) {
                (ConvId::Group(g), Some(d)) => st.group_key(g, Delivery::envelope_blocks(d)),
                _ => None,
            };
            let (key, notices) = match group_key {
                Some((k, n)) => (Some(k), n),
                None => (None, Notices::default()),
            };
            (st.followers(&entry.conv), key, notices)
        };
        if !notices.is_empty() {
            // A new key's GROUP_KEY goes out after what the old key sealed.
            delivery::offer_gathered();
        }
        notices.send();
        // The envelope is sealed outside the lock; each recipient's frame
        // adds only a MAC.
        let group_body = group_key
            .zip(group_text)
            .map(|(k, d)| (k.id, d.seal_for_group(&k.key)));
        delivery::offer_live(Prepared::new(entry, group_body), links);
    }
}

/// Delivers `conv`'s stored entries from `from` up to (not including)
/// `until`. On a store error the followers are left to find the gap and
/// catch up from the store themselves, as they would anyway.
fn fill_gap(shared: &Shared, conv: &ConvId, from: u64, until: u64) {
    let mut from = from;
    while from < until {
        let limit = usize::try_from(until - from)
            .unwrap_or(usize::MAX)
            .min(super::cluster::PAGE);
        let gap = match shared.store.read(conv, from, limit) {
            Ok(gap) => gap,
            Err(e) => {
                tracing::warn!(%conv, "cannot read another server's messages: {e}");
                return;
            }
        };
        let Some(last) = gap.last().map(|e| e.seq) else {
            return;
        };
        deliver(shared, gap.into_iter().filter(|e| e.seq < until).collect());
        from = last + 1;
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

/// In a cluster, a group or account a request names may have been created
/// or changed on another server a moment ago, before its notice arrived
/// here: groups it changes (or that the sender is not in as far as this
/// server knows) are read again from the store, and accounts this server
/// has not heard of are looked up, so the request is decided on what is
/// stored. A message to a group the sender is known to be in costs no
/// extra read.
fn learn_names(shared: &Shared, me: Option<&Username>, request: &Request) {
    let (mut groups, users): (Vec<&GroupName>, Vec<&Username>) = match request {
        Request::Join(g) | Request::Leave(g) => {
            super::cluster::refresh_group(shared, g);
            return;
        }
        Request::Manage { group, user, .. } => {
            super::cluster::refresh_group(shared, group);
            (vec![], vec![user])
        }
        Request::Send { to, .. } => (vec![], vec![to]),
        Request::SendToGroup { groups, .. } => (groups.iter().collect(), vec![]),
        Request::SendFile(offer) => match &offer.target {
            FileTarget::User(u) => (vec![], vec![u]),
            FileTarget::Groups(gs) => (gs.iter().collect(), vec![]),
        },
        Request::History { with, .. } => match with {
            HistoryTarget::User(u) => (vec![], vec![u]),
            HistoryTarget::Group(g) => (vec![g], vec![]),
            HistoryTarget::Either(_) => (vec![], vec![]),
        },
        _ => return,
    };
    if let Some(me) = me {
        let st = shared.state();
        groups.retain(|g| st.check_sender(me, std::slice::from_ref(*g)).is_err());
    }
    for g in groups {
        super::cluster::refresh_group(shared, g);
    }
    for u in users {
        if shared.state().verifier(u).is_none() {
            super::cluster::refresh_user(shared, u);
        }
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
            st.check_member(&me, g)?;
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

/// The handlers driven without sockets: each test builds the server's
/// shared parts on a temporary data directory, opens detached sessions,
/// feeds them requests as frames (through the same parse and verb-table
/// checks a connection's reader applies), and decodes what was queued for
/// each session with the client's own parser.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tempfile::TempDir;

    use super::super::session::{Flow, Session};
    use super::super::{CloseReason, Config, Shared};
    use crate::content::ContentKey;
    use crate::event::{
        Delivery, ErrorCode, GroupNotice, NoticeKind, Reply, ReplyData, ServerMessage,
    };
    use crate::frame::Frame;
    use crate::names::{Conversation, GroupName, MessageRef, Username};
    use crate::request::{DeviceToken, Manage, Request, SendId, Verb};
    use crate::store::{Content, ConvId, LogEntry};

    use super::super::delivery;
    use super::deliver;

    /// How long a reply from a store completion may take on a loaded
    /// machine; every wait returns as soon as the frame is there.
    const WAIT: Duration = Duration::from_secs(10);

    /// The server's shared parts, and the directory its data lives in
    /// (declared after, so it goes after the store).
    struct TestServer {
        shared: Arc<Shared>,
        _dir: TempDir,
    }

    impl TestServer {
        fn new() -> TestServer {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = Config::for_tests(&dir.path().join("data"));
            let shared = Arc::new(Shared::open(config).expect("open the server's state"));
            TestServer { shared, _dir: dir }
        }

        /// A new connection, not logged in.
        fn connect(&self) -> Session {
            Session::detached(&self.shared)
        }

        /// A new account `name` (password `pw-<name>`), logged in on a new
        /// session whose queue has been read up to the login's reply.
        fn signed_in(&self, name: &str) -> Session {
            self.signed_in_speaking(name, true)
        }

        /// [`signed_in`](Self::signed_in) on a session that speaks
        /// `MUCHAT/4` (`bundles`) or `MUCHAT/3`, which never takes several
        /// messages in one `GMSG`.
        fn signed_in_speaking(&self, name: &str, bundles: bool) -> Session {
            let mut s = self.connect();
            s.bundles = bundles;
            let create =
                Request::parse(Frame::head(format!("CREATE_USER {name} pw-{name} {name}")))
                    .expect("a valid CREATE_USER");
            request(&mut s, create);
            assert!(reply(&s, Verb::CreateUser).is_ok());
            request(&mut s, login(name, &format!("pw-{name}")));
            assert!(matches!(
                reply(&s, Verb::Login),
                Reply::Ok {
                    data: ReplyData::Token(_),
                    ..
                }
            ));
            s
        }
    }

    fn user(name: &str) -> Username {
        Username::parse(name).expect("a valid username")
    }

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).expect("a valid group name")
    }

    fn login(name: &str, password: &str) -> Request {
        Request::Login {
            username: user(name),
            password: password.into(),
            token: None,
        }
    }

    /// A text message's parts, sealed as a client seals them.
    fn text(t: &str) -> (ContentKey, crate::content::Body) {
        let key = ContentKey::random();
        let body = key.seal(t.as_bytes());
        (key, body)
    }

    /// Runs one request as the connection's reader would: as the frame the
    /// client sends, parsed, admitted by the verb table, handled.
    fn request(s: &mut Session, r: Request) -> Flow {
        s.receive(r.to_frame())
    }

    /// The next message queued for `s`, decoded as the client decodes it.
    fn next(s: &Session) -> ServerMessage {
        let queued = s
            .outbox
            .take(WAIT)
            .unwrap_or_else(|| panic!("nothing queued for session {} within {WAIT:?}", s.id));
        ServerMessage::parse(Frame::from(&queued)).expect("a well-formed server message")
    }

    /// The next message, which must be the reply to a request of `verb`
    /// (its data read as the client reads it, knowing the request).
    fn reply(s: &Session, verb: Verb) -> Reply {
        match next(s) {
            ServerMessage::Reply(r) => r.typed(verb.spec().reply).expect("a typed reply"),
            other => panic!("expected the reply to {verb:?}, got {other:?}"),
        }
    }

    /// The code of the next message, which must be an `ERR` reply.
    fn error(s: &Session) -> ErrorCode {
        match next(s) {
            ServerMessage::Reply(Reply::Err { code, .. }) => code,
            other => panic!("expected an ERR reply, got {other:?}"),
        }
    }

    /// Nothing more is queued for `s` once every write so far has
    /// committed (deliveries are queued by the store's completions, which
    /// run before a later sync returns).
    fn nothing_more(s: &Session) {
        s.shared.store.sync().expect("store sync");
        if let Some(o) = s.outbox.take(Duration::ZERO) {
            panic!("unexpected {:?}", ServerMessage::parse(Frame::from(&o)));
        }
    }

    #[test]
    fn create_user_then_login_gives_a_device_token_and_logs_in() {
        let server = TestServer::new();
        let mut s = server.connect();
        request(
            &mut s,
            Request::CreateUser {
                username: user("alice"),
                password: "correct-horse".into(),
                name: "Alice Liddell".into(),
            },
        );
        let created = reply(&s, Verb::CreateUser);
        assert!(created.is_ok(), "{created:?}");
        assert!(created.text().contains("created user alice"), "{created:?}");
        assert!(s.login.is_none(), "creating an account does not log in");

        request(&mut s, login("alice", "correct-horse"));
        let Reply::Ok {
            data: ReplyData::Token(token),
            text,
        } = reply(&s, Verb::Login)
        else {
            panic!("LOGIN did not give a device token");
        };
        assert_eq!(text, "logged in as alice");
        assert_eq!(
            s.login.as_ref().map(|l| l.user.clone()),
            Some(user("alice"))
        );
        assert_eq!(s.device, Some(token.hash()));

        // The token alone logs the same device in again (a reconnect).
        let mut again = server.connect();
        request(
            &mut again,
            Request::Resume {
                username: user("alice"),
                token: token.clone(),
            },
        );
        assert_eq!(
            reply(&again, Verb::Resume),
            Reply::Ok {
                data: ReplyData::Token(token),
                text: "logged in as alice".into(),
            }
        );
        assert!(again.login.is_some());
    }

    #[test]
    fn a_taken_username_is_refused() {
        let server = TestServer::new();
        let _alice = server.signed_in("alice");
        let mut s = server.connect();
        request(
            &mut s,
            Request::CreateUser {
                username: user("alice"),
                password: "another".into(),
                name: "Someone Else".into(),
            },
        );
        assert_eq!(error(&s), ErrorCode::UserExists);
    }

    #[test]
    fn a_wrong_password_or_token_is_refused_and_does_not_log_in() {
        let server = TestServer::new();
        drop(server.signed_in("alice"));
        let mut s = server.connect();
        request(&mut s, login("alice", "not-her-password"));
        assert_eq!(error(&s), ErrorCode::LoginFailed);
        assert!(s.login.is_none());
        assert!(s.device.is_none());
        // A stranger's device token is no better.
        request(
            &mut s,
            Request::Resume {
                username: user("alice"),
                token: DeviceToken::random(),
            },
        );
        assert_eq!(error(&s), ErrorCode::LoginFailed);
        assert!(s.login.is_none());
        // Still logged out: the verb table refuses what needs a login.
        request(&mut s, Request::List);
        assert_eq!(error(&s), ErrorCode::NotLoggedIn);
    }

    #[test]
    fn the_verb_table_admits_by_login_state() {
        let server = TestServer::new();
        let mut s = server.connect();
        request(&mut s, Request::Join(group("ops")));
        assert_eq!(error(&s), ErrorCode::NotLoggedIn);
        // An unanswered verb cannot be refused with a reply: it closes.
        let (key, body) = text("piece");
        let flow = request(
            &mut s,
            Request::Chunk {
                transfer: 1,
                offset: 0,
                key,
                body,
            },
        );
        assert!(matches!(flow, Flow::Close(CloseReason::Protocol(_))));

        let mut alice = server.signed_in("alice");
        request(&mut alice, login("alice", "pw-alice"));
        assert_eq!(error(&alice), ErrorCode::AlreadyLoggedIn);
        // Unknown verbs and bad arguments are answered, not fatal.
        let flow = alice.receive(Frame::head("FROBNICATE now"));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(error(&alice), ErrorCode::UnknownCommand);
        alice.receive(Frame::head("JOIN"));
        assert_eq!(error(&alice), ErrorCode::Usage);
        nothing_more(&alice);
    }

    /// `s` creates the public group `g` (its key comes before the reply).
    fn created(s: &mut Session, g: &GroupName) {
        request(
            s,
            Request::CreateGroup {
                group: g.clone(),
                private: false,
            },
        );
        assert!(matches!(next(s), ServerMessage::GroupKey { group, .. } if &group == g));
        assert!(reply(s, Verb::CreateGroup).is_ok());
    }

    /// The next message queued for `s`, which must be a `GMSG`: its key
    /// id, first sequence number and body.
    fn next_gmsg(s: &Session) -> (u64, u64, crate::content::Body) {
        match next(s) {
            ServerMessage::GroupMsg { key_id, seq, body } => (key_id, seq, body),
            other => panic!("expected a GMSG for session {}, got {other:?}", s.id),
        }
    }

    /// Joins `s` to `g` and returns the group key it is sent.
    fn joined(s: &mut Session, g: &GroupName) -> (u64, ContentKey) {
        request(s, Request::Join(g.clone()));
        let ServerMessage::GroupKey { key_id, key, .. } = next(s) else {
            panic!("the joiner was not sent the group's key first");
        };
        assert!(reply(s, Verb::Join).is_ok());
        (key_id, key)
    }

    #[test]
    fn group_messages_committed_together_go_to_a_caught_up_member_in_one_gmsg() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let mut bob = server.signed_in("bob");
        let mut carol = server.signed_in_speaking("carol", false);
        let ops = group("ops");
        created(&mut alice, &ops);
        let (key_id, key) = joined(&mut bob, &ops);
        joined(&mut carol, &ops);

        // Three texts of alice's as one commit's completions deliver them;
        // her own connection sent the second (its reply named it).
        let conv = ConvId::Group(ops.clone());
        let texts = ["one", "two", "three"];
        let entries: Vec<LogEntry> = (1..)
            .zip(texts)
            .map(|(seq, t)| {
                let (key, body) = text(t);
                LogEntry {
                    conv: conv.clone(),
                    seq,
                    at_ms: 1_764_106_800_000 + seq,
                    from: user("alice"),
                    content: Content::Text { key, body },
                }
            })
            .collect();
        let own = &alice.login.as_ref().expect("alice is logged in").link;
        own.skip(conv.clone(), 2);
        let mut entries = Some(entries);
        delivery::bundling(&mut || deliver(&server.shared, entries.take().unwrap_or_default()));

        // Bob, caught up and speaking MUCHAT/4: one frame, opening to the
        // three messages in order.
        let (used, seq, body) = next_gmsg(&bob);
        assert_eq!((used, seq), (key_id, 1));
        let parts = body.unbundle();
        assert_eq!(parts.len(), 3, "one GMSG for the three messages");
        for ((seq, t), part) in (1..).zip(texts).zip(&parts) {
            let d = Delivery::open_group(&ops, seq, &key, part).expect("each envelope opens");
            assert_eq!(d.at.seq, seq);
            assert_eq!(d.from, user("alice"));
            assert_eq!(d.key.open(&d.body).unwrap(), t.as_bytes());
        }
        nothing_more(&bob);

        // Carol speaks MUCHAT/3: the same messages, one GMSG each.
        for seq in 1..=3 {
            let (_, got, body) = next_gmsg(&carol);
            assert_eq!(got, seq);
            assert_eq!(
                body.unbundle().len(),
                1,
                "one message per GMSG for MUCHAT/3"
            );
        }
        nothing_more(&carol);

        // Alice's connection gets the two it did not send, one by one.
        for seq in [1, 3] {
            let (_, got, body) = next_gmsg(&alice);
            assert_eq!((got, body.unbundle().len()), (seq, 1));
        }
        nothing_more(&alice);
    }

    #[test]
    fn a_group_message_reaches_members_and_the_sender_gets_its_reference() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let mut bob = server.signed_in("bob");
        let ops = group("ops");
        created(&mut alice, &ops);

        request(&mut bob, Request::Join(ops.clone()));
        let ServerMessage::GroupKey {
            group: g,
            key_id,
            key,
        } = next(&bob)
        else {
            panic!("the joiner was not sent the group's key first");
        };
        assert_eq!(g, ops);
        assert_eq!(
            reply(&bob, Verb::Join),
            Reply::ok("joined #ops (2 members)")
        );

        let (content_key, body) = text("hello, ops");
        request(
            &mut alice,
            Request::SendToGroup {
                groups: vec![ops.clone()],
                send_id: SendId::random(),
                key: content_key.clone(),
                body,
            },
        );
        let sent = reply(&alice, Verb::SendToGroup);
        let at = MessageRef {
            conv: Conversation::Group(ops.clone()),
            seq: 1,
        };
        assert_eq!(sent.sent(), std::slice::from_ref(&at), "{sent:?}");

        let (used, seq, body) = next_gmsg(&bob);
        assert_eq!((used, seq), (key_id, 1));
        let d = Delivery::open_group(&ops, seq, &key, &body).expect("the envelope opens");
        assert_eq!(d.at, at);
        assert_eq!(d.from, user("alice"));
        assert_eq!(d.key, content_key);
        assert_eq!(content_key.open(&d.body).unwrap(), b"hello, ops");
        // The sender's connection is not sent its own message back.
        nothing_more(&alice);
        nothing_more(&bob);
    }

    #[test]
    fn a_direct_message_is_delivered_and_a_repeated_send_id_is_not() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let bob = server.signed_in("bob");
        let (key, body) = text("hi bob");
        let send = Request::Send {
            to: user("bob"),
            send_id: SendId::random(),
            key: key.clone(),
            body,
        };
        request(&mut alice, send.clone());
        let sent = reply(&alice, Verb::Send);
        assert_eq!(sent.sent(), &[MessageRef::parse("@bob:1").unwrap()]);
        let ServerMessage::Msg(d) = next(&bob) else {
            panic!("bob was not delivered the message");
        };
        assert_eq!(d.at, MessageRef::parse("@alice:1").unwrap());
        assert_eq!(d.from, user("alice"));
        assert_eq!(key.open(&d.body).unwrap(), b"hi bob");

        // A retry (same send id) is answered with where it went, not resent.
        request(&mut alice, send);
        let again = reply(&alice, Verb::Send);
        assert_eq!(again.sent(), sent.sent());
        assert!(again.text().contains("already sent"), "{again:?}");
        nothing_more(&bob);
    }

    #[test]
    fn sending_to_an_unknown_user_or_group_is_refused() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let (key, body) = text("anyone there?");
        request(
            &mut alice,
            Request::Send {
                to: user("nobody"),
                send_id: SendId::random(),
                key: key.clone(),
                body: body.clone(),
            },
        );
        assert_eq!(error(&alice), ErrorCode::UnknownUser);
        request(
            &mut alice,
            Request::SendToGroup {
                groups: vec![group("nowhere")],
                send_id: SendId::random(),
                key,
                body,
            },
        );
        assert_eq!(error(&alice), ErrorCode::NoSuchGroup);
        nothing_more(&alice);
    }

    #[test]
    fn a_private_group_is_joined_only_by_invitation() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let mut bob = server.signed_in("bob");
        let den = group("den");
        request(
            &mut alice,
            Request::CreateGroup {
                group: den.clone(),
                private: true,
            },
        );
        assert!(matches!(next(&alice), ServerMessage::GroupKey { .. }));
        assert!(reply(&alice, Verb::CreateGroup).is_ok());

        request(&mut bob, Request::Join(den.clone()));
        assert_eq!(error(&bob), ErrorCode::NotAllowed);

        request(
            &mut alice,
            Request::Manage {
                action: Manage::Invite,
                group: den.clone(),
                user: user("bob"),
            },
        );
        assert_eq!(
            reply(&alice, Verb::Invite),
            Reply::ok("invited bob to #den")
        );
        assert_eq!(
            next(&bob),
            ServerMessage::Notice(GroupNotice {
                kind: NoticeKind::Invited,
                group: den.clone(),
                by: user("alice"),
            })
        );
        request(&mut bob, Request::Join(den));
        assert!(matches!(next(&bob), ServerMessage::GroupKey { .. }));
        assert_eq!(
            reply(&bob, Verb::Join),
            Reply::ok("joined #den (2 members)")
        );
    }

    #[test]
    fn list_shows_the_groups_and_who_is_online() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let mut bob = server.signed_in("bob");
        request(
            &mut alice,
            Request::CreateGroup {
                group: group("ops"),
                private: false,
            },
        );
        assert!(matches!(next(&alice), ServerMessage::GroupKey { .. }));
        assert!(reply(&alice, Verb::CreateGroup).is_ok());

        request(&mut alice, Request::List);
        assert_eq!(
            reply(&alice, Verb::List),
            Reply::ok("groups: #ops (1 member, joined, owner); online: alice, bob")
        );
        request(&mut bob, Request::List);
        assert_eq!(
            reply(&bob, Verb::List),
            Reply::ok("groups: #ops (1 member); online: alice, bob")
        );
    }

    #[test]
    fn logout_ends_deliveries_and_the_login() {
        let server = TestServer::new();
        let mut alice = server.signed_in("alice");
        let mut bob = server.signed_in("bob");
        request(&mut bob, Request::Logout);
        assert_eq!(reply(&bob, Verb::Logout), Reply::ok("logged out"));
        assert!(bob.login.is_none());

        let (key, body) = text("are you there?");
        request(
            &mut alice,
            Request::Send {
                to: user("bob"),
                send_id: SendId::random(),
                key,
                body,
            },
        );
        assert!(reply(&alice, Verb::Send).is_ok());
        // Stored for bob's next login, not sent to the logged-out session.
        nothing_more(&bob);
        request(&mut alice, Request::List);
        assert_eq!(
            reply(&alice, Verb::List),
            Reply::ok("groups: none; online: alice")
        );
    }
}
