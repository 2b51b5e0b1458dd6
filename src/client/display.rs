//! How the client prints replies and events: one line each, in a stable
//! format that people read and scripts grep (the REPL and scripted mode use
//! the same lines).
//!
//! ```text
//! OK <text>
//! ERR <CODE> <text>
//! MSG <conv>:<seq> <time> <from>: <text>
//! FILE <conv>:<seq> <time> <from>: saved <path> (<size> bytes[, voice <m:ss>])
//! PROGRESS <conv>:<seq> <name> <received>/<size> bytes (<percent>%)
//! SENDING <id> <path> <sent>/<size> bytes (<percent>%)
//! FILE_FAILED <conv>:<seq>: <reason>
//! FILE_SENT <id> <path>: <server reply>
//! FILE_SEND_FAILED <id> <path>: <reason>
//! MSG_FAILED <conv>:<seq> from <from>: <reason>
//! CONNECTION_LOST <reason>; retrying in <n> s
//! RECONNECTED
//! DISCONNECTED <reason>
//! ```
//!
//! `<conv>` is `#group` or `@user` (for a direct conversation, the other
//! user). Everything that came from another user passes through
//! [`sanitize`], so a message cannot move the cursor, change colours or
//! reorder the line.

use crate::clock::format_ms;
use crate::event::{GroupNotice, NoticeKind, Reply, ReplyData};
use crate::names::MessageRef;
pub use crate::text::sanitize;

use super::audio::duration_label;
use super::ClientEvent;
use crate::request::Voice;

/// The line for a reply.
pub fn reply_line(reply: &Reply) -> String {
    match reply {
        // The server says only "sent": where to is in the references.
        Reply::Ok {
            data: ReplyData::Sent(refs),
            text,
        } => format!("OK {} to {}", sanitize(text), MessageRef::format_list(refs)),
        Reply::Ok { text, .. } if text.is_empty() => "OK".to_string(),
        Reply::Ok { text, .. } => format!("OK {}", sanitize(text)),
        Reply::Err { code, text } => format!("ERR {code} {}", sanitize(text)),
    }
}

/// The line for an event.
pub fn event_line(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Message {
            at,
            at_ms,
            from,
            text,
            ..
        } => format!("MSG {at} {} {from}: {}", format_ms(*at_ms), sanitize(text)),
        ClientEvent::HistoryFile {
            at,
            at_ms,
            from,
            name,
            size,
            voice,
        } => format!(
            "FILE {at} {} {from}: {} ({size} bytes{})",
            format_ms(*at_ms),
            sanitize(name),
            voice_note(*voice)
        ),
        ClientEvent::BadMessage { at, from, reason } => {
            format!("MSG_FAILED {at} from {from}: {reason}")
        }
        ClientEvent::FileProgress { at, name, progress } => format!(
            "PROGRESS {at} {} {}/{} bytes ({}%)",
            sanitize(name),
            progress.done,
            progress.size,
            progress.percent()
        ),
        ClientEvent::UploadProgress { id, path, progress } => format!(
            "SENDING {id} {} {}/{} bytes ({}%)",
            path.display(),
            progress.done,
            progress.size,
            progress.percent()
        ),
        ClientEvent::FileReceived {
            at,
            at_ms,
            from,
            path,
            size,
            voice,
            ..
        } => format!(
            "FILE {at} {} {from}: saved {} ({size} bytes{})",
            format_ms(*at_ms),
            sanitize(&path.display().to_string()),
            voice_note(*voice)
        ),
        ClientEvent::FileFailed { at, reason } => {
            format!("FILE_FAILED {at}: {}", sanitize(reason))
        }
        ClientEvent::FileSent { id, path, reply } => {
            format!("FILE_SENT {id} {}: {}", path.display(), reply_line(reply))
        }
        ClientEvent::FileSendFailed { id, path, reason } => {
            format!("FILE_SEND_FAILED {id} {}: {reason}", path.display())
        }
        ClientEvent::ConnectionLost { reason, retry_in } => format!(
            "CONNECTION_LOST {}; retrying in {:.1} s",
            sanitize(reason),
            retry_in.as_secs_f64()
        ),
        ClientEvent::Notice(GroupNotice { kind, group, by }) => match kind {
            NoticeKind::Invited => {
                format!("INVITED to {group} by {by} (JOIN {group} to follow it)")
            }
            NoticeKind::Removed => format!("REMOVED from {group} by {by}"),
        },
        ClientEvent::Reconnected => "RECONNECTED".to_string(),
        ClientEvent::Disconnected(why) => format!("DISCONNECTED {}", sanitize(why)),
    }
}

/// `, voice 0:07` for a voice note, nothing for a plain file.
fn voice_note(voice: Option<Voice>) -> String {
    voice
        .map(|v| format!(", voice {}", duration_label(v.duration_ms)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{MessageRef, Username};

    #[test]
    fn message_line_format() {
        let e = ClientEvent::Message {
            at: MessageRef::parse("#devs:42").unwrap(),
            at_ms: 0,
            from: Username::parse("alice").unwrap(),
            text: "hi\x1b]0;pwned\x07".into(),
            history: false,
        };
        assert_eq!(
            event_line(&e),
            "MSG #devs:42 1970-01-01T00:00:00.000Z alice: hi\\x1b]0;pwned\\x07"
        );
    }
}
