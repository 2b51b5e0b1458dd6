//! How the interactive prompt shows things: as a chat, not a log.
//!
//! ```text
//! 14:03 #ops <alice> the build is green
//! 14:03 <bob> lunch?                       (a direct message from bob)
//! 14:04 @bob <alice> sure                  (yours to bob, echoed)
//! 14:05 #ops <carol> [file] saved downloads/report.pdf (1.2 MB)
//! -- joined #ops (3 members)               (a reply)
//! !! NO_SUCH_GROUP no group named #dev     (an error)
//! ```
//!
//! Times are local `HH:MM`; a direct conversation is shown by its sender
//! alone when it is the other person, and by `@them` when it is you (from
//! this or another of your sessions). Message ids are hidden unless
//! [`Chat::ids`] is on (`--verbose`, or `/ids` at the prompt), when
//! `#ops:17` stands where `#ops` did. Nicks have a colour each (off with
//! `NO_COLOR` or when output is not a terminal); long lines wrap under the
//! text with a hanging indent. Scripts get the stable
//! [`super::display`] lines instead.

use crate::clock::local_hh_mm;
use crate::event::{GroupNotice, NoticeKind, Reply};
use crate::names::{Conversation, MessageRef, Username};
use crate::text::sanitize;

use super::audio::duration_label;
use super::progress::Progress;
use super::ClientEvent;

/// The prompt's display settings.
#[derive(Debug, Clone, Default)]
pub struct Chat {
    /// Who is logged in here (to show your own messages as yours).
    pub me: Option<Username>,
    /// Show message ids.
    pub ids: bool,
    /// Colour nicks and errors.
    pub color: bool,
    /// Lines go to a pane of their own conversation (the full-screen
    /// client): the conversation is not repeated on each line.
    pub pane: bool,
}

/// Nick colours: ANSI foreground codes readable on dark and light
/// backgrounds.
const NICK_COLORS: [u8; 6] = [31, 32, 33, 35, 36, 34];

impl Chat {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// `<nick>`, in the nick's colour (bold for you).
    fn nick(&self, who: &Username) -> String {
        let text = format!("<{who}>");
        if self.me.as_ref() == Some(who) {
            return self.paint("1", &text);
        }
        self.paint(&nick_color(who).to_string(), &text)
    }

    /// Where a message was: `#ops`, nothing for a direct message from the
    /// other person, `@them` for yours; with its number when ids are on.
    fn place(&self, at: &MessageRef, from: &Username) -> String {
        let shown = match &at.conv {
            _ if self.pane && self.ids => format!(":{}", at.seq),
            _ if self.pane => return String::new(),
            Conversation::User(other) if other == from && !self.ids => return String::new(),
            _ if self.ids => at.to_string(),
            conv => conv.to_string(),
        };
        format!("{} ", self.paint("2", &shown))
    }

    fn said(&self, ms: u64, at: &MessageRef, from: &Username, what: &str) -> String {
        format!(
            "{} {}{} {what}",
            local_hh_mm(ms),
            self.place(at, from),
            self.nick(from)
        )
    }

    /// `-- <text>`: something for you to know.
    pub fn note(&self, text: &str) -> String {
        format!("{} {text}", self.paint("2", "--"))
    }

    /// `!! <text>`: something went wrong.
    pub fn alert(&self, text: &str) -> String {
        format!("{} {text}", self.paint("31", "!!"))
    }

    /// A reply: `-- <text>` or `!! <CODE> <text>`.
    pub fn reply(&self, reply: &Reply) -> String {
        match reply {
            Reply::Ok { text, .. } => self.note(&sanitize(text)),
            Reply::Err { code, text } => self.alert(&format!("{code} {}", sanitize(text))),
        }
    }

    /// Your own message, echoed once the server has it: `to` is where it
    /// went (`@bob`, or `#ops,#dev`), `refs` what the server numbered it.
    pub fn sent(&self, ms: u64, to: &str, refs: &[MessageRef], text: &str) -> String {
        let Some(me) = &self.me else {
            return self.note(&format!("sent to {to}"));
        };
        if self.pane {
            return format!("{} {} {}", local_hh_mm(ms), self.nick(me), sanitize(text));
        }
        let to = if self.ids && !refs.is_empty() {
            refs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            to.to_string()
        };
        format!(
            "{} {} {} {}",
            local_hh_mm(ms),
            self.paint("2", &to),
            self.nick(me),
            sanitize(text)
        )
    }

