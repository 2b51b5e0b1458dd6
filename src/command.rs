//! What a person types: the original command set, parsed into [`Command`].
//!
//! Pure text -> enum, with no I/O, so it is tested without sockets. Most
//! commands map one-to-one onto a wire [`Request`]; the sending commands
//! differ from the wire (text still to be encrypted, a local path still to
//! be read), so they get their own variants. Groups may be written `#ops`
//! and users `@alice` wherever they are named; group lists may have spaces
//! after their commas (`ops, dev`); a display name with spaces is quoted
//! (`CREATE_USER "Alice Smith" alice pw`).

use std::path::PathBuf;

use crate::names::{GroupName, MessageRef, NameError, Username};
use crate::request::{
    message_too_long, FileTarget, HistoryTarget, Request, Verb, DEFAULT_HISTORY, MAX_FIELD_LEN,
    MAX_HISTORY, MAX_MESSAGE_LEN,
};

/// The text `HELP` prints: every typed command from the verb table.
pub fn help() -> String {
    let rows: Vec<(&str, &str)> = Verb::ALL.iter().filter_map(|v| v.spec().typed).collect();
    let width = rows
        .iter()
        .chain(LOCAL)
        .map(|(u, _)| u.len())
        .max()
        .unwrap_or(0);
    let mut out =
        String::from("Commands (command words in any case; #group and @user work everywhere):\n");
    let rows = rows.into_iter().chain(LOCAL.iter().copied());
    for (usage, what) in rows {
        out.push_str(&format!("  {usage:width$}  {what}\n"));
    }
    out.push_str("  HELP");
    out
}

/// Commands the client carries out itself (no verb of their own on the
/// wire): usage and what they do.
const LOCAL: &[(&str, &str)] = &[
    (
        "RECORD <user|#group> [seconds]",
        "record a voice note (default 10 s, at most 600) and send it",
    ),
    (
        "PLAY <conv>:<seq>",
        "play a voice note you received, e.g. PLAY @bob:3",
    ),
];

/// The longest voice note `RECORD` takes, in seconds.
pub const MAX_RECORD_SECS: u64 = 600;

/// The command words, for tab completion.
pub fn words() -> Vec<&'static str> {
    let mut w: Vec<&str> = Verb::ALL
        .iter()
        .filter(|v| v.spec().typed.is_some())
        .map(|v| {
            v.spec()
                .typed
                .map_or("", |(u, _)| u.split(' ').next().unwrap_or(""))
        })
        .collect();
    w.extend(["RECORD", "PLAY", "HELP"]);
    let mut seen = std::collections::HashSet::new();
    w.retain(|x| seen.insert(*x));
    w
}

/// One typed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the command list (answered locally).
    Help,
    /// A command sent as it is.
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
    /// `SEND VOICE ...` or `SEND_TO_GROUP VOICE ...`: a WAV file sent as a
    /// voice note (checked, with its length announced).
    SendVoice {
        /// Recipients.
        target: FileTarget,
        /// The local WAV file.
        path: PathBuf,
    },
    /// `RECORD <user|#group> [seconds]`: record a voice note from the
    /// microphone (through the system's recorder) and send it.
    Record {
        /// Recipients.
        target: FileTarget,
        /// How long to record.
        secs: u64,
    },
    /// `PLAY <conv>:<seq>`: play a received voice note (through the
    /// system's player).
    Play(MessageRef),
    /// `LOGIN <username>` or `CREATE_USER <name> <username>` without the
    /// password: the client asks for it (without echo).
    NeedsPassword {
        /// The display name, for `CREATE_USER`.
        create: Option<String>,
        /// The account.
        username: Username,
    },
}

impl Command {
    /// The command with the password filled in.
    pub fn with_password(self, password: String) -> Command {
        match self {
            Command::NeedsPassword {
                create: Some(name),
                username,
            } => Command::Plain(Request::CreateUser {
                username,
                password,
                name,
            }),
            Command::NeedsPassword {
                create: None,
                username,
            } => Command::Plain(Request::Login {
                username,
                password,
                token: None,
            }),
            other => other,
        }
    }

    /// Whether the typed line holds a password (and so must not be kept
    /// in history).
    pub fn has_password(&self) -> bool {
        matches!(
            self,
            Command::Plain(Request::Login { .. } | Request::CreateUser { .. })
        )
    }
}

/// Why a typed line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not one of the command words.
    #[error("unknown command {0:?}; type HELP for the list")]
    Unknown(String),
    /// Wrong arguments, with the usage line.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// A bad user or group name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// A message over [`MAX_MESSAGE_LEN`] bytes.
    #[error("{}", message_too_long())]
    TooLong,
}

