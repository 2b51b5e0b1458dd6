//! The server's shared state in memory: accounts, groups, conversation
//! heads, and who is online where.
//!
//! One [`State`] sits behind a mutex in [`super::Shared`]. It mirrors what
//! the [`crate::store::Store`] holds (loaded at start-up), so lookups never
//! touch the disk. Its methods never do I/O and never push to an outbox:
//! what must be sent because of a change comes back as [`Notices`], which
//! the caller sends after releasing the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::content::ContentKey;
use crate::event::{ErrorCode, Reply, ServerMessage};
use crate::names::{GroupName, Username};
use crate::store::{ConvId, Snapshot, UserRecord};

use super::delivery::Link;
use super::outbox::Outgoing;

/// A refused request: the code and the text of its `ERR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub ErrorCode, pub String);

impl Failure {
    /// A failure with its reply text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        Failure(code, text.into())
    }
}

impl From<Failure> for Reply {
    fn from(f: Failure) -> Reply {
        Reply::err(f.0, f.1)
    }
}

/// Identifies one connection across the server's life.
pub type SessionId = u64;

/// Frames to send once the state's lock is released.
#[must_use = "notices must be sent"]
#[derive(Default)]
pub struct Notices(Vec<(Arc<Link>, Outgoing)>);

impl Notices {
    fn add(&mut self, links: &[Arc<Link>], message: &ServerMessage) {
        let frame = Outgoing::from(message);
        for l in links {
            self.0.push((Arc::clone(l), frame.clone()));
        }
    }

    /// Queues every notice on its connection.
    pub fn send(self) {
        for (link, frame) in self.0 {
            let _ = link.outbox.push(frame);
        }
    }
}

/// A group in memory.
struct Group {
    members: BTreeSet<Username>,
    /// The key live messages to this group are enveloped under.
    key: GroupKey,
}

/// A group's current envelope key. Kept in memory only: members get it
/// (as `GROUP_KEY`) when they log in, join, or it changes; messages sent
/// from the store travel under session keys instead.
#[derive(Clone)]
pub struct GroupKey {
    /// Names the key in `GMSG` heads; unique for the server's run.
    pub id: u64,
    /// The 3DES key.
    pub key: ContentKey,
    /// Blocks sealed under it so far (it is replaced before 2^20).
    blocks: u64,
}

/// Blocks a group key may seal before it is replaced (NIST SP 800-67's
/// 2^20 limit for one 3DES key, with room for one more envelope).
const GROUP_KEY_BLOCKS: u64 = (1 << 20) - 64;

/// Accounts, groups, heads and live sessions.
#[derive(Default)]
pub struct State {
    /// Password verifiers (PHC strings) by username.
    accounts: HashMap<Username, String>,
    groups: BTreeMap<GroupName, Group>,
    /// Logged-in connections by user.
    online: HashMap<Username, Vec<Arc<Link>>>,
    /// The last sequence number of each conversation.
    heads: HashMap<ConvId, u64>,
    /// The last group key id handed out.
    last_key_id: u64,
}

impl State {
    /// The state the store holds.
    pub fn from_snapshot(snapshot: Snapshot) -> State {
        let mut state = State {
            heads: snapshot.heads,
            ..State::default()
        };
        for u in snapshot.users {
            state.add_account(&u);
        }
        for g in snapshot.groups {
            let members = g.members.into_iter().collect();
            let key = state.new_group_key();
            state.groups.insert(g.name, Group { members, key });
        }
        state
    }

    /// Fails if the username is taken.
    pub fn check_new_user(&self, username: &Username) -> Result<(), Failure> {
        if self.accounts.contains_key(username) {
            return Err(user_taken(username));
        }
        Ok(())
    }

    /// Records an account the store has committed.
    pub fn add_account(&mut self, user: &UserRecord) {
        self.accounts
            .insert(user.username.clone(), user.verifier.clone());
    }

    /// The verifier for `username`, if the account exists (cloned so the
    /// slow check can run without the lock).
    pub fn verifier(&self, username: &Username) -> Option<String> {
        self.accounts.get(username).cloned()
    }

    fn new_group_key(&mut self) -> GroupKey {
        self.last_key_id += 1;
        GroupKey {
            id: self.last_key_id,
            key: ContentKey::random(),
            blocks: 0,
        }
    }

