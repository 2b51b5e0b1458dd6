//! What this client has already shown, per conversation, kept across
//! restarts so nothing is shown twice.
//!
//! The server delivers at least once: after a crash it may replay messages
//! whose acknowledgement had not yet reached its disk. Each conversation's
//! messages arrive in sequence order, so one number per conversation (the
//! highest sequence shown) is enough to drop such repeats. It lives in
//! `<state dir>/<server>/<user>/seen.json` (the state directory defaults to
//! `$XDG_STATE_HOME/muchat`, else `~/.local/state/muchat`), written by
//! replacing the file whole, so a crash leaves the old or the new version.
//!
//! What this client sent itself is not sent back to it; the reply to a send
//! tells where it went, and that may be ahead of messages from others still
//! on their way (another server of a cluster committed them first, or this
//! connection was behind). So a sent message does not move the mark: it is
//! remembered on its own until the messages before it have arrived.
//!
//! # Format
//!
//! A JSON object from conversation (`#group`, `@user`) to the highest
//! sequence number shown, or, while this client's own messages lie past
//! it, to an object with that number and theirs:
//! `{"#ops": 17, "@alice": {"shown": 3, "mine": [5, 6]}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::names::{MessageRef, Username};

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("muchat")
}

/// The directory for one user on one server, under `state_dir`.
pub fn user_dir(state_dir: &Path, server: &str, user: &Username) -> PathBuf {
    // `host:port` as a directory name; anything unusual becomes '_'.
    let server: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join(server).join(user.as_str())
}

/// One conversation: everything up to `shown` was shown, and so were the
/// sequence numbers in `mine` (this client's own sends) past it.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Mark {
    shown: u64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    mine: BTreeSet<u64>,
}

/// A conversation's entry in the file: a bare number when nothing of this
/// client's lies past it (the older format, still read).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Shown(u64),
    Mark(Mark),
}

/// What was shown in each conversation.
#[derive(Debug, Default)]
pub struct Seen {
    path: Option<PathBuf>,
    shown: BTreeMap<String, Mark>,
    dirty: bool,
}

impl Seen {
    /// Nothing remembered, nowhere to save (scripts without a state dir).
    pub fn in_memory() -> Seen {
        Seen::default()
    }

    /// Loads `dir/seen.json` (an unreadable or malformed file counts as
    /// empty: at worst some messages are shown again).
    pub fn load(dir: &Path) -> Seen {
        let path = dir.join("seen.json");
        let stored: BTreeMap<String, Stored> = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let shown = stored
            .into_iter()
            .map(|(conv, s)| {
                let mark = match s {
                    Stored::Shown(n) => Mark {
                        shown: n,
                        mine: BTreeSet::new(),
                    },
                    Stored::Mark(m) => m,
                };
                (conv, mark)
            })
            .collect();
        Seen {
            path: Some(path),
            shown,
            dirty: false,
        }
    }

    /// Whether `at` was not shown yet.
    pub fn is_new(&self, at: &MessageRef) -> bool {
        self.shown
            .get(&at.conv.to_string())
            .is_none_or(|m| at.seq > m.shown && !m.mine.contains(&at.seq))
    }

    /// Records a message received (and shown) at `at`: a conversation's
    /// messages arrive in order, so everything before it was handled.
    pub fn shown(&mut self, at: &MessageRef) {
        let m = self.shown.entry(at.conv.to_string()).or_default();
        if at.seq > m.shown {
            m.shown = at.seq;
            m.mine = m.mine.split_off(&(at.seq + 1));
            self.dirty = true;
        }
    }

    /// Records this client's own message at `at` (the reply to its send):
    /// messages before it may still be on their way.
    pub fn sent(&mut self, at: &MessageRef) {
        let m = self.shown.entry(at.conv.to_string()).or_default();
        if at.seq > m.shown && m.mine.insert(at.seq) {
            self.dirty = true;
        }
    }

    /// Writes the file if anything changed since the last save.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        let stored: BTreeMap<&String, Stored> = self
            .shown
            .iter()
            .map(|(conv, m)| {
                let s = if m.mine.is_empty() {
                    Stored::Shown(m.shown)
                } else {
                    Stored::Mark(m.clone())
                };
                (conv, s)
            })
            .collect();
        f.write_all(&serde_json::to_vec(&stored).map_err(std::io::Error::other)?)?;
        drop(f);
        fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let r = |s: &str| MessageRef::parse(s).unwrap();
        let mut seen = Seen::load(dir.path());
        assert!(seen.is_new(&r("#ops:1")));
        seen.shown(&r("#ops:5"));
        seen.shown(&r("#ops:3"));
        seen.save().unwrap();
        let again = Seen::load(dir.path());
        assert!(!again.is_new(&r("#ops:5")));
        assert!(again.is_new(&r("#ops:6")));
        assert!(again.is_new(&r("@ops:1")));
        // A message of one's own past messages still on their way.
        let mut seen = Seen::load(dir.path());
        seen.sent(&r("#ops:9"));
        assert!(seen.is_new(&r("#ops:7")) && !seen.is_new(&r("#ops:9")));
        seen.save().unwrap();
        let mut again = Seen::load(dir.path());
        assert!(again.is_new(&r("#ops:8")), "kept across a restart");
        assert!(!again.is_new(&r("#ops:9")));
        again.shown(&r("#ops:10"));
        assert!(!again.is_new(&r("#ops:8")) && again.is_new(&r("#ops:11")));
        fs::write(dir.path().join("seen.json"), b"{not json").unwrap();
        assert!(Seen::load(dir.path()).is_new(&r("#ops:1")));
        let u = Username::parse("bob").unwrap();
        assert!(user_dir(Path::new("/s"), "chat.example.org:9000", &u)
            .ends_with("chat.example.org_9000/bob"));
    }
}
