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
//! # Format
//!
//! A JSON object from conversation (`#group`, `@user`) to sequence number:
//! `{"#ops": 17, "@alice": 3}`.

use std::collections::BTreeMap;
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

/// The highest sequence number shown in each conversation.
#[derive(Debug, Default)]
pub struct Seen {
    path: Option<PathBuf>,
    shown: BTreeMap<String, u64>,
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
        let shown = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Seen {
            path: Some(path),
            shown,
            dirty: false,
        }
    }

    /// Whether `at` comes after everything shown in its conversation.
    pub fn is_new(&self, at: &MessageRef) -> bool {
        at.seq > self.shown.get(&at.conv.to_string()).copied().unwrap_or(0)
    }

    /// Records `at` as shown.
    pub fn shown(&mut self, at: &MessageRef) {
        let s = self.shown.entry(at.conv.to_string()).or_insert(0);
        if at.seq > *s {
            *s = at.seq;
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
        f.write_all(&serde_json::to_vec(&self.shown).map_err(std::io::Error::other)?)?;
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
        fs::write(dir.path().join("seen.json"), b"{not json").unwrap();
        assert!(Seen::load(dir.path()).is_new(&r("#ops:1")));
        let u = Username::parse("bob").unwrap();
        assert!(user_dir(Path::new("/s"), "chat.example.org:9000", &u)
            .ends_with("chat.example.org_9000/bob"));
    }
}
