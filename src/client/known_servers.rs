//! Trust on first use, like SSH: the fingerprint of each server's static key
//! is pinned in a `known_servers` file the first time the client connects,
//! and a different key later is refused loudly.
//!
//! # Format
//!
//! One server per line, `<host:port> SHA256:<base64>`; blank lines and lines
//! starting with `#` are ignored. The default file is
//! `$XDG_DATA_HOME/muchat/known_servers` (or `~/.local/share/muchat/known_servers`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::identity::Fingerprint;

/// How the client decides whether to trust a server's key.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Pin on first use in this file; refuse a changed key.
    KnownServers(PathBuf),
    /// Accept exactly this fingerprint (for scripts); the file is not used.
    Fingerprint(Fingerprint),
}

impl Default for Trust {
    fn default() -> Self {
        Trust::KnownServers(default_path())
    }
}

/// The default `known_servers` file.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("muchat").join("known_servers")
}

/// The outcome of a successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key matches the pin (or the explicit fingerprint).
    Known,
    /// First contact: the key was pinned; says where, for the user.
    Pinned(String),
}

/// Checks `server`'s key `fp` under `trust`. The error is a message for the
/// user, loud when the key has changed.
pub fn check(trust: &Trust, server: &str, fp: &Fingerprint) -> Result<Verdict, String> {
    match trust {
        Trust::Fingerprint(want) if want == fp => Ok(Verdict::Known),
        Trust::Fingerprint(want) => Err(format!(
            "the server's key fingerprint is {fp}, not the expected {want}: refusing to connect \
             (someone may be impersonating {server})"
        )),
        Trust::KnownServers(path) => check_file(path, server, fp),
    }
}

fn check_file(path: &Path, server: &str, fp: &Fingerprint) -> Result<Verdict, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        lines = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, pinned)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if name != server {
            continue;
        }
        return match Fingerprint::parse(pinned) {
            Some(p) if &p == fp => Ok(Verdict::Known),
            _ => Err(format!(
                "@@@ WARNING: THE KEY OF SERVER {server} HAS CHANGED! @@@\n\
                 Someone could be intercepting this connection (a man-in-the-middle attack), \
                 or the server's key was replaced.\n\
                 Pinned: {}\nOffered: {fp}\n\
                 Refusing to connect. If you have confirmed the new key with the server's \
                 operator (`server --fingerprint`), remove line {} of {} and connect again.",
                pinned.trim(),
                n + 1,
                path.display()
            )),
        };
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let needs_newline = !text.is_empty() && !text.ends_with('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let entry = format!("{}{server} {fp}\n", if needs_newline { "\n" } else { "" });
    f.write_all(entry.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Verdict::Pinned(format!(
        "first connection to {server}: its key fingerprint is {fp}; pinned in {} (line {}). \
         Compare it with what the server's operator sees from `server --fingerprint`.",
        path.display(),
        lines + 1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dh::StaticSecret;

    fn fp() -> Fingerprint {
        Fingerprint::of(StaticSecret::random().unwrap().public_value())
    }

    #[test]
    fn pins_then_accepts_then_refuses_a_change() {
        let dir = std::env::temp_dir().join(format!("muchat-known-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("known_servers");
        let trust = Trust::KnownServers(path.clone());
        let (a, b) = (fp(), fp());
        assert!(matches!(check(&trust, "h:1", &a), Ok(Verdict::Pinned(_))));
        assert_eq!(check(&trust, "h:1", &a), Ok(Verdict::Known));
        assert!(matches!(check(&trust, "h:2", &b), Ok(Verdict::Pinned(_))));
        let err = check(&trust, "h:1", &b).unwrap_err();
        assert!(
            err.contains("HAS CHANGED") && err.contains("line 1 of"),
            "{err}"
        );
        assert_eq!(check(&trust, "h:2", &b), Ok(Verdict::Known));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_explicit_fingerprint_must_match() {
        let (a, b) = (fp(), fp());
        assert_eq!(
            check(&Trust::Fingerprint(a.clone()), "h:1", &a),
            Ok(Verdict::Known)
        );
        assert!(check(&Trust::Fingerprint(a), "h:1", &b).is_err());
    }
}