    /// Marks a connection as logged in. Its user's group keys come back as
    /// notices for it, to be sent before anything else can reach it.
    pub fn add_link(&mut self, link: &Arc<Link>) -> Notices {
        let mut notices = Notices::default();
        for (name, g) in &self.groups {
            if g.members.contains(&link.user) {
                notices.add(std::slice::from_ref(link), &key_event(name, &g.key));
            }
        }
        self.online
            .entry(link.user.clone())
            .or_default()
            .push(Arc::clone(link));
        notices
    }

    /// Forgets a connection; the user goes offline with their last one.
    pub fn remove_link(&mut self, user: &Username, session: SessionId) {
        if let Some(list) = self.online.get_mut(user) {
            list.retain(|l| l.session != session);
            if list.is_empty() {
                self.online.remove(user);
            }
        }
    }

    /// The user's logged-in connections.
    pub fn links_of(&self, user: &Username) -> Vec<Arc<Link>> {
        self.online.get(user).cloned().unwrap_or_default()
    }

    /// The key to envelope a message of `blocks` blocks for `group`,
    /// replaced first (with notices for the members) if it is worn out.
    pub fn group_key(&mut self, group: &GroupName, blocks: u64) -> Option<(GroupKey, Notices)> {
        let worn = self.groups.get(group)?.key.blocks + blocks > GROUP_KEY_BLOCKS;
        let notices = if worn {
            self.rotate_group_key(group)
        } else {
            Notices::default()
        };
        let g = self.groups.get_mut(group)?;
        g.key.blocks += blocks;
        Some((g.key.clone(), notices))
    }

    /// Gives a group a fresh key; its online members are told.
    fn rotate_group_key(&mut self, group: &GroupName) -> Notices {
        let key = self.new_group_key();
        let mut notices = Notices::default();
        let Some(g) = self.groups.get_mut(group) else {
            return notices;
        };
        g.key = key;
        let event = key_event(group, &g.key);
        let members: Vec<Username> = g.members.iter().cloned().collect();
        for m in members {
            notices.add(&self.links_of(&m), &event);
        }
        notices
    }

    /// Fails if the group name is taken.
    pub fn check_new_group(&self, group: &GroupName) -> Result<(), Failure> {
        if self.groups.contains_key(group) {
            return Err(group_taken(group));
        }
        Ok(())
    }

    /// Records a group the store has committed, with its creator as first
    /// member; the creator's connections get its key.
    pub fn add_group(&mut self, creator: &Username, group: &GroupName) -> Notices {
        let members = BTreeSet::from([creator.clone()]);
        let key = self.new_group_key();
        let mut notices = Notices::default();
        notices.add(&self.links_of(creator), &key_event(group, &key));
        self.groups.insert(group.clone(), Group { members, key });
        self.heads.entry(ConvId::Group(group.clone())).or_insert(0);
        notices
    }

    /// Fails unless the group exists and `user` is (`member`) or is not
    /// (`!member`) in it.
    pub fn check_membership(
        &self,
        user: &Username,
        group: &GroupName,
        member: bool,
    ) -> Result<(), Failure> {
        let g = self.groups.get(group).ok_or_else(|| no_such_group(group))?;
        match (g.members.contains(user), member) {
            (true, false) => Err(Failure::new(
                ErrorCode::AlreadyMember,
                format!("you are already in #{group}"),
            )),
            (false, true) => Err(not_member(group)),
            _ => Ok(()),
        }
    }

    /// Records a join or leave the store has committed, and returns the
    /// new member count. A member who joins gets the group key; one who
    /// leaves makes it change, so the leaver cannot open later envelopes.
    /// An emptied group stays, with its history and its name.
    pub fn set_member(
        &mut self,
        user: &Username,
        group: &GroupName,
        member: bool,
    ) -> (usize, Notices) {
        let Some(g) = self.groups.get_mut(group) else {
            return (0, Notices::default());
        };
        if member {
            g.members.insert(user.clone());
        } else {
            g.members.remove(user);
        }
        let n = g.members.len();
        let notices = if member {
            let mut notices = Notices::default();
            let event = key_event(group, &g.key);
            notices.add(&self.links_of(user), &event);
            notices
        } else {
            self.rotate_group_key(group)
        };
        (n, notices)
    }

    /// Whether an account exists.
    pub fn user_exists(&self, user: &Username) -> bool {
        self.accounts.contains_key(user)
    }

    /// Fails unless `to` is an account.
    pub fn check_user(&self, to: &Username) -> Result<(), Failure> {
        if !self.user_exists(to) {
            return Err(Failure::new(
                ErrorCode::UnknownUser,
                format!("no user named {to}"),
            ));
        }
        Ok(())
    }

