//! Password verifiers: what the server keeps instead of passwords.
//!
//! A verifier is a random 16-byte salt and `HMAC-SHA256(salt, password)`.
//! Checking compares in constant time, and checking against a missing
//! account does the same work against a dummy verifier, so neither the
//! reply nor its timing says whether a username exists.
//!
//! This is a placeholder strength: the accounts live in memory only for
//! now. Persistent accounts will use a memory-hard hash (Argon2id).

use std::fmt;
use std::sync::OnceLock;

use hmac::{KeyInit, Mac};
use rand::Rng as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A salted password verifier.
#[derive(Clone)]
pub struct Verifier {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

fn keyed(salt: &[u8; 16], password: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(salt).expect("HMAC key");
    mac.update(password.as_bytes());
    mac
}

impl Verifier {
    /// A verifier for `password` with a fresh salt.
    pub fn new(password: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let hash = keyed(&salt, password).finalize().into_bytes().into();
        Verifier { salt, hash }
    }

    /// Whether `password` matches, in constant time.
    pub fn matches(&self, password: &str) -> bool {
        keyed(&self.salt, password).verify_slice(&self.hash).is_ok()
    }
}

/// Checks `password` against an account's verifier, or against a dummy when
/// there is no account, so both cases cost the same.
pub fn check(verifier: Option<&Verifier>, password: &str) -> bool {
    static DUMMY: OnceLock<Verifier> = OnceLock::new();
    match verifier {
        Some(v) => v.matches(password),
        None => {
            let _ = DUMMY.get_or_init(|| Verifier::new("")).matches(password);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_right_password() {
        let v = Verifier::new("hunter2");
        assert!(check(Some(&v), "hunter2"));
        assert!(!check(Some(&v), "hunter3"));
        assert!(!check(None, "hunter2"));
        assert!(!check(None, ""));
        assert_ne!(Verifier::new("x").salt, Verifier::new("x").salt);
    }
}
