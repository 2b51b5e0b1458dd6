//! The encrypted line format used after the handshake.
//!
//! # Format
//!
//! ```text
//! line  = head "." body "." tag "\n"
//! head  = base64( IV[8] || 3DES-CBC(session enc key, IV, PKCS7(head text)) )
//!       | "=" head text                             ; a clear head (GMSG only)
//! body  = "" | base64( content ciphertext )        ; see crate::content
//! tag   = base64( HMAC-SHA256(session mac key,
//!                   seq[8, big-endian] || head "." [ SHA-256(body) ]) )
//! ```
//!
//! The head text is a UTF-8 command, reply or event (see [`crate::request`],
//! [`crate::event`]). The MAC covers the line's own characters (encrypt-then-
//! MAC; a body through the SHA-256 of its characters, omitted when the body
//! is empty) and an implicit per-direction sequence number starting at 0, so
//! a tampered, replayed, reordered or dropped line fails verification.
//! Because the MAC is over the base64 text, a relay verifies a body without
//! decoding it and forwards the very same characters; because it covers the
//! body's digest, which is computed once, a body relayed to many recipients
//! costs each of them a MAC over a few dozen bytes, whatever its size.
//!
//! A clear head is MACed like any other but not encrypted. The server uses
//! it only for `GMSG`, whose head (a group key id and a sequence number)
//! hides nothing the identical body sent to every member does not already
//! show an eavesdropper; everything secret in a `GMSG` is in its body. It
//! saves a 3DES encryption per recipient of every group message. A
//! receiver reports a clear head ([`Frame::clear`]) so the layer above can
//! refuse it anywhere else.
//!
//! Each direction counts the 3DES blocks it has encrypted (receivers count
//! the blocks they decrypt, so both ends agree). Before a head would take the
//! count past [`REKEY_BLOCKS`], the 3DES key is replaced by
//! [`keys::rotate_enc_key`] and the count restarts: no key ever encrypts more
//! than 2^20 blocks (NIST SP 800-67 Rev. 2).

use std::fmt;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use rand::Rng as _;
use sha2::Digest as _;

use crate::content::{Body, ContentError, B64};
use crate::keys::{self, DirectionKeys};
use crate::tdes::{self, TdesKey};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The most 3DES blocks one key may encrypt before rotation.
pub const REKEY_BLOCKS: u64 = 1 << 20;

/// The longest line either side accepts, newline excluded.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The longest head text (before encryption). Heads are commands, replies
/// and events; long lists (`LIST`) are cut to fit.
pub const MAX_HEAD_LEN: usize = 16 * 1024;

/// Length of the tag segment: base64 of a 32-byte HMAC.
const TAG_B64_LEN: usize = 44;

/// A decrypted frame: a head and, for content-carrying frames, a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The head text: a command, reply or event.
    pub head: String,
    /// Content encrypted by its original sender, if any.
    pub body: Option<Body>,
    /// Whether the head travelled in clear (MACed, not encrypted).
    pub clear: bool,
}

impl Frame {
    /// A frame with no body and an encrypted head.
    pub fn head(text: impl Into<String>) -> Self {
        Frame {
            head: text.into(),
            body: None,
            clear: false,
        }
    }

    /// A frame with a body and an encrypted head.
    pub fn with_body(text: impl Into<String>, body: Body) -> Self {
        Frame {
            head: text.into(),
            body: Some(body),
            clear: false,
        }
    }
}

/// Whether `head` may travel as a clear head: printable ASCII, without the
/// `.` that separates a line's segments.
pub fn clear_head_allowed(head: &str) -> bool {
    !head.is_empty() && head.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'.')
}

