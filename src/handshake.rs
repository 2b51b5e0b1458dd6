//! The plaintext opening of every connection: protocol version, then an
//! authenticated Diffie-Hellman exchange, ending in the keys for
//! [`crate::connection`].
//!
//! # Format
//!
//! ```text
//! client -> server:  MUCHAT/4 <A: client ephemeral value, 512 hex digits>\n
//! server -> client:  MUCHAT/4 <B: server ephemeral value> <S: server static value> <confirm>\n
//!               or:  MUCHAT/4 ERROR <reason>\n   (and the server closes)
//! ```
//!
//! A server also accepts `MUCHAT/3` (which differs only in sending one
//! message per `GMSG`) and answers such a client in `MUCHAT/3`.
//!
//! Both sides compute `Zee = g^(ab)` and `Zes = g^(as)` and derive
//! [`SessionKeys`]. `confirm` is base64 of `HMAC-SHA256(confirm key, "muchat/2
//! server finished")`: only a server holding the private half of `S` can
//! produce it, so a man in the middle with its own key pair is caught by the
//! client's pinned fingerprint, and one that forwards the real `S` cannot
//! confirm. The client checks `confirm` (and then its pin) before it sends
//! any frame, so no credential crosses to an impostor.

use std::fmt;
use std::io::{self, BufRead, Write};

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use crate::connection::{read_line, Line};
use crate::dh::{DhError, EphemeralSecret, PublicValue, StaticSecret};
use crate::frame::{Opener, Sealer};
use crate::keys::{SessionKeys, Transcript, SERVER_FINISHED};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The protocol name and version that open every handshake line.
pub const PROTOCOL: &str = "MUCHAT/4";

/// The version before, which a server still accepts from older clients:
/// the same protocol, except that each `GMSG` carries one message (a
/// server never bundles several for such a client).
pub const PROTOCOL_V3: &str = "MUCHAT/3";

/// The longest handshake line accepted (the server's carries two values).
pub const MAX_HANDSHAKE_LINE: usize = 2048;

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The socket failed or timed out.
    Io(io::Error),
    /// The peer closed the connection.
    Closed,
    /// The peer does not speak muchat (or sent an over-long line).
    NotMuchat,
    /// The peer speaks another version.
    Version(String),
    /// The peer's public value was malformed or outside 2..p-2.
    BadPublicValue(DhError),
    /// The server refused us, with its reason.
    Refused(String),
    /// The server could not prove it holds its static key: someone is in
    /// the middle, or the server is broken.
    BadConfirmation,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "handshake I/O failed: {e}"),
            HandshakeError::Closed => {
                f.write_str("peer closed the connection during the handshake")
            }
            HandshakeError::NotMuchat => f.write_str("peer does not speak the muchat protocol"),
            HandshakeError::Version(v) => {
                write!(
                    f,
                    "unsupported protocol version {v:?}; this side speaks {PROTOCOL}"
                )
            }
            HandshakeError::BadPublicValue(e) => write!(f, "invalid Diffie-Hellman value: {e}"),
            HandshakeError::Refused(why) => write!(f, "server refused the handshake: {why}"),
            HandshakeError::BadConfirmation => f.write_str(
                "the server failed to prove its identity (key confirmation failed): \
                 possible man-in-the-middle attack; nothing was sent",
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// The keyed halves a handshake produces for one side.
pub struct Keyed {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
    /// The server's static public value, proven by key confirmation (for
    /// the client to check against its pin).
    pub server_key: PublicValue,
    /// Whether the peer speaks [`PROTOCOL`] (and so takes several messages
    /// in one `GMSG`), not [`PROTOCOL_V3`].
    pub bundles: bool,
}

/// A client's hello, as the server read it.
pub struct ClientHello {
    /// The client's ephemeral public value.
    pub public: PublicValue,
    /// Whether it speaks [`PROTOCOL`]; otherwise [`PROTOCOL_V3`].
    pub current: bool,
}

fn confirmation(keys: &SessionKeys) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(&keys.confirm).expect("HMAC key");
    mac.update(SERVER_FINISHED.as_bytes());
    mac
}

/// Reads the peer's handshake line and returns its two words.
fn read_hello(reader: &mut impl BufRead) -> Result<(String, String), HandshakeError> {
    let mut buf = Vec::new();
    match read_line(reader, &mut buf, MAX_HANDSHAKE_LINE)? {
        Line::Complete => {}
        Line::Eof | Line::Truncated => return Err(HandshakeError::Closed),
        Line::TooLong => return Err(HandshakeError::NotMuchat),
    }
    let line = String::from_utf8(buf).map_err(|_| HandshakeError::NotMuchat)?;
    let (proto, rest) = line.split_once(' ').unwrap_or((&line, ""));
    if !proto.starts_with("MUCHAT/") {
        return Err(HandshakeError::NotMuchat);
    }
    Ok((proto.to_string(), rest.to_string()))
}

/// Runs the client side over a connected stream. Returns only once the
/// server has proven it holds the static key it presented.
pub fn client(reader: &mut impl BufRead, writer: &mut impl Write) -> Result<Keyed, HandshakeError> {
    let secret = EphemeralSecret::random().map_err(HandshakeError::BadPublicValue)?;
    client_with_secret(reader, writer, secret)
}

