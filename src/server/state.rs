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
use crate::store::{ConvId, GroupChange, GroupRecord, Snapshot, UserRecord};

use super::delivery::Link;
use super::outbox::Outgoing;
use super::FastMap;

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

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues every notice on its connection.
    pub fn send(self) {
        for (link, frame) in self.0 {
            let _ = link.outbox.push(frame);
        }
    }
}

/// A group's members, with their logged-in connections as delivery wants
/// them: gathered for the first message after a change (a join, a leave,
/// a member logging in or out) and shared by every message until the next,
/// instead of looked up member by member for each message.
#[derive(Default)]
struct Members {
    names: BTreeSet<Username>,
    links: Option<Arc<[Arc<Link>]>>,
}

impl Members {
    fn of(names: impl IntoIterator<Item = Username>) -> Members {
        Members {
            names: names.into_iter().collect(),
            links: None,
        }
    }

    fn contains(&self, user: &Username) -> bool {
        self.names.contains(user)
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Username> {
        self.names.iter()
    }

    fn insert(&mut self, user: Username) -> bool {
        self.links = None;
        self.names.insert(user)
    }

    fn remove(&mut self, user: &Username) -> bool {
        self.links = None;
        self.names.remove(user)
    }

    /// One of the members logged in or out.
    fn forget_links(&mut self) {
        self.links = None;
    }
}

/// A group in memory.
struct Group {
    /// Who may hand the group over, and promote or demote admins.
    owner: Username,
    /// Only invited users may join.
    private: bool,
    members: Members,
    /// Members who may invite and remove (plain) members.
    admins: BTreeSet<Username>,
    /// Users invited and not yet joined.
    invited: BTreeSet<Username>,
    /// The key live messages to this group are enveloped under.
    key: GroupKey,
    /// The store's count of the group's changes, as last read from it
    /// (see [`State::refresh_group`]).
    version: u64,
}

impl Group {
    /// The group as stored, under a key of this server's.
    fn from_record(g: GroupRecord, key: GroupKey) -> Group {
        Group {
            owner: g.owner,
            private: g.private,
            members: Members::of(g.members),
            admins: g.admins.into_iter().collect(),
            invited: g.invited.into_iter().collect(),
            key,
            version: g.version,
        }
    }

    /// Whether `user` may invite and remove members.
    fn manages(&self, user: &Username) -> bool {
        self.owner == *user || self.admins.contains(user)
    }

    /// Whether `user` may see the group at all (in `LIST`).
    fn visible_to(&self, user: &Username) -> bool {
        !self.private || self.members.contains(user) || self.invited.contains(user)
    }
}

/// What a reserved membership change took away besides the membership,
/// so that undoing it ([`State::unreserve`]) gives it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "keep it to undo the change if the store fails"]
pub struct Reserved {
    /// The joiner's invitation was used up.
    was_invited: bool,
    /// The leaver (or removed member) was an admin.
    was_admin: bool,
}

/// A membership change decided under the state's lock, before the store
/// has it (see [`State::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Joined.
    Join,
    /// Left.
    Leave,
    /// Removed by an owner or admin.
    Kick,
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
    online: FastMap<Username, Vec<Arc<Link>>>,
    /// The last sequence number of each conversation.
    heads: FastMap<ConvId, u64>,
    /// The last group key id handed out.
    last_key_id: u64,
}

impl State {
    /// The state the store holds.
    pub fn from_snapshot(snapshot: Snapshot) -> State {
        let mut state = State {
            heads: snapshot.heads.into_iter().collect(),
            ..State::default()
        };
        for u in snapshot.users {
            state.add_account(&u);
        }
        for g in snapshot.groups {
            let key = state.new_group_key();
            state
                .groups
                .insert(g.name.clone(), Group::from_record(g, key));
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
            key: ContentKey::random_for_many(),
            blocks: 0,
        }
    }