/// The typed usage line of a verb.
fn usage(v: Verb) -> &'static str {
    v.spec().typed.map_or(v.spec().usage, |(u, _)| u)
}

/// Splits off the first space-separated word; the rest keeps its spaces.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    match s.split_once(' ') {
        Some((w, rest)) => (w, rest),
        None => (s, ""),
    }
}

/// A user, written `alice` or `@alice`.
fn user(s: &str) -> Result<Username, NameError> {
    Username::parse(s.strip_prefix('@').unwrap_or(s))
}

/// A group, written `ops` or `#ops`.
fn group(s: &str) -> Result<GroupName, NameError> {
    GroupName::parse(s.strip_prefix('#').unwrap_or(s))
}

/// A comma-separated group list, spaces after commas allowed; splits it
/// off the front of `s` and returns the rest.
fn group_list(s: &str) -> Result<(Vec<GroupName>, &str), CommandError> {
    let mut rest = s.trim_start_matches(' ');
    let mut groups: Vec<GroupName> = Vec::new();
    loop {
        let end = rest.find([',', ' ']).unwrap_or(rest.len());
        let g = group(&rest[..end])?;
        if !groups.contains(&g) {
            groups.push(g);
        }
        rest = &rest[end..];
        let after_space = rest.trim_start_matches(' ');
        if let Some(more) = after_space.strip_prefix(',') {
            rest = more.trim_start_matches(' ');
            continue;
        }
        return Ok((groups, rest.strip_prefix(' ').unwrap_or(rest)));
    }
}

/// A display name: one word, or a quoted phrase. Returns it and the rest.
fn display_name(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start_matches(' ');
    let (name, rest) = if let Some(q) = s.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].trim().to_string(), &q[end + 1..])
    } else {
        let (w, rest) = word(s);
        (w.to_string(), rest)
    };
    let ok = !name.is_empty() && name.len() <= MAX_FIELD_LEN && !name.chars().any(char::is_control);
    ok.then_some((name, rest))
}

/// A password as the wire carries it: 1 to 255 bytes, no spaces or
/// control characters.
pub(crate) fn password(s: &str) -> Option<String> {
    let ok =
        !s.is_empty() && s.len() <= MAX_FIELD_LEN && !s.chars().any(|c| c.is_control() || c == ' ');
    ok.then(|| s.to_string())
}

