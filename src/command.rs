//! What a person types: the original command set, parsed into [`Command`].
//!
//! Pure text -> enum, with no I/O, so it is tested without sockets. Most
//! commands map one-to-one onto a wire [`Request`] and reuse its parser;
//! the sending commands differ from the wire (text still to be encrypted, a
//! local path still to be read), so they get their own variants.

use std::fmt;
use std::path::PathBuf;

use crate::frame::Frame;
use crate::names::{parse_group_list, GroupName, NameError, Username};
use crate::request::{message_too_long, FileTarget, ParseError, Request, MAX_MESSAGE_LEN};

/// The text `HELP` prints.
pub const HELP: &str = "\
Commands (command words in any case):
  CREATE_USER <name> <username> <password>   create an account
  LOGIN <username> <password>                log in
  CREATE_GROUP <group>                       create a group and join it
  JOIN <group> | LEAVE <group>               join or leave a group
  LIST                                       groups, members, who is online
  SEND <username> <message>                  direct message
  SEND_TO_GROUP <group>[,<group>...] <message>
  SEND FILE <username> <path>                send a file
  SEND_TO_GROUP FILE <group>[,<group>...] <path>
  HISTORY <username|group> [N]               the last N (default 20) messages
  LOGOUT | QUIT | HELP";

/// The command words, for tab completion.
pub const WORDS: [&str; 13] = [
    "CREATE_USER",
    "LOGIN",
    "CREATE_GROUP",
    "JOIN",
    "LEAVE",
    "LIST",
    "SEND",
    "SEND_TO_GROUP",
    "FILE",
    "HISTORY",
    "LOGOUT",
    "QUIT",
    "HELP",
];

/// One typed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the command list (answered locally).
    Help,
    /// A command sent as-is: account, group, `LIST`, `LOGOUT`, `QUIT`.
    Plain(Request),
    /// `SEND <username> <message>`
    Send {
        /// Recipient.
        to: Username,
        /// The message, spaces kept.
        text: String,
    },
    /// `SEND_TO_GROUP <group>[,<group>...] <message>`
    SendToGroup {
        /// Recipient groups.
        groups: Vec<GroupName>,
        /// The message, spaces kept.
        text: String,
    },
    /// `SEND FILE ...` or `SEND_TO_GROUP FILE ...`
    SendFile {
        /// Recipients.
        target: FileTarget,
        /// The local file.
        path: PathBuf,
    },
}

/// Why a typed line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not one of the command words.
    Unknown(String),
    /// Wrong arguments, with the usage line.
    Usage(&'static str),
    /// A bad user or group name.
    BadName(NameError),
    /// A message over [`MAX_MESSAGE_LEN`] bytes.
    TooLong,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown(w) => write!(f, "unknown command {w:?}; type HELP for the list"),
            CommandError::Usage(u) => write!(f, "usage: {u}"),
            CommandError::BadName(e) => write!(f, "{e}"),
            CommandError::TooLong => f.write_str(&message_too_long()),
        }
    }
}

impl std::error::Error for CommandError {}

impl From<NameError> for CommandError {
    fn from(e: NameError) -> Self {
        CommandError::BadName(e)
    }
}

const U_SEND: &str = "SEND <username> <message>  or  SEND FILE <username> <path>";
const U_SEND_GROUP: &str =
    "SEND_TO_GROUP <group>[,<group>...] <message>  or  SEND_TO_GROUP FILE <group>[,...] <path>";

/// Splits off the first space-separated word; the rest keeps its spaces.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    match s.split_once(' ') {
        Some((w, rest)) => (w, rest),
        None => (s, ""),
    }
}