    /// Marks a connection as logged in. Its user's group keys come back as
    /// notices for it, to be sent before anything else can reach it.
    pub fn add_link(&mut self, link: &Arc<Link>) -> Notices {
        let mut notices = Notices::default();
        for (name, g) in &mut self.groups {
            if g.members.contains(&link.user) {
                g.members.forget_links();
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
        for g in self.groups.values_mut() {
            if g.members.contains(user) {
                g.members.forget_links();
            }
        }
        if let Some(list) = self.online.get_mut(user) {
            list.retain(|l| l.session != session);
            if list.is_empty() {
                self.online.remove(user);
            }
        }
    }

    /// Users with a connection here.
    pub fn online_users(&self) -> Vec<Username> {
        self.online.keys().cloned().collect()
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

    /// Takes a group name for `creator` (the store has not committed it
    /// yet): fails if the name is taken or the creator has too many
    /// groups. Deciding here, under the lock, makes concurrent creations
    /// and the group cap exact. Undo with [`unreserve_group`](Self::unreserve_group).
    pub fn reserve_group(
        &mut self,
        creator: &Username,
        group: &GroupName,
        private: bool,
        max_groups: usize,
    ) -> Result<(), Failure> {
        if self.groups.contains_key(group) {
            return Err(group_taken(group));
        }
        self.check_group_count(creator, max_groups)?;
        let key = self.new_group_key();
        self.groups.insert(
            group.clone(),
            Group {
                owner: creator.clone(),
                private,
                members: Members::of([creator.clone()]),
                admins: BTreeSet::new(),
                invited: BTreeSet::new(),
                key,
                version: 0,
            },
        );
        self.heads.entry(ConvId::Group(group.clone())).or_insert(0);
        Ok(())
    }

    /// Gives a reserved group back (the store refused it).
    pub fn unreserve_group(&mut self, group: &GroupName) {
        self.groups.remove(group);
    }

    /// The creator's connections get the new group's key.
    pub fn group_created(&self, creator: &Username, group: &GroupName) -> Notices {
        let mut notices = Notices::default();
        if let Some(g) = self.groups.get(group) {
            notices.add(&self.links_of(creator), &key_event(group, &g.key));
        }
        notices
    }

    fn group(&self, group: &GroupName) -> Result<&Group, Failure> {
        self.groups.get(group).ok_or_else(|| no_such_group(group))
    }

    fn group_mut(&mut self, group: &GroupName) -> Result<&mut Group, Failure> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| no_such_group(group))
    }

    /// Decides a join, leave or removal and records it at once (the store
    /// commits it next; [`unreserve`](Self::unreserve) undoes it if that
    /// fails). Everything is checked under the lock: two members joining
    /// and leaving at once get replies that match the final state, and the
    /// group cap holds.
    pub fn reserve(
        &mut self,
        by: &Username,
        user: &Username,
        group: &GroupName,
        change: Membership,
        max_groups: usize,
    ) -> Result<Reserved, Failure> {
        let n = self.groups_of(user);
        let g = self.group_mut(group)?;
        let member = g.members.contains(user);
        let mut reserved = Reserved::default();
        match change {
            Membership::Join => {
                if member {
                    return Err(Failure::new(
                        ErrorCode::AlreadyMember,
                        format!("you are already in #{group}"),
                    ));
                }
                if g.private && !g.invited.contains(user) {
                    return Err(Failure::new(
                        ErrorCode::NotAllowed,
                        format!("#{group} is private: its owner or an admin must INVITE you first"),
                    ));
                }
                if n >= max_groups {
                    return Err(too_many_groups(n));
                }
                reserved.was_invited = g.invited.remove(user);
                g.members.insert(user.clone());
            }
            Membership::Leave => {
                if !member {
                    return Err(not_member(group));
                }
                if g.owner == *user && g.members.len() > 1 {
                    return Err(Failure::new(
                        ErrorCode::NotAllowed,
                        format!("you own #{group}: HANDOVER it to another member first"),
                    ));
                }
                g.members.remove(user);
                reserved.was_admin = g.admins.remove(user);
            }
            Membership::Kick => {
                if !g.manages(by) {
                    return Err(not_manager(group));
                }
                if !member {
                    return Err(Failure::new(
                        ErrorCode::NotMember,
                        format!("{user} is not a member of #{group}"),
                    ));
                }
                if g.owner == *user || (g.admins.contains(user) && g.owner != *by) {
                    return Err(Failure::new(
                        ErrorCode::NotAllowed,
                        format!("only the owner of #{group} can remove its owner or an admin"),
                    ));
                }
                g.members.remove(user);
                reserved.was_admin = g.admins.remove(user);
            }
        }
        Ok(reserved)
    }

    /// Undoes a reservation the store could not commit, invitation and
    /// admin role included.
    pub fn unreserve(
        &mut self,
        user: &Username,
        group: &GroupName,
        change: Membership,
        reserved: Reserved,
    ) {
        if let Some(g) = self.groups.get_mut(group) {
            match change {
                Membership::Join => {
                    g.members.remove(user);
                    if reserved.was_invited {
                        g.invited.insert(user.clone());
                    }
                }
                Membership::Leave | Membership::Kick => {
                    g.members.insert(user.clone());
                    if reserved.was_admin {
                        g.admins.insert(user.clone());
                    }
                }
            }
        }
    }

    /// After the store committed a membership change: the new member
    /// count, and the notices (a joiner's connections get the key; anyone
    /// leaving makes it change, so they cannot open later envelopes).
    pub fn membership_done(
        &mut self,
        user: &Username,
        group: &GroupName,
        change: Membership,
    ) -> (usize, Notices) {
        let Some(g) = self.groups.get(group) else {
            return (0, Notices::default());
        };
        let n = g.members.len();
        let notices = match change {
            Membership::Join => {
                let mut notices = Notices::default();
                notices.add(&self.links_of(user), &key_event(group, &g.key));
                notices
            }
            Membership::Leave | Membership::Kick => self.rotate_group_key(group),
        };
        (n, notices)
    }

    /// Takes a group as the store has it now (another server of a cluster
    /// changed it). Returns who joined and who left, with the notices that
    /// go with that: joiners' connections here get the key, and anyone
    /// leaving makes it change.
    ///
    /// A reading older than one taken before is ignored: reads race, and
    /// an old one would undo a newer change.
    pub fn refresh_group(
        &mut self,
        record: GroupRecord,
    ) -> (Vec<Username>, Vec<Username>, Notices) {
        let name = record.name.clone();
        if self
            .groups
            .get(&name)
            .is_some_and(|g| record.version < g.version)
        {
            return (Vec::new(), Vec::new(), Notices::default());
        }
        let (old, key) = match self.groups.remove(&name) {
            Some(g) => (g.members.names, g.key),
            None => {
                self.heads.entry(ConvId::Group(name.clone())).or_insert(0);
                (BTreeSet::new(), self.new_group_key())
            }
        };
        let group = Group::from_record(record, key);
        let joined: Vec<Username> = group.members.names.difference(&old).cloned().collect();
        let left: Vec<Username> = old.difference(&group.members.names).cloned().collect();
        self.groups.insert(name.clone(), group);
        // A new key reaches every member, joiners included.
        if !left.is_empty() {
            let notices = self.rotate_group_key(&name);
            return (joined, left, notices);
        }
        let mut notices = Notices::default();
        if let Some(g) = self.groups.get(&name) {
            let event = key_event(&name, &g.key);
            for u in &joined {
                notices.add(&self.links_of(u), &event);
            }
        }
        (joined, left, notices)
    }

    /// Applies an invitation or a role change by `by`, checking it is
    /// allowed; returns what undoes it if the store fails.
    pub fn change_group(
        &mut self,
        by: &Username,
        group: &GroupName,
        change: &GroupChange,
    ) -> Result<GroupChange, Failure> {
        let user_exists = |u: &Username| self.accounts.contains_key(u);
        let (target, exists) = match change {
            GroupChange::Invite { user, .. }
            | GroupChange::Admin(user, _)
            | GroupChange::Owner(user) => (user.clone(), user_exists(user)),
        };
        let g = self.group_mut(group)?;
        let owner_only = || {
            Failure::new(
                ErrorCode::NotAllowed,
                format!("only the owner of #{group} can do that"),
            )
        };
        match change {
            GroupChange::Invite { user, .. } => {
                if !g.manages(by) {
                    return Err(not_manager(group));
                }
                if !exists {
                    return Err(Failure::new(
                        ErrorCode::UnknownUser,
                        format!("no user named {user}"),
                    ));
                }
                if g.members.contains(user) {
                    return Err(Failure::new(
                        ErrorCode::AlreadyMember,
                        format!("{user} is already in #{group}"),
                    ));
                }
                g.invited.insert(user.clone());
                Ok(GroupChange::Invite {
                    user: user.clone(),
                    by: by.clone(),
                })
            }
            GroupChange::Admin(user, admin) => {
                if g.owner != *by {
                    return Err(owner_only());
                }
                if !g.members.contains(user) || g.owner == *user {
                    return Err(Failure::new(
                        ErrorCode::NotMember,
                        format!("{user} is not a member of #{group} other than its owner"),
                    ));
                }
                let before = g.admins.contains(user);
                if *admin {
                    g.admins.insert(user.clone());
                } else {
                    g.admins.remove(user);
                }
                Ok(GroupChange::Admin(target, before))
            }
            GroupChange::Owner(user) => {
                if g.owner != *by {
                    return Err(owner_only());
                }
                if !g.members.contains(user) {
                    return Err(Failure::new(
                        ErrorCode::NotMember,
                        format!("{user} is not a member of #{group}"),
                    ));
                }
                let old = std::mem::replace(&mut g.owner, user.clone());
                g.admins.remove(user);
                g.admins.insert(old.clone());
                Ok(GroupChange::Owner(old))
            }
        }
    }

    /// Undoes [`change_group`](Self::change_group) (the store failed).
    pub fn undo_change(&mut self, group: &GroupName, undo: GroupChange) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        match undo {
            GroupChange::Invite { user, .. } => {
                g.invited.remove(&user);
            }
            GroupChange::Admin(user, was) => {
                if was {
                    g.admins.insert(user);
                } else {
                    g.admins.remove(&user);
                }
            }
            GroupChange::Owner(old) => {
                g.admins.remove(&old);
                let new = std::mem::replace(&mut g.owner, old);
                g.admins.remove(&new);
            }
        }
    }

