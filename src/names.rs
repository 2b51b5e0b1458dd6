//! Validated user and group names, and the conversations they name.
//!
//! Names are parsed once at the edge ([`crate::request`], [`crate::command`])
//! into [`Username`] and [`GroupName`]; everything past the parser can rely
//! on them being 1 to [`MAX_NAME_LEN`] characters from `[a-z0-9_.-]`,
//! starting with a letter or digit. Names are case-insensitive: they are
//! stored in lower case, so `Alice` and `alice` are the same user. That keeps them safe to print, to use as
//! whitespace-separated tokens on the wire, and (later) as file or key names.

use std::fmt;

/// The longest user or group name.
pub const MAX_NAME_LEN: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty or longer than [`MAX_NAME_LEN`].
    Length,
    /// A character outside `[A-Za-z0-9_.-]`, or a first character that is not a letter or digit.
    Characters,
    /// A word the command syntax reserves (`FILE`).
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Length => write!(f, "names are 1 to {MAX_NAME_LEN} characters"),
            NameError::Characters => f.write_str(
                "names use only letters, digits, '_', '.' and '-', and start with a letter or digit",
            ),
            NameError::Reserved => f.write_str("'file' is reserved and cannot be a name"),
        }
    }
}

impl std::error::Error for NameError {}

fn check(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(NameError::Length);
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !s.chars().all(ok_char) || !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::Characters);
    }
    // `SEND FILE bob x` must never mean "send 'bob x' to a user called FILE".
    if s.eq_ignore_ascii_case("file") {
        return Err(NameError::Reserved);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
                        /// Validates `s` as a name, in lower case.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check(s).map(|()| $name(s.to_ascii_lowercase()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A user's login name.
    Username
);
name_type!(
    /// A group's name.
    GroupName
);

/// Where a delivered message was addressed: a user (for direct messages,
/// the recipient) or a group. Written `@name` or `#name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// A direct message to this user.
    User(Username),
    /// A message to this group.
    Group(GroupName),
}

impl Conversation {
    /// Parses `@user` or `#group`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if let Some(u) = s.strip_prefix('@') {
            Username::parse(u).map(Conversation::User)
        } else if let Some(g) = s.strip_prefix('#') {
            GroupName::parse(g).map(Conversation::Group)
        } else {
            Err(NameError::Characters)
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conversation::User(u) => write!(f, "@{u}"),
            Conversation::Group(g) => write!(f, "#{g}"),
        }
    }
}

/// Parses a comma-separated list of group names, refusing empty items and
/// dropping repeats (so `a,a` sends once).
pub fn parse_group_list(s: &str) -> Result<Vec<GroupName>, NameError> {
    let mut groups: Vec<GroupName> = Vec::new();
    for item in s.split(',') {
        let g = GroupName::parse(item)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(groups)
}

/// Writes a group list in the comma-separated wire form.
pub fn format_group_list(groups: &[GroupName]) -> String {
    let names: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a.b-c_9").is_ok());
        assert_eq!(Username::parse(""), Err(NameError::Length));
        assert_eq!(Username::parse(&"x".repeat(33)), Err(NameError::Length));
        assert_eq!(Username::parse("-bob"), Err(NameError::Characters));
        assert_eq!(Username::parse("bob smith"), Err(NameError::Characters));
        assert_eq!(Username::parse("bö"), Err(NameError::Characters));
        assert_eq!(Username::parse("../x"), Err(NameError::Characters));
        assert_eq!(GroupName::parse("File"), Err(NameError::Reserved));
        assert_eq!(Username::parse("Alice"), Username::parse("alice"));
        assert_eq!(Username::parse("ALICE").unwrap().as_str(), "alice");
    }

    #[test]
    fn conversations_and_group_lists() {
        let c = Conversation::parse("#devs").unwrap();
        assert_eq!(c.to_string(), "#devs");
        assert_eq!(Conversation::parse("@bob").unwrap().to_string(), "@bob");
        assert!(Conversation::parse("bob").is_err());
        let gs = parse_group_list("a,b,a").unwrap();
        assert_eq!(format_group_list(&gs), "a,b");
        assert!(parse_group_list("a,,b").is_err());
    }
}