impl Command {
    /// Parses one typed line.
    pub fn parse(line: &str) -> Result<Command, CommandError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, rest) = word(line);
        let upper = verb.to_ascii_uppercase();
        match upper.as_str() {
            "HELP" => Ok(Command::Help),
            "SEND" | "SEND_TO_GROUP" => parse_send(&upper, rest),
            "CREATE_USER" | "LOGIN" | "CREATE_GROUP" | "JOIN" | "LEAVE" | "LIST" | "LOGOUT"
            | "QUIT" | "HISTORY" => {
                // Same syntax as the wire: reuse its parser and its checks.
                let args: Vec<&str> = rest.split_whitespace().collect();
                let head = format!("{upper} {}", args.join(" "));
                match Request::parse(Frame::head(head.trim_end())) {
                    Ok(r) => Ok(Command::Plain(r)),
                    Err(ParseError::Usage(u)) => Err(CommandError::Usage(u)),
                    Err(ParseError::BadName(e)) => Err(CommandError::BadName(e)),
                    Err(_) => Err(CommandError::Unknown(verb.to_string())),
                }
            }
            _ => Err(CommandError::Unknown(crate::request::truncate(verb, 32))),
        }
    }
}

fn parse_send(verb: &str, rest: &str) -> Result<Command, CommandError> {
    let usage = if verb == "SEND" { U_SEND } else { U_SEND_GROUP };
    let (first, after) = word(rest);
    let (second, tail) = word(after);
    let target = |name: &str| -> Result<FileTarget, CommandError> {
        Ok(if verb == "SEND" {
            FileTarget::User(Username::parse(name)?)
        } else {
            FileTarget::Groups(parse_group_list(name)?)
        })
    };
    // FILE is a reserved name, so "SEND FILE bob x" can only mean a file.
    if first.eq_ignore_ascii_case("file") && !second.is_empty() && !tail.trim().is_empty() {
        return Ok(Command::SendFile {
            target: target(second)?,
            path: PathBuf::from(tail.trim()),
        });
    }
    if first.is_empty() || after.is_empty() {
        return Err(CommandError::Usage(usage));
    }
    if after.len() > MAX_MESSAGE_LEN {
        return Err(CommandError::TooLong);
    }
    let text = after.to_string();
    match target(first)? {
        FileTarget::User(to) => Ok(Command::Send { to, text }),
        FileTarget::Groups(groups) => Ok(Command::SendToGroup { groups, text }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    #[test]
    fn send_keeps_the_spaces_of_the_message() {
        assert_eq!(
            Command::parse("send bob  hello   there "),
            Ok(Command::Send {
                to: user("bob"),
                text: " hello   there ".into()
            })
        );
    }

    #[test]
    fn group_sends_and_files() {
        assert_eq!(
            Command::parse("SEND_TO_GROUP a,b hi all"),
            Ok(Command::SendToGroup {
                groups: parse_group_list("a,b").unwrap(),
                text: "hi all".into()
            })
        );
        assert_eq!(
            Command::parse("SEND FILE bob /tmp/my file.txt"),
            Ok(Command::SendFile {
                target: FileTarget::User(user("bob")),
                path: PathBuf::from("/tmp/my file.txt")
            })
        );
        assert_eq!(
            Command::parse("send_to_group file devs x.bin"),
            Ok(Command::SendFile {
                target: FileTarget::Groups(parse_group_list("devs").unwrap()),
                path: PathBuf::from("x.bin")
            })
        );
    }

    #[test]
    fn plain_commands_reuse_the_wire_parser() {
        assert_eq!(Command::parse("list"), Ok(Command::Plain(Request::List)));
        assert_eq!(Command::parse("help"), Ok(Command::Help));
        assert_eq!(
            Command::parse("join devs"),
            Ok(Command::Plain(Request::Join(
                GroupName::parse("devs").unwrap()
            )))
        );
        assert!(matches!(
            Command::parse("LOGIN bob"),
            Err(CommandError::Usage(_))
        ));
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Command::parse("DANCE"),
            Err(CommandError::Unknown(_))
        ));
        assert!(matches!(Command::parse(""), Err(CommandError::Unknown(_))));
        assert!(matches!(
            Command::parse("CHUNK 1 2 3"),
            Err(CommandError::Unknown(_))
        ));
        assert_eq!(Command::parse("SEND bob"), Err(CommandError::Usage(U_SEND)));
        assert_eq!(Command::parse("SEND"), Err(CommandError::Usage(U_SEND)));
        assert!(matches!(
            Command::parse("SEND b@d hi"),
            Err(CommandError::BadName(_))
        ));
    }
}
