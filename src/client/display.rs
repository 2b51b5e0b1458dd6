//! How the client prints replies and events: one line each, in a stable
//! format that people read and scripts grep (the REPL and scripted mode use
//! the same lines).
//!
//! ```text
//! OK <text>
//! ERR <CODE> <text>
//! MSG <id> <time> <from> -> <@you|#group>: <text>
//! FILE <id> <time> <from> -> <@you|#group>: saved <path> (<size> bytes)
//! PROGRESS <id> <name> <received>/<size> bytes (<percent>%)
//! FILE_FAILED <id>: <reason>
//! FILE_SENT <id> <path>: <server reply>
//! FILE_SEND_FAILED <id> <path>: <reason>
//! MSG_FAILED <id> from <from>: <reason>
//! DISCONNECTED <reason>
//! ```
//!
//! Everything that came from another user passes through [`sanitize`], so a
//! message cannot move the cursor, change colours or reorder the line.

use crate::clock::format_ms;
use crate::event::Reply;
pub use crate::text::sanitize;

use super::ClientEvent;

/// The line for a reply.
pub fn reply_line(reply: &Reply) -> String {
    match reply {
        Reply::Ok(t) if t.is_empty() => "OK".to_string(),
        Reply::Ok(t) => format!("OK {}", sanitize(t)),
        Reply::Err(code, t) => format!("ERR {code} {}", sanitize(t)),
    }
}

/// The line for an event.
pub fn event_line(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Message {
            id,
            at_ms,
            from,
            to,
            text,
            ..
        } => format!(
            "MSG {id} {} {from} -> {to}: {}",
            format_ms(*at_ms),
            sanitize(text)
        ),
        ClientEvent::HistoryFile {
            id,
            at_ms,
            from,
            to,
            name,
            size,
        } => format!(
            "FILE {id} {} {from} -> {to}: {} ({size} bytes)",
            format_ms(*at_ms),
            sanitize(name)
        ),
        ClientEvent::BadMessage { id, from, reason } => {
            format!("MSG_FAILED {id} from {from}: {reason}")
        }
        ClientEvent::FileProgress {
            id,
            name,
            received,
            size,
        } => format!(
            "PROGRESS {id} {} {received}/{size} bytes ({}%)",
            sanitize(name),
            received * 100 / (*size).max(1)
        ),
        ClientEvent::FileReceived {
            id,
            at_ms,
            from,
            to,
            path,
            size,
        } => format!(
            "FILE {id} {} {from} -> {to}: saved {} ({size} bytes)",
            format_ms(*at_ms),
            sanitize(&path.display().to_string())
        ),
        ClientEvent::FileFailed { id, reason } => {
            format!("FILE_FAILED {id}: {}", sanitize(reason))
        }
        ClientEvent::FileSent { id, path, reply } => {
            format!("FILE_SENT {id} {}: {}", path.display(), reply_line(reply))
        }
        ClientEvent::FileSendFailed { id, path, reason } => {
            format!("FILE_SEND_FAILED {id} {}: {reason}", path.display())
        }
        ClientEvent::Disconnected(why) => format!("DISCONNECTED {}", sanitize(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{Conversation, GroupName, Username};

    #[test]
    fn message_line_format() {
        let e = ClientEvent::Message {
            id: 42,
            at_ms: 0,
            from: Username::parse("alice").unwrap(),
            to: Conversation::Group(GroupName::parse("devs").unwrap()),
            text: "hi\x1b]0;pwned\x07".into(),
            history: false,
        };
        assert_eq!(
            event_line(&e),
            "MSG 42 1970-01-01T00:00:00.000Z alice -> #devs: hi\\x1b]0;pwned\\x07"
        );
    }
}
