//! Content encrypted once by its sender, relayed unchanged to every recipient.
//!
//! A message text or file chunk is encrypted under a fresh random
//! [`ContentKey`] into a [`Body`]: `base64(IV || 3DES-CBC(key, IV, PKCS7(data)))`.
//! The key travels inside the (per-hop, session-encrypted) frame head; the
//! body travels as the frame's middle segment. The server never decrypts or
//! re-encrypts a body: it keeps the base64 text behind an `Arc` and hands the
//! same bytes to every recipient's outbox, so a group message costs the
//! server one encryption of a small head per recipient, whatever its size.

use std::fmt;
use std::sync::{Arc, OnceLock};

use sha2::Digest as _;

use base64::Engine as _;
use rand::Rng as _;

use crate::tdes::{self, TdesKey};

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Length of a content key written on the wire (base64 of 24 bytes, no padding needed).
pub const CONTENT_KEY_B64_LEN: usize = 32;

/// Why a content key or body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// The key is not 32 base64 characters encoding 24 bytes.
    BadKey,
    /// The body is not valid base64.
    BadBase64,
    /// The body is too short, not whole blocks, or badly padded.
    BadCiphertext,
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContentError::BadKey => "content key must be 32 base64 characters",
            ContentError::BadBase64 => "content is not valid base64",
            ContentError::BadCiphertext => "content does not decrypt (bad length or padding)",
        })
    }
}

impl std::error::Error for ContentError {}

/// A single-message 3DES key chosen by the sender (the server's group
/// keys are the same kind of key, used for every envelope of a group).
#[derive(Clone)]
pub struct ContentKey {
    bytes: [u8; tdes::KEY_LEN],
    /// The key schedule, built on first use: a group key seals many
    /// envelopes, and building a schedule costs half a block's encryption.
    /// Shared, so a clone of a used key (a group key is cloned for every
    /// message) reuses it; behind a pointer, because content keys travel in
    /// every log entry and most are never used by the server.
    schedule: OnceLock<Arc<TdesKey>>,
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for ContentKey {}

impl ContentKey {
    /// A fresh key from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub fn random() -> Self {
        let mut k = [0u8; tdes::KEY_LEN];
        rand::rng().fill_bytes(&mut k);
        Self::from_bytes(k)
    }

    /// A fresh key that will seal many messages (a group key): its key
    /// schedule is built now, so every clone of it shares the one schedule.
    pub fn random_for_many() -> Self {
        let key = Self::random();
        key.schedule();
        key
    }

    /// A chosen key: for test vectors.
    pub fn from_bytes(k: [u8; tdes::KEY_LEN]) -> Self {
        ContentKey {
            bytes: k,
            schedule: OnceLock::new(),
        }
    }

    fn schedule(&self) -> &TdesKey {
        self.schedule
            .get_or_init(|| Arc::new(TdesKey::new(&self.bytes)))
    }

    /// Parses the wire form: exactly 32 base64 characters.
    pub fn from_b64(s: &str) -> Result<Self, ContentError> {
        let mut k = [0u8; tdes::KEY_LEN];
        if s.len() != CONTENT_KEY_B64_LEN {
            return Err(ContentError::BadKey);
        }
        match B64.decode_slice(s, &mut k) {
            Ok(tdes::KEY_LEN) => Ok(Self::from_bytes(k)),
            _ => Err(ContentError::BadKey),
        }
    }

    /// The wire form.
    pub fn to_b64(&self) -> String {
        B64.encode(self.bytes)
    }

    /// Encrypts `data` under this key with a fresh random IV.
    pub fn seal(&self, data: &[u8]) -> Body {
        let mut iv = [0u8; tdes::BLOCK_LEN];
        rand::rng().fill_bytes(&mut iv);
        self.seal_with_iv(&iv, data)
    }

    /// Encrypts with a chosen IV: for test vectors.
    pub fn seal_with_iv(&self, iv: &[u8; tdes::BLOCK_LEN], data: &[u8]) -> Body {
        let mut raw = Vec::with_capacity(tdes::BLOCK_LEN + tdes::padded_len(data.len()));
        raw.extend_from_slice(iv);
        self.schedule().encrypt_into(iv, data, &mut raw);
        Body::from(B64.encode(raw).as_str())
    }

    /// Decrypts a body sealed under this key.
    pub fn open(&self, body: &Body) -> Result<Vec<u8>, ContentError> {
        let raw = B64
            .decode(body.as_str())
            .map_err(|_| ContentError::BadBase64)?;
        if raw.len() < 2 * tdes::BLOCK_LEN {
            return Err(ContentError::BadCiphertext);
        }
        let (iv, ct) = raw.split_at(tdes::BLOCK_LEN);
        // split_at gave exactly BLOCK_LEN bytes.
        let iv: &[u8; tdes::BLOCK_LEN] = iv.try_into().expect("8-byte IV");
        self.schedule()
            .decrypt(iv, ct)
            .map_err(|_| ContentError::BadCiphertext)
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// Encrypted content as base64 text, shared (not copied) between recipients,
/// with its SHA-256 (what frame MACs cover) computed at most once.
#[derive(Clone)]
pub struct Body(Arc<BodyText>);

struct BodyText {
    text: Box<str>,
    digest: OnceLock<[u8; 32]>,
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Body {}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Body(Arc::new(BodyText {
            text: text.into(),
            digest: OnceLock::new(),
        }))
    }
}

/// Checks that `text` is base64 of at least two whole 3DES blocks.
fn check_ciphertext(text: &str) -> Result<(), ContentError> {
    let len = base64::decoded_len_estimate(text.len());
    let mut scratch = vec![0u8; len];
    let n = B64
        .decode_slice(text, &mut scratch)
        .map_err(|_| ContentError::BadBase64)?;
    if n < 2 * tdes::BLOCK_LEN || !n.is_multiple_of(tdes::BLOCK_LEN) {
        return Err(ContentError::BadCiphertext);
    }
    Ok(())
}

impl Body {
    /// Wraps text received on the wire: base64 of at least two whole blocks
    /// (an IV and one block of ciphertext); or two such parts joined by `:`
    /// (an envelope and its content, see [`Body::enveloped`]), or several
    /// of those joined by `,` (consecutive messages, [`Body::bundle`]).
    pub fn from_wire(text: &str) -> Result<Self, ContentError> {
        if text.contains(':') {
            for message in text.split(',') {
                let (envelope, content) = message.split_once(':').ok_or(ContentError::BadBase64)?;
                check_ciphertext(envelope)?;
                check_ciphertext(content)?;
            }
        } else {
            check_ciphertext(text)?;
        }
        Ok(Body::from(text))
    }