    /// An event.
    pub fn event(&self, event: &ClientEvent) -> String {
        match event {
            ClientEvent::Message {
                at,
                at_ms,
                from,
                text,
                ..
            } => self.said(*at_ms, at, from, &sanitize(text)),
            ClientEvent::HistoryFile {
                at,
                at_ms,
                from,
                name,
                size,
                voice,
            } => {
                let kind = match voice {
                    Some(v) => format!("[voice {}]", duration_label(v.duration_ms)),
                    None => "[file]".to_string(),
                };
                let what = format!("{kind} {} ({})", sanitize(name), human_bytes(*size));
                self.said(*at_ms, at, from, &what)
            }
            ClientEvent::FileReceived {
                at,
                at_ms,
                from,
                path,
                size,
                voice,
                ..
            } => {
                let path = sanitize(&path.display().to_string()).into_owned();
                let what = match voice {
                    Some(v) => format!(
                        "[voice {}] saved {path} ({}); PLAY {at} to listen",
                        duration_label(v.duration_ms),
                        human_bytes(*size)
                    ),
                    None => format!("[file] saved {path} ({})", human_bytes(*size)),
                };
                self.said(*at_ms, at, from, &what)
            }
            ClientEvent::BadMessage { at, from, reason } => self.alert(&format!(
                "a message {at} from {from} could not be read: {reason}"
            )),
            ClientEvent::FileProgress { name, progress, .. } => self.note(&format!(
                "receiving {}: {}",
                sanitize(name),
                gauge(progress)
            )),
            ClientEvent::UploadProgress { path, progress, .. } => {
                self.note(&format!("sending {}: {}", path.display(), gauge(progress)))
            }
            ClientEvent::FileFailed { at, reason } => {
                self.alert(&format!("file {at} failed: {}", sanitize(reason)))
            }
            ClientEvent::FileSent { path, reply, .. } => match reply {
                Reply::Ok { .. } => self.note(&format!("sent {}", path.display())),
                Reply::Err { code, text } => self.alert(&format!(
                    "could not send {}: {code} {}",
                    path.display(),
                    sanitize(text)
                )),
            },
            ClientEvent::FileSendFailed { path, reason, .. } => {
                self.alert(&format!("could not send {}: {reason}", path.display()))
            }
            ClientEvent::Notice(GroupNotice { kind, group, by }) => match kind {
                NoticeKind::Invited => self.note(&format!(
                    "{by} invited you to {group} (JOIN {group} to follow it)"
                )),
                NoticeKind::Removed => self.note(&format!("{by} removed you from {group}")),
            },
            ClientEvent::ConnectionLost { reason, retry_in } => self.alert(&format!(
                "connection lost ({}); trying again in {:.1} s",
                sanitize(reason),
                retry_in.as_secs_f64()
            )),
            ClientEvent::Reconnected => self.note("reconnected"),
            ClientEvent::Disconnected(why) => {
                self.alert(&format!("disconnected: {}", sanitize(why)))
            }
        }
    }
}

/// The ANSI colour code of a nick: the same nick always gets the same one.
pub fn nick_color(who: &Username) -> u8 {
    let n = who.as_str().bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    NICK_COLORS[n % NICK_COLORS.len()]
}

/// Wraps a line to `width` columns, continuation lines indented to where
/// the text starts (after `HH:MM place <nick> `); colour codes take no
/// room.
pub fn wrap(line: &str, width: usize) -> String {
    if textwrap::core::display_width(line) <= width {
        return line.to_string();
    }
    let indent = hanging_indent(line).min(width / 2);
    let pad = " ".repeat(indent);
    let opts = textwrap::Options::new(width.max(20)).subsequent_indent(&pad);
    textwrap::wrap(line, opts).join("\n")
}

/// Columns before a chat line's text: past the `<nick> ` (or `-- `).
fn hanging_indent(line: &str) -> usize {
    // The nick's `>` may be followed by the end of its colour.
    let upto = match (line.find("> "), line.find(">\x1b[0m ")) {
        (_, Some(i)) => i + ">\x1b[0m ".len(),
        (Some(i), None) => i + 2,
        (None, None) => line.find(' ').map_or(0, |i| i + 1),
    };
    textwrap::core::display_width(&line[..upto])
}