impl Command {
    /// Parses one typed line. IRC habits work too: `/msg`, `/join`,
    /// `/part`, `/quit`, `/help`.
    pub fn parse(line: &str) -> Result<Command, CommandError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (first, rest) = word(line);
        let verb = match first.to_ascii_lowercase().as_str() {
            "/msg" | "/query" => "SEND".to_string(),
            "/join" => "JOIN".into(),
            "/part" | "/leave" => "LEAVE".into(),
            "/quit" | "/exit" => "QUIT".into(),
            "/help" => "HELP".into(),
            "/list" => "LIST".into(),
            "/history" => "HISTORY".into(),
            _ => first.to_ascii_uppercase(),
        };
        match verb.as_str() {
            "HELP" => return Ok(Command::Help),
            "RECORD" | "/RECORD" => return parse_record(rest),
            "PLAY" | "/PLAY" => {
                let usage = || CommandError::Usage("PLAY <conv>:<seq>");
                let at = rest.trim();
                let at = at
                    .strip_prefix('#')
                    .map_or_else(|| at.to_string(), |g| format!("#{g}"));
                return MessageRef::parse(&at).map(Command::Play).ok_or_else(usage);
            }
            _ => {}
        }
        // `/msg #ops hi` goes to a group.
        let verb = if verb == "SEND" && rest.trim_start().starts_with('#') {
            "SEND_TO_GROUP".to_string()
        } else {
            verb
        };
        let Some(v) = Verb::from_word(&verb).filter(|v| v.spec().typed.is_some()) else {
            return Err(CommandError::Unknown(crate::request::truncate(first, 32)));
        };
        let args: Vec<&str> = rest.split_whitespace().collect();
        let bad = || CommandError::Usage(usage(v));
        let one = |args: &[&str]| -> Result<String, CommandError> {
            match args {
                [a] => Ok(a.to_string()),
                _ => Err(bad()),
            }
        };
        let plain = |r: Request| Ok(Command::Plain(r));
        match v {
            Verb::CreateUser => {
                let (name, rest) = display_name(rest).ok_or_else(bad)?;
                let a: Vec<&str> = rest.split_whitespace().collect();
                match a.as_slice() {
                    [u] => Ok(Command::NeedsPassword {
                        create: Some(name),
                        username: user(u)?,
                    }),
                    [u, pw] => plain(Request::CreateUser {
                        username: user(u)?,
                        password: password(pw).ok_or_else(bad)?,
                        name,
                    }),
                    _ => Err(bad()),
                }
            }
            Verb::Login => match args.as_slice() {
                [u] => Ok(Command::NeedsPassword {
                    create: None,
                    username: user(u)?,
                }),
                [u, pw] => plain(Request::Login {
                    username: user(u)?,
                    password: password(pw).ok_or_else(bad)?,
                    token: None,
                }),
                _ => Err(bad()),
            },
            Verb::CreateGroup => match args.as_slice() {
                [g] => plain(Request::CreateGroup {
                    group: group(g)?,
                    private: false,
                }),
                [g, p] if p.eq_ignore_ascii_case("private") => plain(Request::CreateGroup {
                    group: group(g)?,
                    private: true,
                }),
                _ => Err(bad()),
            },
            Verb::Invite | Verb::Kick | Verb::Promote | Verb::Demote | Verb::Handover => {
                let [g, u] = args.as_slice() else {
                    return Err(bad());
                };
                let head = format!("{} {} {}", v.spec().word, group(g)?, user(u)?);
                Request::parse(crate::frame::Frame::head(head))
                    .map(Command::Plain)
                    .map_err(|_| bad())
            }
            Verb::Join => plain(Request::Join(group(&one(&args)?)?)),
            Verb::Leave => plain(Request::Leave(group(&one(&args)?)?)),
            Verb::List | Verb::Logout | Verb::Quit if !args.is_empty() => Err(bad()),
            Verb::List => plain(Request::List),
            Verb::Logout => plain(Request::Logout),
            Verb::Quit => plain(Request::Quit),
            Verb::History => {
                let (name, count) = match args.as_slice() {
                    [n] => (*n, None),
                    [n, c] => (*n, Some(*c)),
                    _ => return Err(bad()),
                };
                let with = if name.starts_with('@') {
                    HistoryTarget::User(user(name)?)
                } else if name.starts_with('#') {
                    HistoryTarget::Group(group(name)?)
                } else {
                    HistoryTarget::Either(user(name)?.to_string())
                };
                let limit = match count {
                    None => DEFAULT_HISTORY,
                    Some(c) => match c.parse::<u64>() {
                        Ok(0) | Err(_) => return Err(bad()),
                        Ok(n) => n.min(MAX_HISTORY as u64) as usize,
                    },
                };
                plain(Request::History { with, limit })
            }
            Verb::Send | Verb::SendToGroup => parse_send(v, rest),
            Verb::SendFile | Verb::SendToGroupFile | Verb::SendVoice | Verb::SendToGroupVoice => {
                parse_send(v, rest)
            }
            // Not typed: filtered out above.
            Verb::Help
            | Verb::Resume
            | Verb::Chunk
            | Verb::FileEnd
            | Verb::FileAbort
            | Verb::Ack
            | Verb::Pong => Err(CommandError::Unknown(first.to_string())),
        }
    }
}

/// `RECORD <user|#group> [seconds]`.
fn parse_record(rest: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "RECORD <user|#group> [seconds] (at most 600)";
    let args: Vec<&str> = rest.split_whitespace().collect();
    let (to, secs) = match args.as_slice() {
        [to] => (*to, 10),
        [to, secs] => match secs.parse::<u64>() {
            Ok(n) if (1..=MAX_RECORD_SECS).contains(&n) => (*to, n),
            _ => return Err(CommandError::Usage(USAGE)),
        },
        _ => return Err(CommandError::Usage(USAGE)),
    };
    let target = if to.starts_with('#') {
        FileTarget::Groups(vec![group(to)?])
    } else {
        FileTarget::User(user(to)?)
    };
    Ok(Command::Record { target, secs })
}

