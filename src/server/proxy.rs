//! The PROXY protocol (versions 1 and 2), as HAProxy's `send-proxy` and
//! `send-proxy-v2` send it: the client's real address, ahead of the
//! client's own bytes, on connections from a load balancer this server
//! trusts (`--proxy-from`).
//!
//! Behind a TCP load balancer every connection comes from the balancer's
//! address, so the per-address limits (connections, handshakes, login
//! counts per address and /24) would count every user as one. With the
//! header they count the real client again. Only connections from the
//! listed addresses may (and must) send one: anyone else could claim any
//! address. Parsing is the `ppp` crate's; this module reads exactly the
//! header's bytes off the socket, so the handshake that follows starts
//! where the client's bytes do.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};

/// Longest version 1 header, `\r\n` included (the specification's limit).
const V1_MAX: usize = 107;

/// The version 2 signature, which no version 1 header (or muchat client)
/// starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2's fixed part: the signature, version and command, family,
/// and the length of what follows.
const V2_FIXED: usize = 16;

/// Why a trusted connection's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading failed or timed out before the header was whole.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY protocol header.
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads one PROXY header from `stream` (a connection from a trusted load
/// balancer) and returns the client's address: `None` when the balancer
/// speaks for itself (`LOCAL`, `UNKNOWN`: its own health checks), so the
/// connection keeps its own address.
pub fn read_header(stream: &mut impl Read) -> Result<Option<SocketAddr>, ProxyError> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first)?;
    if first[0] == V2_SIGNATURE[0] {
        let mut fixed = [0u8; V2_FIXED];
        fixed[0] = first[0];
        stream.read_exact(&mut fixed[1..])?;
        let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        let mut header = fixed.to_vec();
        header.resize(V2_FIXED + len, 0);
        stream.read_exact(&mut header[V2_FIXED..])?;
        parse_v2(&header)
    } else {
        // Version 1 is a text line: read up to its `\n`, a byte at a time
        // (a buffered read could take the client's first bytes with it).
        let mut line = vec![first[0]];
        while line.last() != Some(&b'\n') {
            if line.len() >= V1_MAX {
                return Err(ProxyError::Invalid("a line longer than 107 bytes".into()));
            }
            stream.read_exact(&mut first)?;
            line.push(first[0]);
        }
        parse_v1(&line)
    }
}

fn parse_v2(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let h = Header::try_from(header).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if h.command == Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let h = Header::try_from(line).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match h.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header is taken off the stream and nothing after it.
    fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor);
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).unwrap();
        (r, rest)
    }

    #[test]
    fn version_one_gives_the_client_address_and_leaves_its_bytes() {
        let (r, rest) = read(b"PROXY TCP4 203.0.113.7 10.0.0.11 51000 9000\r\nMUCHAT/3 hello");
        assert_eq!(r.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"MUCHAT/3 hello");
        let (r, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 9000\r\n");
        assert_eq!(r.unwrap(), Some("[2001:db8::1]:4000".parse().unwrap()));
        let (r, rest) = read(b"PROXY UNKNOWN\r\nx");
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"x");
    }

    #[test]
    fn version_two_gives_the_client_address_and_leaves_its_bytes() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        h.extend([198, 51, 100, 9, 10, 0, 0, 11]);
        h.extend(4242u16.to_be_bytes());
        h.extend(9000u16.to_be_bytes());
        h.extend(b"MUCHAT/3");
        let (r, rest) = read(&h);
        assert_eq!(r.unwrap(), Some("198.51.100.9:4242".parse().unwrap()));
        assert_eq!(rest, b"MUCHAT/3");
        // LOCAL: the balancer's own connection (a health check).
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).0.unwrap(), None);
    }

    #[test]
    fn anything_else_is_refused_without_reading_past_a_line() {
        for junk in [
            &b"MUCHAT/3 hello\r\n"[..],
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 999.2.3.4 10.0.0.1 1 2\r\n",
            &[b'x'; 200][..],
        ] {
            assert!(read(junk).0.is_err(), "{junk:?}");
        }
        // Cut short: an error, not a hang or a panic.
        assert!(read(b"PROXY TCP4 1.2.3").0.is_err());
        assert!(read(&V2_SIGNATURE[..7]).0.is_err());
        let mut long = V2_SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(read(&long).0.is_err());
    }
}
