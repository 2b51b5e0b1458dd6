//! `client --json`: one JSON object per line for every reply and event, so
//! a program reads fields instead of matching prose.
//!
//! ```text
//! {"type":"reply","line":3,"request":"SEND","ok":true,"text":"...","refs":["@bob:4"]}
//! {"type":"reply","line":4,"request":"JOIN","ok":false,"code":"NO_SUCH_GROUP","text":"..."}
//! {"type":"message","conversation":"#ops","seq":17,"from":"alice","time":"2026-12-02T11:03:03.150Z","time_ms":1764673383150,"text":"hi","history":false}
//! {"type":"file","conversation":"@alice","seq":5,"from":"alice","path":"downloads/a.pdf","size":200000,"sha256":"9f86...","voice":null,"time":"...","time_ms":...}
//! ```
//!
//! A reply names the request it answers: `line` is the script's line number
//! (1-based, counting blank and comment lines) and `request` its command
//! word. A command the client refused itself has `"local":true`. The other
//! event types: `history_file`, `bad_message`, `file_progress`,
//! `upload_progress`, `file_failed`, `file_sent`, `file_send_failed`, `invited`, `removed`,
//! `connection_lost`, `reconnected`, `disconnected` (fields below).

use serde_json::{json, Map, Value};

use crate::clock::format_ms;
use crate::event::{GroupNotice, NoticeKind, Reply, ReplyData};
use crate::names::MessageRef;

use super::ClientEvent;

/// The object for the reply to the request on script line `line`.
pub fn reply(line: usize, request: &str, reply: &Reply) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), "reply".into());
    o.insert("line".into(), line.into());
    o.insert("request".into(), request.into());
    match reply {
        Reply::Ok { data, text } => {
            o.insert("ok".into(), true.into());
            o.insert("text".into(), text.as_str().into());
            match data {
                ReplyData::None => {}
                ReplyData::Sent(refs) => {
                    let refs: Vec<String> = refs.iter().map(ToString::to_string).collect();
                    o.insert("refs".into(), refs.into());
                }
                ReplyData::Transfer(id) => {
                    o.insert("transfer".into(), (*id).into());
                }
                // The device token is a secret: it stays in its file.
                ReplyData::Token(_) => {}
            }
        }
        Reply::Err { code, text } => {
            o.insert("ok".into(), false.into());
            o.insert("code".into(), code.as_str().into());
            o.insert("text".into(), text.as_str().into());
        }
    }
    Value::Object(o)
}

/// The object for a command the client refused before sending it.
pub fn local_reply(line: usize, request: &str, reply: &Reply) -> Value {
    let mut v = self::reply(line, request, reply);
    v["local"] = true.into();
    v
}

/// The object for a command the client could not carry out (a file it
/// cannot read, say): code `LOCAL`.
pub fn local_failure(line: usize, request: &str, text: &str) -> Value {
    json!({
        "type": "reply", "line": line, "request": request, "ok": false,
        "code": "LOCAL", "text": text, "local": true,
    })
}

/// `conversation` and `seq` of a message reference, merged into `o`.
fn at(at: &MessageRef, mut o: Value) -> Value {
    o["conversation"] = at.conv.to_string().into();
    o["seq"] = at.seq.into();
    o
}

fn time(ms: u64, mut o: Value) -> Value {
    o["time"] = format_ms(ms).into();
    o["time_ms"] = ms.into();
    o
}