    /// Fails unless the group exists and `user` is in it.
    pub fn check_member(&self, user: &Username, group: &GroupName) -> Result<(), Failure> {
        if self.group(group)?.members.contains(user) {
            Ok(())
        } else {
            Err(not_member(group))
        }
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
            self.check_member(sender, g)?;
        }
        Ok(())
    }

    /// Every logged-in connection that follows `conv`: a group's members',
    /// or both users' of a direct conversation (the sender's own included:
    /// everything a user sends reaches all their connections).
    pub fn followers(&mut self, conv: &ConvId) -> Arc<[Arc<Link>]> {
        let online = &self.online;
        let links = |u: &Username| online.get(u).into_iter().flatten().cloned();
        match conv {
            ConvId::Group(g) => {
                let Some(members) = self.groups.get_mut(g).map(|g| &mut g.members) else {
                    return Arc::from([]);
                };
                Arc::clone(
                    members
                        .links
                        .get_or_insert_with(|| members.names.iter().flat_map(links).collect()),
                )
            }
            ConvId::Direct(a, b) if a == b => links(a).collect(),
            ConvId::Direct(a, b) => links(a).chain(links(b)).collect(),
        }
    }

    /// How many groups `user` is in.
    fn groups_of(&self, user: &Username) -> usize {
        self.groups
            .values()
            .filter(|g| g.members.contains(user))
            .count()
    }

    /// Fails if `user` is already in `max` groups.
    fn check_group_count(&self, user: &Username, max: usize) -> Result<(), Failure> {
        let n = self.groups_of(user);
        if n >= max {
            return Err(too_many_groups(n));
        }
        Ok(())
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
    pub fn list(&self, me: &Username, elsewhere: &BTreeSet<Username>) -> String {
        let visible: Vec<(&GroupName, &Group)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.visible_to(me))
            .collect();
        let groups = visible.into_iter().map(|(name, g)| {
            let n = g.members.len();
            let mut marks = String::new();
            if g.private {
                marks.push_str(", private");
            }
            if g.members.contains(me) {
                marks.push_str(", joined");
            } else if g.invited.contains(me) {
                marks.push_str(", invited");
            }
            if g.owner == *me {
                marks.push_str(", owner");
            } else if g.admins.contains(me) {
                marks.push_str(", admin");
            }
            format!("#{name} ({n} member{}{marks})", plural(n))
        });
        let users: BTreeSet<&str> = self
            .online
            .keys()
            .chain(elsewhere)
            .map(Username::as_str)
            .collect();
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

fn too_many_groups(n: usize) -> Failure {
    Failure::new(
        ErrorCode::TooManyGroups,
        format!("you are in {n} groups, the most this server allows; LEAVE one first"),
    )
}

fn not_manager(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::NotAllowed,
        format!("only the owner or an admin of #{g} can do that"),
    )
}