/// `[####......] 40% of 20 MB, 12 MB/s, 1 s left`.
pub fn gauge(p: &Progress) -> String {
    let filled = (p.percent() / 10) as usize;
    format!(
        "[{}{}] {}% of {}, {}/s, {} s left",
        "#".repeat(filled),
        ".".repeat(10 - filled.min(10)),
        p.percent(),
        human_bytes(p.size),
        human_bytes(p.rate() as u64),
        p.left().as_secs_f64().ceil()
    )
}

/// `1.2 MB`, `340 KB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::testing::message;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    /// The line without its local time (which depends on the zone).
    fn rest(line: &str) -> &str {
        line.split_once(' ').unwrap().1
    }

    #[test]
    fn messages_read_like_a_chat() {
        let chat = Chat {
            me: Some(user("alice")),
            ..Chat::default()
        };
        let line = chat.event(&message("#ops:17", "bob", "hi all"));
        assert_eq!(line.len(), 5 + 1 + "#ops <bob> hi all".len());
        assert_eq!(&line[2..3], ":", "HH:MM first: {line}");
        assert_eq!(rest(&line), "#ops <bob> hi all");
        assert_eq!(
            rest(&chat.event(&message("@bob:3", "bob", "lunch?"))),
            "<bob> lunch?"
        );
        // Yours to bob, seen from another of your sessions.
        assert_eq!(
            rest(&chat.event(&message("@bob:4", "alice", "sure"))),
            "@bob <alice> sure"
        );
        assert_eq!(
            rest(&chat.sent(0, "@bob", &[], "sure")),
            "@bob <alice> sure"
        );
    }

    #[test]
    fn ids_show_when_asked_for() {
        let chat = Chat {
            ids: true,
            ..Chat::default()
        };
        assert_eq!(
            rest(&chat.event(&message("@bob:3", "bob", "x"))),
            "@bob:3 <bob> x"
        );
        assert_eq!(
            rest(&chat.event(&message("#ops:17", "bob", "x"))),
            "#ops:17 <bob> x"
        );
    }

    #[test]
    fn colour_only_when_asked_and_text_is_sanitised() {
        let plain = Chat::default();
        let line = plain.event(&message("#ops:1", "bob", "hi\x1b[2J"));
        assert!(!line.contains('\x1b'), "{line:?}");
        let coloured = Chat {
            color: true,
            ..Chat::default()
        };
        let line = coloured.event(&message("#ops:1", "bob", "hi\x1b[2J"));
        assert!(line.contains("\x1b["), "{line:?}");
        assert!(line.ends_with("hi\\x1b[2J"), "{line:?}");
        assert!(coloured
            .reply(&Reply::err(crate::event::ErrorCode::Usage, "x"))
            .contains("\x1b[31m"));
    }

    #[test]
    fn long_lines_wrap_under_the_text() {
        let line = format!("14:03 #ops <bob> {}", "word ".repeat(30));
        let wrapped = wrap(line.trim_end(), 40);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert!(lines.len() > 1, "{wrapped}");
        let indent = "14:03 #ops <bob> ".len();
        for l in &lines[1..] {
            assert!(l.starts_with(&" ".repeat(indent)), "{l:?}");
            assert!(l.len() <= 40, "{l:?}");
        }
        assert_eq!(wrap("short", 40), "short");
        // Colour codes take no room, in the indent either.
        let coloured = Chat {
            color: true,
            ..Chat::default()
        };
        let line = coloured.event(&message("#ops:1", "bob", &"word ".repeat(30)));
        let wrapped = wrap(line.trim_end(), 40);
        let second = wrapped.lines().nth(1).unwrap();
        assert!(
            second.starts_with(&" ".repeat("14:03 #ops <bob> ".len())),
            "{wrapped:?}"
        );
    }

    #[test]
    fn a_transfer_shows_a_gauge_with_rate_and_time_left() {
        let p = Progress {
            done: 8_000_000,
            size: 20_000_000,
            elapsed: std::time::Duration::from_secs(2),
        };
        assert_eq!(gauge(&p), "[####......] 40% of 20 MB, 4.0 MB/s, 3 s left");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1_200_000), "1.2 MB");
        assert_eq!(human_bytes(340_000), "340 KB");
    }
}