/// The object for an event.
pub fn event(event: &ClientEvent) -> Value {
    match event {
        ClientEvent::Message {
            at: r,
            at_ms,
            from,
            text,
            history,
        } => time(
            *at_ms,
            at(
                r,
                json!({"type": "message", "from": from.to_string(), "text": text, "history": history}),
            ),
        ),
        ClientEvent::HistoryFile {
            at: r,
            at_ms,
            from,
            name,
            size,
            voice,
        } => time(
            *at_ms,
            at(
                r,
                json!({
                    "type": "history_file", "from": from.to_string(), "name": name,
                    "size": size, "voice": voice_json(*voice),
                }),
            ),
        ),
        ClientEvent::BadMessage {
            at: r,
            from,
            reason,
        } => at(
            r,
            json!({"type": "bad_message", "from": from.to_string(), "reason": reason}),
        ),
        ClientEvent::FileProgress {
            at: r,
            name,
            progress: p,
        } => at(
            r,
            json!({
                "type": "file_progress", "name": name, "received": p.done, "size": p.size,
                "seconds": p.elapsed.as_secs_f64(),
            }),
        ),
        ClientEvent::UploadProgress {
            id,
            path,
            progress: p,
        } => json!({
            "type": "upload_progress", "transfer": id, "path": path.display().to_string(),
            "sent": p.done, "size": p.size, "seconds": p.elapsed.as_secs_f64(),
        }),
        ClientEvent::FileReceived {
            at: r,
            at_ms,
            from,
            path,
            size,
            sha256,
            voice,
        } => time(
            *at_ms,
            at(
                r,
                json!({
                    "type": "file", "from": from.to_string(),
                    "path": path.display().to_string(), "size": size,
                    "sha256": hex(sha256), "voice": voice_json(*voice),
                }),
            ),
        ),
        ClientEvent::FileFailed { at: r, reason } => {
            at(r, json!({"type": "file_failed", "reason": reason}))
        }
        ClientEvent::FileSent { id, path, reply } => {
            let mut o = self::reply(0, "FILE_END", reply);
            o["type"] = "file_sent".into();
            o["transfer"] = (*id).into();
            o["path"] = path.display().to_string().into();
            if let Some(o) = o.as_object_mut() {
                o.remove("line");
                o.remove("request");
            }
            o
        }
        ClientEvent::FileSendFailed { id, path, reason } => json!({
            "type": "file_send_failed", "transfer": id,
            "path": path.display().to_string(), "reason": reason,
        }),
        ClientEvent::Notice(GroupNotice { kind, group, by }) => json!({
            "type": match kind {
                NoticeKind::Invited => "invited",
                NoticeKind::Removed => "removed",
            },
            "group": group.to_string(), "by": by.to_string(),
        }),
        ClientEvent::ConnectionLost { reason, retry_in } => json!({
            "type": "connection_lost", "reason": reason,
            "retry_in_s": retry_in.as_secs_f64(),
        }),
        ClientEvent::Reconnected => json!({"type": "reconnected"}),
        ClientEvent::Disconnected(reason) => json!({"type": "disconnected", "reason": reason}),
    }
}

/// `{"duration_ms": ..., "format": "wav"}` for a voice note, else null.
fn voice_json(voice: Option<crate::request::Voice>) -> Value {
    match voice {
        Some(v) => json!({"duration_ms": v.duration_ms, "format": v.format.as_str()}),
        None => Value::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ErrorCode;
    use crate::names::Username;

    #[test]
    fn a_reply_names_its_request_and_carries_its_data() {
        let r = Reply::Ok {
            data: ReplyData::Sent(vec![MessageRef::parse("@bob:4").unwrap()]),
            text: "sent".into(),
        };
        assert_eq!(
            reply(3, "SEND", &r),
            json!({"type": "reply", "line": 3, "request": "SEND", "ok": true,
                   "text": "sent", "refs": ["@bob:4"]})
        );
        let e = Reply::err(ErrorCode::RateLimited, "retry in 2 s: slow");
        let v = local_reply(9, "JOIN", &e);
        assert_eq!(v["code"], "RATE_LIMITED");
        assert_eq!(v["ok"], false);
        assert_eq!(v["local"], true);
    }

    #[test]
    fn a_message_event_has_its_conversation_sender_and_text() {
        let e = ClientEvent::Message {
            at: MessageRef::parse("#ops:17").unwrap(),
            at_ms: 1_000,
            from: Username::parse("alice").unwrap(),
            text: "hi \"there\"\n".into(),
            history: false,
        };
        let v = event(&e);
        assert_eq!(v["type"], "message");
        assert_eq!(v["conversation"], "#ops");
        assert_eq!(v["seq"], 17);
        assert_eq!(v["from"], "alice");
        assert_eq!(v["text"], "hi \"there\"\n");
        assert_eq!(v["time"], "1970-01-01T00:00:01.000Z");
        // One line, whatever the text holds.
        assert!(!v.to_string().contains('\n'));
    }
}
