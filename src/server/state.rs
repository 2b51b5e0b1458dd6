//! The server's shared state in memory: accounts, groups, and who is
//! online where.
//!
//! One [`State`] sits behind a mutex in [`super::Shared`]. It mirrors what
//! the [`crate::store::Store`] holds (loaded at start-up), so lookups never
//! touch the disk. Changes follow a fixed order in the session: check here
//! (`check_*`), make the change durable in the store, then record it here.
//! Its methods never do I/O, so the lock is held only for map lookups;
//! pushing to outboxes happens after it is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::content::ContentKey;
use crate::event::{ErrorCode, ServerMessage};
use crate::names::{GroupName, Username};
use crate::store::{GroupRecord, Snapshot, UserRecord};

use super::outbox::{Outbox, Outgoing};

/// A refused request: the code and the text of its `ERR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub ErrorCode, pub String);

impl Failure {
    fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        Failure(code, text.into())
    }
}

/// Identifies one connection across the server's life.
pub type SessionId = u64;

/// A logged-in connection.
#[derive(Clone)]
pub struct Online {
    /// Which connection.
    pub session: SessionId,
    /// Logged in as.
    pub user: Username,
    /// Where its frames go.
    pub outbox: Outbox,
}

/// A group in memory. (Its owner is kept in the store, for moderation
/// commands to come; nothing here needs it yet.)
struct Group {
    members: BTreeSet<Username>,
    /// The key live messages to this group are enveloped under.
    key: GroupKey,
}

/// A group's current envelope key. Kept in memory only: members get it
/// (as `GROUP_KEY`) when they log in, join, or it changes, and pending and
/// historical messages travel under session keys instead.
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

/// Accounts, groups and live sessions.
#[derive(Default)]
pub struct State {
    /// Password verifiers (PHC strings) by username.
    accounts: HashMap<Username, String>,
    groups: BTreeMap<GroupName, Group>,
    online: HashMap<Username, Vec<Online>>,
    /// The last group key id handed out.
    last_key_id: u64,
}

impl State {
    /// The state the store holds.
    pub fn from_snapshot(snapshot: Snapshot) -> State {
        let mut state = State::default();
        for u in snapshot.users {
            state.add_account(&u);
        }
        for g in snapshot.groups {
            let GroupRecord { name, members, .. } = g;
            let members = members.into_iter().collect();
            let key = state.new_group_key();
            state.groups.insert(name, Group { members, key });
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

    /// Marks a session as logged in as `user` and hands it the keys of the
    /// user's groups first, so no group message can reach it before its key.
    pub fn add_session(&mut self, user: &Username, online: Online) {
        for (name, g) in &self.groups {
            if g.members.contains(user) {
                let _ = online.outbox.send(Outgoing::from(&key_event(name, &g.key)));
            }
        }
        self.online.entry(user.clone()).or_default().push(online);
    }

    /// The key to envelope a message of `blocks` blocks for `group`,
    /// replacing it first (and telling the online members) if it is worn out.
    pub fn group_key(&mut self, group: &GroupName, blocks: u64) -> Option<GroupKey> {
        let worn = self.groups.get(group)?.key.blocks + blocks > GROUP_KEY_BLOCKS;
        if worn {
            self.rotate_group_key(group);
        }
        let g = self.groups.get_mut(group)?;
        g.key.blocks += blocks;
        Some(g.key.clone())
    }

    /// Gives a group a fresh key and sends it to its online members.
    fn rotate_group_key(&mut self, group: &GroupName) {
        let key = self.new_group_key();
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.key = key;
        let event = Outgoing::from(&key_event(group, &g.key));
        for o in g
            .members
            .iter()
            .filter_map(|m| self.online.get(m))
            .flatten()
        {
            let _ = o.outbox.send(event.clone());
        }
    }

    /// Forgets a session; the user goes offline with their last one.
    pub fn remove_session(&mut self, user: &Username, session: SessionId) {
        if let Some(list) = self.online.get_mut(user) {
            list.retain(|o| o.session != session);
            if list.is_empty() {
                self.online.remove(user);
            }
        }
    }

    /// Fails if the group name is taken.
    pub fn check_new_group(&self, group: &GroupName) -> Result<(), Failure> {
        if self.groups.contains_key(group) {
            return Err(group_taken(group));
        }
        Ok(())
    }

    /// Records a group the store has committed, with its creator as owner
    /// and first member.
    pub fn add_group(&mut self, creator: &Username, group: &GroupName) {
        let members = BTreeSet::from([creator.clone()]);
        let key = self.new_group_key();
        self.send_key_to_user(creator, group, &key);
        self.groups.insert(group.clone(), Group { members, key });
    }

    fn send_key_to_user(&self, user: &Username, group: &GroupName, key: &GroupKey) {
        let event = Outgoing::from(&key_event(group, key));
        for o in self.online.get(user).into_iter().flatten() {
            let _ = o.outbox.send(event.clone());
        }
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

    /// Records a join or leave the store has committed; returns the new
    /// member count. An emptied group stays, with its history and its name.
    /// A member who joins gets the group key; one who leaves makes it
    /// change, so the leaver cannot open later envelopes.
    pub fn set_member(&mut self, user: &Username, group: &GroupName, member: bool) -> usize {
        let Some(g) = self.groups.get_mut(group) else {
            return 0;
        };
        let n = if member {
            g.members.insert(user.clone());
            g.members.len()
        } else {
            g.members.remove(user);
            g.members.len()
        };
        if member {
            let key = g.key.clone();
            self.send_key_to_user(user, group, &key);
        } else {
            self.rotate_group_key(group);
        }
        n
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

    /// The members of each group, other than `sender`. Fails unless every
    /// group exists and has the sender.
    pub fn group_members(
        &self,
        sender: &Username,
        groups: &[GroupName],
    ) -> Result<Vec<(GroupName, Vec<Username>)>, Failure> {
        groups
            .iter()
            .map(|name| {
                let g = self.groups.get(name).ok_or_else(|| no_such_group(name))?;
                if !g.members.contains(sender) {
                    return Err(not_member(name));
                }
                let others = g.members.iter().filter(|m| *m != sender).cloned().collect();
                Ok((name.clone(), others))
            })
            .collect()
    }

    /// The live sessions of these users, except one session.
    pub fn sessions_of<'a>(
        &self,
        users: impl IntoIterator<Item = &'a Username>,
        except: SessionId,
    ) -> Vec<Online> {
        users
            .into_iter()
            .filter_map(|u| self.online.get(u))
            .flatten()
            .filter(|o| o.session != except)
            .cloned()
            .collect()
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
            format!(
                "#{name} ({n} member{}{joined})",
                if n == 1 { "" } else { "s" }
            )
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

    /// Whether `session` is still logged in as `user`.
    pub fn is_online_as(&self, user: &Username, session: SessionId) -> bool {
        self.online
            .get(user)
            .is_some_and(|list| list.iter().any(|o| o.session == session))
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

fn no_such_group(g: &GroupName) -> Failure {
    Failure::new(ErrorCode::NoSuchGroup, format!("no group named #{g}"))
}

fn not_member(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::NotMember,
        format!("you are not a member of #{g}"),
    )
}