fn not_member(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::NotMember,
        format!("you are not a member of #{g}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::GroupRecord;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn state_with(group: &GroupRecord) -> State {
        State::from_snapshot(Snapshot {
            users: Vec::new(),
            groups: vec![group.clone()],
            heads: HashMap::new(),
        })
    }

    #[test]
    fn an_undone_membership_change_gives_back_the_role_and_the_invitation() {
        let (owner, bob, carol) = (user("owner"), user("bob"), user("carol"));
        let ops = GroupName::parse("ops").unwrap();
        let mut st = state_with(&GroupRecord {
            name: ops.clone(),
            owner: owner.clone(),
            private: true,
            members: vec![owner.clone(), bob.clone()],
            admins: vec![bob.clone()],
            invited: vec![carol.clone()],
            version: 1,
        });
        // The owner removes an admin; the store fails; bob is an admin again.
        let r = st
            .reserve(&owner, &bob, &ops, Membership::Kick, 10)
            .unwrap();
        st.unreserve(&bob, &ops, Membership::Kick, r);
        let g = &st.groups[&ops];
        assert!(g.members.contains(&bob) && g.admins.contains(&bob));
        // Carol's join uses up her invitation; undone, she may join again.
        let r = st
            .reserve(&carol, &carol, &ops, Membership::Join, 10)
            .unwrap();
        assert!(!st.groups[&ops].invited.contains(&carol));
        st.unreserve(&carol, &ops, Membership::Join, r);
        let g = &st.groups[&ops];
        assert!(!g.members.contains(&carol) && g.invited.contains(&carol));
        assert!(st
            .reserve(&carol, &carol, &ops, Membership::Join, 10)
            .is_ok());
    }

    #[test]
    fn an_older_reading_of_a_group_does_not_undo_a_newer_one() {
        let (owner, bob) = (user("owner"), user("bob"));
        let ops = GroupName::parse("ops").unwrap();
        let read = |members: Vec<Username>, version| GroupRecord {
            name: ops.clone(),
            owner: owner.clone(),
            private: false,
            members,
            admins: Vec::new(),
            invited: Vec::new(),
            version,
        };
        let mut st = state_with(&read(vec![owner.clone()], 1));
        // Bob joined elsewhere (version 2); a reading taken before that
        // (version 1) arrives late and must not drop him again.
        let (joined, _, _) = st.refresh_group(read(vec![owner.clone(), bob.clone()], 2));
        assert_eq!(joined, vec![bob.clone()]);
        let (joined, left, _) = st.refresh_group(read(vec![owner.clone()], 1));
        assert!(joined.is_empty() && left.is_empty());
        assert!(st.check_member(&bob, &ops).is_ok());
        // A newer reading still applies.
        let (_, left, _) = st.refresh_group(read(vec![owner.clone()], 3));
        assert_eq!(left, vec![bob.clone()]);
        assert!(st.check_member(&bob, &ops).is_err());
    }
}