/// The client's hello: `MUCHAT/4 <A in hex>` and a newline.
pub fn hello_line(ours: &PublicValue) -> String {
    format!("{PROTOCOL} {}\n", ours.to_hex())
}

/// [`client`] with a chosen secret: for test vectors.
pub fn client_with_secret(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    secret: EphemeralSecret,
) -> Result<Keyed, HandshakeError> {
    let ours = secret.public_value().clone();
    writer.write_all(hello_line(&ours).as_bytes())?;
    writer.flush()?;
    let (proto, rest) = read_hello(reader)?;
    if proto != PROTOCOL {
        return Err(HandshakeError::Version(proto));
    }
    if let Some(why) = rest.strip_prefix("ERROR ") {
        // Shown to the user before any key is checked: neutralise escapes.
        let why = crate::text::sanitize(&crate::request::truncate(why, 200)).into_owned();
        return Err(HandshakeError::Refused(why));
    }
    let mut parts = rest.split(' ');
    let (Some(b), Some(st), Some(confirm), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::BadPublicValue(DhError::Malformed));
    };
    let theirs = PublicValue::from_hex(b).map_err(HandshakeError::BadPublicValue)?;
    let server_key = PublicValue::from_hex(st).map_err(HandshakeError::BadPublicValue)?;
    let (ee, es) = secret.diffie_hellman_twice(&theirs, &server_key);
    let transcript = Transcript {
        client: &ours,
        server: &theirs,
        server_static: &server_key,
    };
    let keys = SessionKeys::derive(&ee, &es, &transcript);
    let tag = B64
        .decode(confirm)
        .map_err(|_| HandshakeError::BadConfirmation)?;
    confirmation(&keys)
        .verify_slice(&tag)
        .map_err(|_| HandshakeError::BadConfirmation)?;
    Ok(Keyed {
        sealer: Sealer::new(&keys.client_to_server),
        opener: Opener::new(&keys.server_to_client),
        server_key,
        bundles: true,
    })
}

/// Runs the server side with its static key. On a bad hello it tells the
/// peer why (best effort) before returning the error; the caller closes
/// the connection.
pub fn server(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    identity: &StaticSecret,
) -> Result<Keyed, HandshakeError> {
    let secret = EphemeralSecret::random().map_err(HandshakeError::BadPublicValue)?;
    server_with_secret(reader, writer, identity, secret)
}

/// [`server`] with a chosen ephemeral secret: for test vectors.
pub fn server_with_secret(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    identity: &StaticSecret,
    secret: EphemeralSecret,
) -> Result<Keyed, HandshakeError> {
    let theirs = read_client_hello(reader, writer)?;
    let ServerHello { line, keyed } = answer(&theirs, identity, secret);
    writer.write_all(line.as_bytes())?;
    writer.flush()?;
    Ok(keyed)
}

/// The first half of the server's side: reads and checks the client's
/// hello, returning its public value and version. A bad hello is refused (best effort)
/// before the error is returned. No exponentiation happens here, so a
/// server can decide whether to spend one on this peer.
pub fn read_client_hello(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
) -> Result<ClientHello, HandshakeError> {
    let result = read_hello(reader).and_then(|(proto, rest)| {
        let current = proto == PROTOCOL;
        if !current && proto != PROTOCOL_V3 {
            return Err(HandshakeError::Version(proto));
        }
        let public = PublicValue::from_hex(&rest).map_err(HandshakeError::BadPublicValue)?;
        Ok(ClientHello { public, current })
    });
    if let Err(e) = &result {
        if !matches!(e, HandshakeError::Io(_) | HandshakeError::Closed) {
            refuse(writer, &e.to_string());
        }
    }
    result
}

/// The server's answer to a client's public value: its hello line
/// (newline included) and the keyed halves.
pub struct ServerHello {
    /// The line to send.
    pub line: String,
    /// The session's sealer and opener.
    pub keyed: Keyed,
}

/// The second half of the server's side: the exponentiations (the
/// ephemeral secret's own, and the two agreements) and the confirmation.
pub fn answer(
    hello: &ClientHello,
    identity: &StaticSecret,
    secret: EphemeralSecret,
) -> ServerHello {
    let theirs = &hello.public;
    let ours = secret.public_value().clone();
    let server_key = identity.public_value().clone();
    let transcript = Transcript {
        client: theirs,
        server: &ours,
        server_static: &server_key,
    };
    let keys = SessionKeys::derive(
        &secret.diffie_hellman(theirs),
        &identity.diffie_hellman(theirs),
        &transcript,
    );
    let confirm = B64.encode(confirmation(&keys).finalize().into_bytes());
    // A client is answered in its own version.
    let version = if hello.current { PROTOCOL } else { PROTOCOL_V3 };
    let line = format!(
        "{version} {} {} {confirm}\n",
        ours.to_hex(),
        server_key.to_hex()
    );
    ServerHello {
        line,
        keyed: Keyed {
            sealer: Sealer::new(&keys.server_to_client),
            opener: Opener::new(&keys.client_to_server),
            server_key,
            bundles: hello.current,
        },
    }
}

/// Sends a handshake refusal line (best effort: the peer may be gone).
pub fn refuse(writer: &mut impl Write, why: &str) {
    let _ = writer.write_all(format!("{PROTOCOL} ERROR {why}\n").as_bytes());
    let _ = writer.flush();
}
