//! The server's long-term identity: its static Diffie-Hellman key pair, the
//! key file that keeps it, and the fingerprint clients pin.
//!
//! The key file (`server_key` in the data directory) holds the private
//! exponent as hex and is created on first start with mode 0600. The
//! fingerprint is `SHA256:` followed by the unpadded base64 of SHA-256 over
//! the static public value's 256 big-endian bytes, in the style of SSH, so
//! people can compare it by eye or paste it into `--server-fingerprint`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::dh::{PublicValue, StaticSecret};

/// The key file inside the data directory.
pub const KEY_FILE: &str = "server_key";

const B64_NOPAD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A server's public key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a static public value.
    pub fn of(key: &PublicValue) -> Self {
        Fingerprint(Sha256::digest(key.to_bytes()).into())
    }

    /// Parses `SHA256:<43 base64 characters>`.
    pub fn parse(s: &str) -> Option<Self> {
        let b64 = s.trim().strip_prefix("SHA256:")?;
        let mut out = [0u8; 32];
        match B64_NOPAD.decode_slice(b64, &mut out) {
            Ok(32) => Some(Fingerprint(out)),
            _ => None,
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", B64_NOPAD.encode(self.0))
    }
}

/// Loads the server's key pair from the key file at `path` (`server_key`
/// in the data directory, or `--key-file`: several servers sharing one
/// identity, so clients' pinned fingerprints hold whichever of them they
/// reach), creating it (mode 0600) if there is none. A key file that
/// exists but does not parse is an error naming it: silently replacing it
/// would make every client see a changed key. A key file others may read
/// is refused, as SSH refuses a private key with open permissions.
pub fn load_or_create(path: &Path) -> Result<StaticSecret, String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    match std::fs::File::open(path) {
        Ok(mut f) => {
            use std::io::Read;
            use std::os::unix::fs::PermissionsExt;
            let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
            let mode = f.metadata().map_err(unreadable)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{}: the server key is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ));
            }
            let mut text = String::new();
            f.read_to_string(&mut text).map_err(unreadable)?;
            let bytes = decode_hex(text.trim())
                .ok_or_else(|| format!("{}: not a muchat server key", path.display()))?;
            StaticSecret::from_bytes(&bytes)
                .map_err(|_| format!("{}: not a muchat server key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
            }
            let key = StaticSecret::random().map_err(|e| e.to_string())?;
            let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            f.write_all(format!("{hex}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("muchat-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create(&dir.join(KEY_FILE)).unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(&dir.join(KEY_FILE)).unwrap();
        assert_eq!(a.public_value(), b.public_value());
        std::fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        assert!(load_or_create(&dir.join(KEY_FILE))
            .unwrap_err()
            .contains(KEY_FILE));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprints_print_and_parse() {
        let k = StaticSecret::random().unwrap();
        let fp = Fingerprint::of(k.public_value());
        let text = fp.to_string();
        assert!(
            text.starts_with("SHA256:") && text.len() == 7 + 43,
            "{text}"
        );
        assert_eq!(Fingerprint::parse(&text), Some(fp));
        assert_eq!(Fingerprint::parse("SHA256:abc"), None);
        assert_eq!(Fingerprint::parse("MD5:xx"), None);
    }
}