/// Why a received line was refused. Any of these ends the connection: after
/// one bad line the sequence numbers no longer line up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than [`MAX_LINE_LEN`].
    TooLong,
    /// Not `head.body.tag`.
    Malformed,
    /// A segment is not valid base64.
    BadBase64,
    /// The tag does not match: tampered, replayed, reordered or dropped.
    BadMac,
    /// The head is not whole blocks or has bad padding.
    BadPadding,
    /// The head is not UTF-8 text, or too long.
    BadHead,
    /// The body does not decode to whole blocks.
    BadBody(ContentError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong => write!(f, "line longer than {MAX_LINE_LEN} bytes"),
            FrameError::Malformed => f.write_str("line is not head.body.tag"),
            FrameError::BadBase64 => f.write_str("invalid base64"),
            FrameError::BadMac => {
                f.write_str("MAC check failed (tampered, replayed, reordered or dropped line)")
            }
            FrameError::BadPadding => f.write_str("bad 3DES padding in head"),
            FrameError::BadHead => f.write_str("head is not UTF-8 text within the size limit"),
            FrameError::BadBody(e) => write!(f, "bad body: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One direction's cipher state: key, MAC, sequence number and block count.
struct DirectionState {
    enc_key: [u8; tdes::KEY_LEN],
    cipher: TdesKey,
    mac: HmacSha256,
    seq: u64,
    blocks: u64,
    rekey_blocks: u64,
}

impl DirectionState {
    fn new(keys: &DirectionKeys, rekey_blocks: u64) -> Self {
        DirectionState {
            enc_key: keys.enc,
            cipher: TdesKey::new(&keys.enc),
            // HMAC takes keys of any length.
            mac: HmacSha256::new_from_slice(&keys.mac).expect("HMAC key"),
            seq: 0,
            blocks: 0,
            rekey_blocks,
        }
    }

    /// Accounts for `n` blocks about to be encrypted or decrypted, rotating first if needed.
    fn use_blocks(&mut self, n: u64) {
        if self.blocks + n > self.rekey_blocks {
            self.enc_key = keys::rotate_enc_key(&self.enc_key);
            self.cipher = TdesKey::new(&self.enc_key);
            self.blocks = 0;
        }
        self.blocks += n;
    }

    /// The MAC over `seq || head "." [digest]`.
    fn tag(&self, head_b64: &[u8], body_digest: Option<&[u8; 32]>) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(head_b64);
        mac.update(b".");
        if let Some(d) = body_digest {
            mac.update(d);
        }
        mac
    }
}

/// Seals outgoing frames for one direction.
pub struct Sealer(DirectionState);

impl Sealer {
    /// A sealer for the given direction's keys.
    pub fn new(keys: &DirectionKeys) -> Self {
        Self::with_rekey_blocks(keys, REKEY_BLOCKS)
    }

    /// A sealer that rotates after `rekey_blocks` blocks (tests use a small value).
    pub fn with_rekey_blocks(keys: &DirectionKeys, rekey_blocks: u64) -> Self {
        Sealer(DirectionState::new(keys, rekey_blocks))
    }

    /// Appends the sealed line for `head` and `body`, newline included, to `out`.
    pub fn seal_into(&mut self, head: &str, body: Option<&Body>, out: &mut Vec<u8>) {
        let mut iv = [0u8; tdes::BLOCK_LEN];
        rand::rng().fill_bytes(&mut iv);
        self.seal_with_iv(&iv, head, body, out)
    }

    /// Appends a line whose head travels in clear (MACed, not encrypted).
    /// The head must pass [`clear_head_allowed`]; the caller guarantees it.
    pub fn seal_clear_into(&mut self, head: &str, body: Option<&Body>, out: &mut Vec<u8>) {
        debug_assert!(clear_head_allowed(head), "not a clear head: {head:?}");
        let st = &mut self.0;
        let start = out.len();
        out.push(b'=');
        out.extend_from_slice(head.as_bytes());
        let tag = st
            .tag(&out[start..], body.map(Body::digest))
            .finalize()
            .into_bytes();
        Self::finish_line(tag.into(), body, out);
        st.seq += 1;
    }

    /// Seals a frame, its head in clear if the frame says so.
    pub fn seal_frame_into(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        if frame.clear {
            self.seal_clear_into(&frame.head, frame.body.as_ref(), out)
        } else {
            self.seal_into(&frame.head, frame.body.as_ref(), out)
        }
    }

    /// Appends `"." body "." base64(tag) "\n"` after a head segment.
    fn finish_line(tag: [u8; 32], body: Option<&Body>, out: &mut Vec<u8>) {
        out.push(b'.');
        if let Some(body) = body {
            out.extend_from_slice(body.as_str().as_bytes());
        }
        out.push(b'.');
        let mut tag_b64 = [0u8; TAG_B64_LEN];
        // 32 bytes always encode to exactly 44 characters.
        B64.encode_slice(tag, &mut tag_b64)
            .expect("44-byte tag buffer");
        out.extend_from_slice(&tag_b64);
        out.push(b'\n');
    }

    /// [`seal_into`](Self::seal_into) with a chosen IV: for test vectors.
    pub fn seal_with_iv(
        &mut self,
        iv: &[u8; tdes::BLOCK_LEN],
        head: &str,
        body: Option<&Body>,
        out: &mut Vec<u8>,
    ) {
        let st = &mut self.0;
        let ct_len = tdes::padded_len(head.len());
        st.use_blocks((ct_len / tdes::BLOCK_LEN) as u64);
        let mut raw = Vec::with_capacity(tdes::BLOCK_LEN + ct_len);
        raw.extend_from_slice(iv);
        st.cipher.encrypt_into(iv, head.as_bytes(), &mut raw);

        let mut text = String::with_capacity(raw.len() * 4 / 3 + 4);
        B64.encode_string(&raw, &mut text);
        let tag = st
            .tag(text.as_bytes(), body.map(Body::digest))
            .finalize()
            .into_bytes();
        out.extend_from_slice(text.as_bytes());
        Self::finish_line(tag.into(), body, out);
        st.seq += 1;
    }
}

/// Opens incoming frames for one direction.
pub struct Opener(DirectionState);

impl Opener {
    /// An opener for the given direction's keys.
    pub fn new(keys: &DirectionKeys) -> Self {
        Self::with_rekey_blocks(keys, REKEY_BLOCKS)
    }

    /// An opener that rotates after `rekey_blocks` blocks (must match the sealer).
    pub fn with_rekey_blocks(keys: &DirectionKeys, rekey_blocks: u64) -> Self {
        Opener(DirectionState::new(keys, rekey_blocks))
    }

    /// Verifies and decrypts one line (without its newline).
    pub fn open(&mut self, line: &[u8]) -> Result<Frame, FrameError> {
        if line.len() > MAX_LINE_LEN {
            return Err(FrameError::TooLong);
        }
        let st = &mut self.0;
        let tag_dot = line
            .iter()
            .rposition(|&b| b == b'.')
            .ok_or(FrameError::Malformed)?;
        let (covered, tag_b64) = (&line[..tag_dot], &line[tag_dot + 1..]);
        let head_dot = covered
            .iter()
            .position(|&b| b == b'.')
            .ok_or(FrameError::Malformed)?;
        let (head_b64, body_b64) = (&covered[..head_dot], &covered[head_dot + 1..]);
        if tag_b64.len() != TAG_B64_LEN || head_b64.is_empty() {
            return Err(FrameError::Malformed);
        }
        let mut tag = [0u8; 33];
        match B64.decode_slice(tag_b64, &mut tag) {
            Ok(32) => {}
            _ => return Err(FrameError::BadBase64),
        }
        let digest: Option<[u8; 32]> =
            (!body_b64.is_empty()).then(|| sha2::Sha256::digest(body_b64).into());
        st.tag(head_b64, digest.as_ref())
            .verify_slice(&tag[..32])
            .map_err(|_| FrameError::BadMac)?;
        st.seq += 1;

        // Authentic from here on: what follows can only fail for a buggy peer.
        let body = Self::body(body_b64, digest)?;
        if let Some(clear) = head_b64.strip_prefix(b"=") {
            let head = std::str::from_utf8(clear).map_err(|_| FrameError::BadHead)?;
            if !clear_head_allowed(head) || head.len() > MAX_HEAD_LEN {
                return Err(FrameError::BadHead);
            }
            return Ok(Frame {
                head: head.to_string(),
                body,
                clear: true,
            });
        }
        let raw = B64.decode(head_b64).map_err(|_| FrameError::BadBase64)?;
        if raw.len() < 2 * tdes::BLOCK_LEN || !raw.len().is_multiple_of(tdes::BLOCK_LEN) {
            return Err(FrameError::BadPadding);
        }
        let (iv, ct) = raw.split_at(tdes::BLOCK_LEN);
        st.use_blocks((ct.len() / tdes::BLOCK_LEN) as u64);
        // split_at gave exactly BLOCK_LEN bytes.
        let iv: &[u8; tdes::BLOCK_LEN] = iv.try_into().expect("8-byte IV");
        let head = st
            .cipher
            .decrypt(iv, ct)
            .map_err(|_| FrameError::BadPadding)?;
        if head.len() > MAX_HEAD_LEN {
            return Err(FrameError::BadHead);
        }
        let head = String::from_utf8(head).map_err(|_| FrameError::BadHead)?;
        Ok(Frame {
            head,
            body,
            clear: false,
        })
    }

    /// The body segment, checked; `digest` is the SHA-256 the MAC check
    /// computed for it (kept, so relaying it costs no second hash).
    fn body(body_b64: &[u8], digest: Option<[u8; 32]>) -> Result<Option<Body>, FrameError> {
        let (false, Some(digest)) = (body_b64.is_empty(), digest) else {
            return Ok(None);
        };
        // Valid base64 is ASCII, so a non-UTF-8 body is bad base64.
        let text = std::str::from_utf8(body_b64).map_err(|_| FrameError::BadBase64)?;
        Body::from_wire_with_digest(text, digest)
            .map(Some)
            .map_err(FrameError::BadBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::ContentKey;

    fn keys() -> DirectionKeys {
        DirectionKeys {
            enc: [3u8; 24],
            mac: [4u8; 32],
        }
    }

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&keys()), Opener::new(&keys()))
    }

    fn seal(s: &mut Sealer, head: &str, body: Option<&Body>) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal_into(head, body, &mut out);
        assert_eq!(out.pop(), Some(b'\n'));
        out
    }

    #[test]
    fn round_trip_with_and_without_body() {
        let (mut s, mut o) = pair();
        let l1 = seal(&mut s, "LIST", None);
        assert_eq!(o.open(&l1).unwrap(), Frame::head("LIST"));
        let k = ContentKey::random();
        let body = k.seal(b"hello world");
        let l2 = seal(&mut s, "SEND bob x", Some(&body));
        let f = o.open(&l2).unwrap();
        assert_eq!(f.head, "SEND bob x");
        assert_eq!(k.open(&f.body.unwrap()).unwrap(), b"hello world");
    }

    #[test]
    fn tampering_is_detected() {
        let (mut s, _) = pair();
        let line = seal(&mut s, "LOGIN alice pw", None);
        for i in 0..line.len() {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            let mut o = Opener::new(&keys());
            assert!(o.open(&bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn replay_reorder_and_drop_are_detected() {
        let (mut s, mut o) = pair();
        let a = seal(&mut s, "A", None);
        let b = seal(&mut s, "B", None);
        let c = seal(&mut s, "C", None);
        assert!(o.open(&a).is_ok());
        assert_eq!(o.open(&a), Err(FrameError::BadMac), "replay");
        let mut o3 = Opener::new(&keys());
        assert_eq!(o3.open(&b), Err(FrameError::BadMac), "reorder");
        let mut o4 = Opener::new(&keys());
        assert!(o4.open(&a).is_ok());
        assert_eq!(o4.open(&c), Err(FrameError::BadMac), "drop");
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        let mut o = Opener::new(&keys());
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"abc",
            b"a.b",
            b"a.b.c",
            &[0xff; 100],
        ] {
            assert!(o.open(bad).is_err());
        }
        assert_eq!(
            o.open(&vec![b'A'; MAX_LINE_LEN + 1]),
            Err(FrameError::TooLong)
        );
    }

    #[test]
    fn clear_heads_are_authenticated_but_not_encrypted() {
        let (mut s, mut o) = pair();
        let body = ContentKey::random().seal(b"x");
        let mut line = Vec::new();
        s.seal_clear_into("GMSG 3 41", Some(&body), &mut line);
        assert!(line.starts_with(b"=GMSG 3 41."));
        line.pop();
        let f = o.open(&line).unwrap();
        assert_eq!((f.head.as_str(), f.clear), ("GMSG 3 41", true));
        // Changing the clear text breaks the MAC.
        let (mut s, mut o) = pair();
        let mut line = Vec::new();
        s.seal_clear_into("GMSG 3 41", Some(&body), &mut line);
        line[7] = b'9';
        line.pop();
        assert_eq!(o.open(&line), Err(FrameError::BadMac));
        assert!(!clear_head_allowed("a.b"));
        assert!(!clear_head_allowed("caf\u{e9}"));
    }

    #[test]
    fn keys_rotate_at_the_block_limit_on_both_ends() {
        // A 5-block limit with 2-block heads: rotation after every second frame.
        let mut s = Sealer::with_rekey_blocks(&keys(), 5);
        let mut o = Opener::with_rekey_blocks(&keys(), 5);
        let mut never_rotates = Opener::new(&keys());
        for i in 0..20 {
            let head = format!("frame {i:>9}"); // 15 bytes: 2 blocks
            let line = seal(&mut s, &head, None);
            assert_eq!(o.open(&line).unwrap().head, head);
            let stale = never_rotates.open(&line).map(|f| f.head);
            if i < 2 {
                assert_eq!(stale.unwrap(), head);
            } else {
                // The MAC key does not rotate, so the tag verifies, but the
                // old 3DES key no longer decrypts the head.
                assert_ne!(stale.ok(), Some(head));
            }
        }
        assert_eq!(s.0.enc_key, o.0.enc_key);
        assert_ne!(s.0.enc_key, keys().enc);
    }
}