fn parse_send(verb: Verb, rest: &str) -> Result<Command, CommandError> {
    let to_user = matches!(verb, Verb::Send | Verb::SendFile | Verb::SendVoice);
    let bad = || CommandError::Usage(usage(verb));
    let (first, after) = word(rest);
    // FILE is a reserved name, so "SEND FILE bob x" can only mean a file;
    // VOICE in capitals means a voice note ("SEND voice hi" still writes
    // to a user named voice).
    let voice = first == "VOICE";
    if first.eq_ignore_ascii_case("file") || voice {
        let (target, path) = if to_user {
            let (to, path) = word(after);
            (FileTarget::User(user(to)?), path)
        } else {
            let (groups, path) = group_list(after)?;
            (FileTarget::Groups(groups), path)
        };
        let path = path.trim();
        if path.is_empty() {
            return Err(bad());
        }
        let path = PathBuf::from(path);
        return Ok(if voice {
            Command::SendVoice { target, path }
        } else {
            Command::SendFile { target, path }
        });
    }
    let (target, text) = if to_user {
        if first.is_empty() {
            return Err(bad());
        }
        (FileTarget::User(user(first)?), after)
    } else {
        if rest.trim().is_empty() {
            return Err(bad());
        }
        let (groups, text) = group_list(rest)?;
        (FileTarget::Groups(groups), text)
    };
    if text.is_empty() {
        return Err(bad());
    }
    if text.len() > MAX_MESSAGE_LEN {
        return Err(CommandError::TooLong);
    }
    let text = text.to_string();
    Ok(match target {
        FileTarget::User(to) => Command::Send { to, text },
        FileTarget::Groups(groups) => Command::SendToGroup { groups, text },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::parse_group_list;

    fn u(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    #[test]
    fn send_keeps_the_spaces_of_the_message() {
        assert_eq!(
            Command::parse("send bob  hello   there "),
            Ok(Command::Send {
                to: u("bob"),
                text: " hello   there ".into()
            })
        );
        assert_eq!(
            Command::parse("SEND @bob hi"),
            Ok(Command::Send {
                to: u("bob"),
                text: "hi".into()
            })
        );
    }

    #[test]
    fn group_sends_and_files() {
        let ab = parse_group_list("a,b").unwrap();
        for line in [
            "SEND_TO_GROUP a,b hi all",
            "SEND_TO_GROUP #a,#b hi all",
            "send_to_group a, b hi all",
            "SEND_TO_GROUP a ,b hi all",
        ] {
            assert_eq!(
                Command::parse(line),
                Ok(Command::SendToGroup {
                    groups: ab.clone(),
                    text: "hi all".into()
                }),
                "{line}"
            );
        }
        assert_eq!(
            Command::parse("/msg #a hi"),
            Ok(Command::SendToGroup {
                groups: vec![ab[0].clone()],
                text: "hi".into()
            })
        );
        assert_eq!(
            Command::parse("SEND FILE bob /tmp/my file.txt"),
            Ok(Command::SendFile {
                target: FileTarget::User(u("bob")),
                path: PathBuf::from("/tmp/my file.txt")
            })
        );
        assert_eq!(
            Command::parse("send_to_group file #a, b x.bin"),
            Ok(Command::SendFile {
                target: FileTarget::Groups(ab),
                path: PathBuf::from("x.bin")
            })
        );
    }

    #[test]
    fn accounts_and_passwords() {
        assert_eq!(
            Command::parse(r#"CREATE_USER "Alice Smith" alice pw"#),
            Ok(Command::Plain(Request::CreateUser {
                username: u("alice"),
                password: "pw".into(),
                name: "Alice Smith".into()
            }))
        );
        assert_eq!(
            Command::parse("CREATE_USER Alice alice pw"),
            Ok(Command::Plain(Request::CreateUser {
                username: u("alice"),
                password: "pw".into(),
                name: "Alice".into()
            }))
        );
        let needs = Command::parse("LOGIN alice").unwrap();
        assert_eq!(
            needs,
            Command::NeedsPassword {
                create: None,
                username: u("alice")
            }
        );
        assert!(!needs.has_password());
        let filled = needs.with_password("s3cret".into());
        assert!(filled.has_password());
        assert!(matches!(
            Command::parse(r#"CREATE_USER "Alice alice pw"#),
            Err(CommandError::Usage(_))
        ));
    }

    #[test]
    fn plain_commands_and_aliases() {
        assert_eq!(Command::parse("list"), Ok(Command::Plain(Request::List)));
        assert_eq!(Command::parse("help"), Ok(Command::Help));
        assert_eq!(Command::parse("/quit"), Ok(Command::Plain(Request::Quit)));
        for line in ["join devs", "JOIN #devs", "/join #devs"] {
            assert_eq!(
                Command::parse(line),
                Ok(Command::Plain(Request::Join(
                    GroupName::parse("devs").unwrap()
                ))),
                "{line}"
            );
        }
        assert_eq!(
            Command::parse("HISTORY @alice 9999"),
            Ok(Command::Plain(Request::History {
                with: HistoryTarget::User(u("alice")),
                limit: MAX_HISTORY
            }))
        );
        assert!(help().contains("SEND_TO_GROUP FILE"));
        assert!(words().contains(&"SEND_TO_GROUP"));
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
        assert_eq!(
            Command::parse("SEND bob"),
            Err(CommandError::Usage(usage(Verb::Send)))
        );
        assert_eq!(
            Command::parse("SEND"),
            Err(CommandError::Usage(usage(Verb::Send)))
        );
        assert!(matches!(
            Command::parse("SEND b@d hi"),
            Err(CommandError::BadName(_))
        ));
        assert!(matches!(
            Command::parse("LIST now"),
            Err(CommandError::Usage(_))
        ));
    }
}
