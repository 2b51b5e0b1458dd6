//! The plaintext opening of every connection: protocol version, then
//! Diffie-Hellman, ending in the keys for [`crate::connection`].
//!
//! # Format
//!
//! ```text
//! client -> server:  MUCHAT/1 <client public value, 512 hex digits>\n
//! server -> client:  MUCHAT/1 <server public value, 512 hex digits>\n
//!               or:  MUCHAT/1 ERROR <reason>\n   (and the server closes)
//! ```
//!
//! Both sides then derive [`SessionKeys`] and every further line is an
//! encrypted frame. The client may send its first frame without waiting.

use std::fmt;
use std::io::{self, BufRead, Write};

use crate::connection::{read_line, Line};
use crate::dh::{DhError, EphemeralSecret, PublicValue};
use crate::frame::{Opener, Sealer};
use crate::keys::SessionKeys;

/// The protocol name and version that open every handshake line.
pub const PROTOCOL: &str = "MUCHAT/1";

/// The longest handshake line accepted.
pub const MAX_HANDSHAKE_LINE: usize = 1024;

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

/// Runs the client side over a connected stream.
pub fn client(reader: &mut impl BufRead, writer: &mut impl Write) -> Result<Keyed, HandshakeError> {
    let secret = EphemeralSecret::random().map_err(HandshakeError::BadPublicValue)?;
    client_with_secret(reader, writer, secret)
}

/// [`client`] with a chosen secret: for test vectors.
pub fn client_with_secret(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    secret: EphemeralSecret,
) -> Result<Keyed, HandshakeError> {
    let ours = secret.public_value().clone();
    writer.write_all(format!("{PROTOCOL} {}\n", ours.to_hex()).as_bytes())?;
    writer.flush()?;
    let (proto, rest) = read_hello(reader)?;
    if proto != PROTOCOL {
        return Err(HandshakeError::Version(proto));
    }
    if let Some(why) = rest.strip_prefix("ERROR ") {
        return Err(HandshakeError::Refused(crate::request::truncate(why, 200)));
    }
    let theirs = PublicValue::from_hex(&rest).map_err(HandshakeError::BadPublicValue)?;
    let keys = SessionKeys::derive(&secret.diffie_hellman(&theirs), &ours, &theirs);
    Ok(Keyed {
        sealer: Sealer::new(&keys.client_to_server),
        opener: Opener::new(&keys.server_to_client),
    })
}

/// Runs the server side. On a bad hello it tells the peer why (best effort)
/// before returning the error; the caller closes the connection.
pub fn server(reader: &mut impl BufRead, writer: &mut impl Write) -> Result<Keyed, HandshakeError> {
    let secret = EphemeralSecret::random().map_err(HandshakeError::BadPublicValue)?;
    let result = read_hello(reader).and_then(|(proto, rest)| {
        if proto != PROTOCOL {
            return Err(HandshakeError::Version(proto));
        }
        PublicValue::from_hex(&rest).map_err(HandshakeError::BadPublicValue)
    });
    let theirs = match result {
        Ok(v) => v,
        Err(e) => {
            if !matches!(e, HandshakeError::Io(_) | HandshakeError::Closed) {
                let _ = writer.write_all(format!("{PROTOCOL} ERROR {e}\n").as_bytes());
                let _ = writer.flush();
            }
            return Err(e);
        }
    };
    let ours = secret.public_value().clone();
    writer.write_all(format!("{PROTOCOL} {}\n", ours.to_hex()).as_bytes())?;
    writer.flush()?;
    let keys = SessionKeys::derive(&secret.diffie_hellman(&theirs), &theirs, &ours);
    Ok(Keyed {
        sealer: Sealer::new(&keys.server_to_client),
        opener: Opener::new(&keys.client_to_server),
    })
}
