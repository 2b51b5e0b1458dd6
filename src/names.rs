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

/// A conversation as one of its members sees it: a group (`#name`), or the
/// direct conversation with another user (`@name`; a user's notes to
/// themselves are `@` their own name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// The direct conversation with this user.
    User(Username),
    /// This group.
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

/// One message in a conversation's log: the conversation and the
/// message's sequence number in it. Written `<conversation>:<seq>`, e.g.
/// `#ops:17` or `@alice:3`.
///
/// Sequence numbers start at 1 and have no gaps: every member of a
/// conversation sees its messages in the same order, and "everything up to
/// `#ops:17`" is a well-defined point to acknowledge or resume from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageRef {
    /// The conversation, as the reader sees it.
    pub conv: Conversation,
    /// Position in the conversation's log.
    pub seq: u64,
}

impl MessageRef {
    /// Parses `<conversation>:<seq>`.
    pub fn parse(s: &str) -> Option<MessageRef> {
        let (conv, seq) = s.rsplit_once(':')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(MessageRef {
            conv: Conversation::parse(conv).ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Parses a comma-separated list of references.
    pub fn parse_list(s: &str) -> Option<Vec<MessageRef>> {
        s.split(',').map(MessageRef::parse).collect()
    }

    /// Writes a list in its comma-separated wire form.
    pub fn format_list(refs: &[MessageRef]) -> String {
        let items: Vec<String> = refs.iter().map(MessageRef::to_string).collect();
        items.join(",")
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.conv, self.seq)
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

    #[test]
    fn message_refs() {
        let r = MessageRef::parse("#ops:17").unwrap();
        assert_eq!(r.to_string(), "#ops:17");
        assert_eq!(MessageRef::parse("@bob:3").unwrap().seq, 3);
        for bad in [
            "#ops",
            "#ops:",
            "ops:1",
            "#ops:-1",
            "#ops:1x",
            "#:1",
            "@a:99999999999999999999999",
        ] {
            assert!(MessageRef::parse(bad).is_none(), "{bad}");
        }
        let list = MessageRef::parse_list("#a:1,@b:2").unwrap();
        assert_eq!(MessageRef::format_list(&list), "#a:1,@b:2");
        assert!(MessageRef::parse_list("#a:1,,@b:2").is_none());
    }
}