    /// [`from_wire`](Self::from_wire) for text whose SHA-256 is already known.
    pub fn from_wire_with_digest(text: &str, digest: [u8; 32]) -> Result<Self, ContentError> {
        let body = Self::from_wire(text)?;
        let _ = body.0.digest.set(digest);
        Ok(body)
    }

    /// SHA-256 of the base64 text: what a frame's MAC covers for its body,
    /// so each recipient's MAC costs the same whatever the body's size.
    pub fn digest(&self) -> &[u8; 32] {
        self.0
            .digest
            .get_or_init(|| sha2::Sha256::digest(self.as_str().as_bytes()).into())
    }

    /// An envelope (sealed once per group message under the group key)
    /// followed by the sender's content, unchanged: `envelope ":" content`.
    pub fn enveloped(envelope: &Body, content: &Body) -> Body {
        Body::from(format!("{}:{}", envelope.as_str(), content.as_str()).as_str())
    }

    /// Enveloped bodies of consecutive messages as one body, joined by
    /// `,`, so that one frame (one MAC for each recipient) carries them all.
    pub fn bundle(messages: &[&Body]) -> Body {
        let texts: Vec<&str> = messages.iter().map(|b| b.as_str()).collect();
        Body::from(texts.join(",").as_str())
    }

    /// The enveloped bodies a [`bundle`](Self::bundle) carries, in order
    /// (one, for a body that is not a bundle).
    pub fn unbundle(&self) -> Vec<Body> {
        if !self.as_str().contains(',') {
            return vec![self.clone()];
        }
        self.as_str().split(',').map(Body::from).collect()
    }

    /// For an enveloped body, its two parts.
    pub fn split_envelope(&self) -> Option<(Body, Body)> {
        let (e, c) = self.as_str().split_once(':')?;
        Some((Body::from(e), Body::from(c)))
    }

    /// Whether this is plain content (not an envelope and content).
    pub fn is_plain(&self) -> bool {
        !self.as_str().contains(':')
    }

    /// The base64 text as it appears on the wire.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Length of the encrypted content in bytes (IV included).
    pub fn ciphertext_len(&self) -> usize {
        let s = self.as_str();
        let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
        s.len() / 4 * 3 - pad
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Body({} base64 chars)", self.as_str().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let k = ContentKey::random();
        for data in [&b""[..], b"hi", b"exactly8", &[0xAB; 5000]] {
            let body = k.seal(data);
            assert_eq!(body.ciphertext_len(), 8 + tdes::padded_len(data.len()));
            let again = Body::from_wire(body.as_str()).unwrap();
            assert_eq!(k.open(&again).unwrap(), data);
        }
    }

    #[test]
    fn key_wire_form_round_trips_and_rejects_junk() {
        let k = ContentKey::random();
        let s = k.to_b64();
        assert_eq!(s.len(), CONTENT_KEY_B64_LEN);
        assert_eq!(ContentKey::from_b64(&s).unwrap(), k);
        assert_eq!(ContentKey::from_b64("short"), Err(ContentError::BadKey));
        assert_eq!(
            ContentKey::from_b64(&"!".repeat(32)),
            Err(ContentError::BadKey)
        );
    }

    #[test]
    fn a_bundle_splits_into_its_messages_and_a_broken_one_is_refused() {
        let k = ContentKey::random();
        let one = Body::enveloped(&k.seal(b"envelope 1"), &k.seal(b"content 1"));
        let two = Body::enveloped(&k.seal(b"envelope 2"), &k.seal(b"content 2"));
        let bundle = Body::bundle(&[&one, &two]);
        let received = Body::from_wire(bundle.as_str()).unwrap();
        assert_eq!(received.unbundle(), vec![one.clone(), two.clone()]);
        assert_eq!(
            one.unbundle(),
            vec![one.clone()],
            "one message is a bundle of one"
        );
        for broken in [
            format!("{},", bundle.as_str()),
            format!(",{}", bundle.as_str()),
            format!("{},,{}", one.as_str(), two.as_str()),
            format!("{},{}", one.as_str(), k.seal(b"no envelope").as_str()),
            format!("{},{}:AAAA", one.as_str(), k.seal(b"e").as_str()),
        ] {
            assert!(Body::from_wire(&broken).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert_eq!(
            Body::from_wire("not base64!").unwrap_err(),
            ContentError::BadBase64
        );
        assert_eq!(
            Body::from_wire("AAAA").unwrap_err(),
            ContentError::BadCiphertext
        );
        let k = ContentKey::random();
        let other = ContentKey::random();
        let body = k.seal(b"secret text here");
        // A wrong key almost always leaves bad padding; never the plaintext.
        assert_ne!(other.open(&body).ok(), Some(b"secret text here".to_vec()));
    }
}
