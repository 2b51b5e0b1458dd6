//! The server's shared state: accounts, groups, and who is online where.
//!
//! One [`State`] sits behind a mutex in [`super::Shared`]. Its methods check
//! a request against the state and change it, returning either what the
//! caller needs to act on (recipients' outboxes, text for a reply) or a
//! [`Failure`] that becomes an `ERR` reply. They never do I/O, so the lock is
//! held only for map lookups; pushing to outboxes happens after it is
//! released.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::event::ErrorCode;
use crate::names::{GroupName, Username};
use crate::password::Verifier;

use super::outbox::Outbox;

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

struct Account {
    /// Display name from `CREATE_USER`.
    #[allow(dead_code)] // shown by later commands (profiles, LIST details)
    name: String,
    verifier: Verifier,
}

struct Group {
    /// The creator; kept for moderation rights later.
    #[allow(dead_code)]
    owner: Username,
    members: BTreeSet<Username>,
}

/// Accounts, groups and live sessions.
#[derive(Default)]
pub struct State {
    accounts: HashMap<Username, Account>,
    groups: BTreeMap<GroupName, Group>,
    online: HashMap<Username, Vec<Online>>,
}

impl State {
    /// Registers a new account.
    pub fn create_user(
        &mut self,
        name: String,
        username: &Username,
        verifier: Verifier,
    ) -> Result<(), Failure> {
        if self.accounts.contains_key(username) {
            return Err(Failure::new(
                ErrorCode::UserExists,
                format!("username {username} is taken"),
            ));
        }
        self.accounts
            .insert(username.clone(), Account { name, verifier });
        Ok(())
    }

    /// The verifier for `username`, if the account exists (cloned so the
    /// check can run without the lock).
    pub fn verifier(&self, username: &Username) -> Option<Verifier> {
        self.accounts.get(username).map(|a| a.verifier.clone())
    }

    /// Marks a session as logged in as `user`.
    pub fn add_session(&mut self, user: &Username, online: Online) {
        self.online.entry(user.clone()).or_default().push(online);
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

    /// Creates a group with `creator` as owner and first member.
    pub fn create_group(&mut self, creator: &Username, group: &GroupName) -> Result<(), Failure> {
        if self.groups.contains_key(group) {
            return Err(Failure::new(
                ErrorCode::GroupExists,
                format!("group #{group} already exists; JOIN it instead"),
            ));
        }
        let members = BTreeSet::from([creator.clone()]);
        self.groups.insert(
            group.clone(),
            Group {
                owner: creator.clone(),
                members,
            },
        );
        Ok(())
    }

    /// Adds `user` to an existing group; returns its new member count.
    pub fn join(&mut self, user: &Username, group: &GroupName) -> Result<usize, Failure> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| no_such_group(group))?;
        if !g.members.insert(user.clone()) {
            return Err(Failure::new(
                ErrorCode::AlreadyMember,
                format!("you are already in #{group}"),
            ));
        }
        Ok(g.members.len())
    }

    /// Removes `user` from a group. An emptied group stays, so its name
    /// (and, later, its history) is not up for grabs.
    pub fn leave(&mut self, user: &Username, group: &GroupName) -> Result<(), Failure> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| no_such_group(group))?;
        if !g.members.remove(user) {
            return Err(not_member(group));
        }
        Ok(())
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

    /// The live sessions of `to`, for a direct message or file.
    pub fn user_recipients(&self, to: &Username) -> Result<Vec<Online>, Failure> {
        if !self.accounts.contains_key(to) {
            return Err(Failure::new(
                ErrorCode::UnknownUser,
                format!("no user named {to}"),
            ));
        }
        match self.online.get(to) {
            Some(list) => Ok(list.clone()),
            None => Err(Failure::new(
                ErrorCode::UserOffline,
                format!("{to} is not online; try again later"),
            )),
        }
    }

    /// For each group, the live sessions of its members other than the
    /// sending session. Fails unless every group exists and has the sender.
    pub fn group_recipients(
        &self,
        sender: &Username,
        session: SessionId,
        groups: &[GroupName],
    ) -> Result<Vec<(GroupName, Vec<Online>)>, Failure> {
        let mut out = Vec::with_capacity(groups.len());
        for name in groups {
            let g = self.groups.get(name).ok_or_else(|| no_such_group(name))?;
            if !g.members.contains(sender) {
                return Err(not_member(name));
            }
            let sessions = g
                .members
                .iter()
                .filter_map(|m| self.online.get(m))
                .flatten()
                .filter(|o| o.session != session)
                .cloned()
                .collect();
            out.push((name.clone(), sessions));
        }
        Ok(out)
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

fn no_such_group(g: &GroupName) -> Failure {
    Failure::new(ErrorCode::NoSuchGroup, format!("no group named #{g}"))
}

fn not_member(g: &GroupName) -> Failure {
    Failure::new(
        ErrorCode::NotMember,
        format!("you are not a member of #{g}"),
    )
}
