//! Key derivation: from the two Diffie-Hellman secrets to four session keys
//! and a key-confirmation key, and the one-way step that rotates a 3DES key
//! before it wears out.
//!
//! Every key is `SHA-256(label || 0x00 || Zee || Zes || A || B || S)` with a
//! distinct ASCII label, where `Zee` is the ephemeral-ephemeral secret,
//! `Zes` the client-ephemeral/server-static one, and `A`, `B`, `S` the
//! client's, the server's ephemeral and the server's static public values
//! (256 bytes each, big-endian). Mixing in `Zes` means only the holder of
//! the server's static key can derive the keys; the public values bind them
//! to this handshake. 3DES keys take the first 24 bytes of the hash; HMAC
//! keys all 32. See docs/PROTOCOL.md, "Key derivation".

use std::fmt;

use sha2::{Digest, Sha256};

use crate::dh::{PublicValue, SharedSecret};
use crate::tdes;

/// Length of an HMAC-SHA256 key.
pub const MAC_KEY_LEN: usize = 32;

/// Labels for the four session keys, and the rotation step.
pub const LABEL_C2S_ENC: &str = "muchat/2 c2s enc";
/// HMAC key, client to server.
pub const LABEL_C2S_MAC: &str = "muchat/2 c2s mac";
/// 3DES key, server to client.
pub const LABEL_S2C_ENC: &str = "muchat/2 s2c enc";
/// HMAC key, server to client.
pub const LABEL_S2C_MAC: &str = "muchat/2 s2c mac";
/// The key-confirmation key.
pub const LABEL_CONFIRM: &str = "muchat/2 confirm";
/// The rotation step's label.
pub const LABEL_REKEY: &str = "muchat/2 rekey";
/// What the server's confirmation MAC covers.
pub const SERVER_FINISHED: &str = "muchat/2 server finished";

/// The keys protecting one direction of a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    /// Three-key 3DES key for the frame heads.
    pub enc: [u8; tdes::KEY_LEN],
    /// HMAC-SHA256 key for every frame.
    pub mac: [u8; MAC_KEY_LEN],
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirectionKeys(<redacted>)")
    }
}

/// Both directions' keys, as derived by either side of a handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Protects what the client sends.
    pub client_to_server: DirectionKeys,
    /// Protects what the server sends.
    pub server_to_client: DirectionKeys,
    /// Keys the server's proof that it holds the static key.
    pub confirm: [u8; MAC_KEY_LEN],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// The public values of one handshake, in the order the KDF takes them.
pub struct Transcript<'a> {
    /// The client's ephemeral value `A`.
    pub client: &'a PublicValue,
    /// The server's ephemeral value `B`.
    pub server: &'a PublicValue,
    /// The server's static value `S`.
    pub server_static: &'a PublicValue,
}

impl SessionKeys {
    /// Derives the keys from both shared secrets and the transcript.
    pub fn derive(ee: &SharedSecret, es: &SharedSecret, t: &Transcript<'_>) -> Self {
        let (a, b, s) = (
            t.client.to_bytes(),
            t.server.to_bytes(),
            t.server_static.to_bytes(),
        );
        let kdf = |label: &str| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label.as_bytes());
            h.update([0u8]);
            h.update(ee.0);
            h.update(es.0);
            h.update(a);
            h.update(b);
            h.update(s);
            h.finalize().into()
        };
        SessionKeys {
            confirm: kdf(LABEL_CONFIRM),
            client_to_server: DirectionKeys {
                enc: first_24(&kdf(LABEL_C2S_ENC)),
                mac: kdf(LABEL_C2S_MAC),
            },
            server_to_client: DirectionKeys {
                enc: first_24(&kdf(LABEL_S2C_ENC)),
                mac: kdf(LABEL_S2C_MAC),
            },
        }
    }
}

/// The one-way rotation step: `SHA-256("muchat/2 rekey" || 0x00 || old)[..24]`.
pub fn rotate_enc_key(old: &[u8; tdes::KEY_LEN]) -> [u8; tdes::KEY_LEN] {
    let mut h = Sha256::new();
    h.update(LABEL_REKEY.as_bytes());
    h.update([0u8]);
    h.update(old);
    first_24(&h.finalize().into())
}

fn first_24(hash: &[u8; 32]) -> [u8; tdes::KEY_LEN] {
    let mut k = [0u8; tdes::KEY_LEN];
    k.copy_from_slice(&hash[..tdes::KEY_LEN]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dh::{EphemeralSecret, StaticSecret};

    #[test]
    fn both_sides_derive_the_same_distinct_keys() {
        let c = EphemeralSecret::random().unwrap();
        let s = EphemeralSecret::random().unwrap();
        let st = StaticSecret::random().unwrap();
        let (cp, sp) = (c.public_value().clone(), s.public_value().clone());
        let t = Transcript {
            client: &cp,
            server: &sp,
            server_static: st.public_value(),
        };
        let (ee, es) = c.diffie_hellman_twice(&sp, st.public_value());
        let kc = SessionKeys::derive(&ee, &es, &t);
        let ks = SessionKeys::derive(&s.diffie_hellman(&cp), &st.diffie_hellman(&cp), &t);
        assert_eq!(kc, ks);
        assert_ne!(kc.client_to_server.enc, kc.server_to_client.enc);
        assert_ne!(kc.client_to_server.mac, kc.server_to_client.mac);
        // Without the static secret (a man in the middle), the keys differ.
        let other = StaticSecret::random().unwrap();
        let forged = SessionKeys::derive(&ee, &other.diffie_hellman(&cp), &t);
        assert_ne!(forged, kc);
        assert_eq!(format!("{kc:?}"), "SessionKeys(<redacted>)");
    }

    #[test]
    fn rotation_is_deterministic_and_changes_the_key() {
        let k = [5u8; 24];
        assert_eq!(rotate_enc_key(&k), rotate_enc_key(&k));
        assert_ne!(rotate_enc_key(&k), k);
        assert_ne!(rotate_enc_key(&rotate_enc_key(&k)), rotate_enc_key(&k));
    }
}