    /// Fails unless every group exists and has `sender`.
    pub fn check_sender(&self, sender: &Username, groups: &[GroupName]) -> Result<(), Failure> {
        for g in groups {
            self.check_membership(sender, g, true)?;
        }
        Ok(())
    }

    /// Every logged-in connection that follows `conv`: a group's members',
    /// or both users' of a direct conversation (the sender's own included:
    /// everything a user sends reaches all their connections).
    pub fn followers(&self, conv: &ConvId) -> Vec<Arc<Link>> {
        let links = |u: &Username| self.online.get(u).into_iter().flatten().cloned();
        match conv {
            ConvId::Group(g) => self
                .groups
                .get(g)
                .into_iter()
                .flat_map(|g| g.members.iter())
                .flat_map(links)
                .collect(),
            ConvId::Direct(a, b) if a == b => links(a).collect(),
            ConvId::Direct(a, b) => links(a).chain(links(b)).collect(),
        }
    }

    /// Fails if `user` is already in `max` groups.
    pub fn check_group_count(&self, user: &Username, max: usize) -> Result<(), Failure> {
        let n = self
            .groups
            .values()
            .filter(|g| g.members.contains(user))
            .count();
        if n >= max {
            return Err(Failure::new(
                ErrorCode::TooManyGroups,
                format!("you are in {n} groups, the most this server allows; LEAVE one first"),
            ));
        }
        Ok(())
    }

    /// Whether `user` is in `group`.
    pub fn is_member(&self, user: &Username, group: &GroupName) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.members.contains(user))
    }

    /// Whether a group exists.
    pub fn group_exists(&self, group: &GroupName) -> bool {
        self.groups.contains_key(group)
    }

    /// The last sequence number of `conv` (0 if it has none yet).
    pub fn head(&self, conv: &ConvId) -> u64 {
        self.heads.get(conv).copied().unwrap_or(0)
    }

    /// Records a committed entry's sequence number.
    pub fn note_head(&mut self, conv: &ConvId, seq: u64) {
        let h = self.heads.entry(conv.clone()).or_insert(0);
        *h = (*h).max(seq);
    }

    /// The `LIST` text: every group with its member count (marking the
    /// caller's), then the users online now. Each list is cut short (with
    /// a count of what was left out) so the reply fits in one frame head.
    pub fn list(&self, me: &Username) -> String {
        let groups = self.groups.iter().map(|(name, g)| {
            let n = g.members.len();
            let joined = if g.members.contains(me) {
                ", joined"
            } else {
                ""
            };
            format!("#{name} ({n} member{}{joined})", plural(n))
        });
        let mut users: Vec<&str> = self.online.keys().map(Username::as_str).collect();
        users.sort_unstable();
        format!(
            "groups: {}; online: {}",
            bounded_join(groups, LIST_PART_BYTES, "none"),
            bounded_join(
                users.into_iter().map(str::to_string),
                LIST_PART_BYTES,
                "nobody"
            )
        )
    }
}

/// `"s"` unless `n` is 1.
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The `GROUP_KEY` event for a group's key.
fn key_event(group: &GroupName, key: &GroupKey) -> ServerMessage {
    ServerMessage::GroupKey {
        group: group.clone(),
        key_id: key.id,
        key: key.key.clone(),
    }
}

/// Room for each of the two lists in a `LIST` reply.
const LIST_PART_BYTES: usize = crate::frame::MAX_HEAD_LEN / 2 - 64;

/// Joins items with ", " until `max` bytes, then says how many were left out.
fn bounded_join(items: impl ExactSizeIterator<Item = String>, max: usize, empty: &str) -> String {
    let total = items.len();
    if total == 0 {
        return empty.to_string();
    }
    let mut out = String::new();
    for (shown, item) in items.enumerate() {
        if out.len() + item.len() + 2 > max {
            out.push_str(&format!(" ... and {} more", total - shown));
            return out;
        }
        if shown > 0 {
            out.push_str(", ");
        }
        out.push_str(&item);
    }
    out
}

/// The failure for a taken username.
pub fn user_taken(u: &Username) -> Failure {
    Failure::new(ErrorCode::UserExists, format!("username {u} is taken"))
}

/// The failure for a taken group name.
pub fn group_taken(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::GroupExists,
        format!("group #{g} already exists; JOIN it instead"),
    )
}

/// The failure for a group that does not exist.
pub fn no_such_group(g: &GroupName) -> Failure {
    Failure::new(ErrorCode::NoSuchGroup, format!("no group named #{g}"))
}

fn not_member(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::NotMember,
        format!("you are not a member of #{g}"),
    )
}
