//! Finite-field Diffie-Hellman over the RFC 3526 2048-bit MODP group (group 14).
//!
//! The handshake ([`crate::handshake`]) uses this module to agree on a shared
//! secret with the peer. The types make the two classic mistakes hard:
//!
//! * an [`EphemeralSecret`] is consumed by [`EphemeralSecret::diffie_hellman`],
//!   so one private exponent can never be used for two agreements;
//! * a peer's value only becomes a [`PublicValue`] through
//!   [`PublicValue::from_hex`] / [`PublicValue::from_biguint`], which reject
//!   anything outside `2..=p-2` (0, 1 and p-1 would force the secret into a
//!   tiny subgroup; p and above are not group elements at all).
//!
//! Private exponents are [`EXPONENT_BITS`] bits drawn from the operating
//! system's random number generator. The server also has a long-term
//! [`StaticSecret`], which authenticates it: only its holder can compute
//! the secret it shares with a client's ephemeral value.

use std::fmt;
use std::sync::OnceLock;

use num_bigint::BigUint;
use num_traits::{One, Zero};
use rand::TryRng;

/// RFC 3526, section 3: the 2048-bit MODP group's prime, in hex.
const GROUP14_PRIME_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// The group's generator.
pub const GENERATOR: u32 = 2;

/// Length in bytes of the prime, of every public value and of the shared
/// secret when written big-endian with leading zeros.
pub const ELEMENT_BYTES: usize = 256;

/// Length of a public value on the wire: lowercase hex, zero-padded.
pub const ELEMENT_HEX_LEN: usize = ELEMENT_BYTES * 2;

/// Size of a private exponent. NIST SP 800-57 rates a 2048-bit group at 112
/// bits of security, for which a 224-bit exponent suffices; 256 leaves margin.
pub const EXPONENT_BITS: usize = 256;

/// The group 14 prime `p`.
pub fn prime() -> &'static BigUint {
    static P: OnceLock<BigUint> = OnceLock::new();
    P.get_or_init(|| {
        // The constant above is valid hex; the unit tests check it.
        BigUint::parse_bytes(GROUP14_PRIME_HEX.as_bytes(), 16).expect("valid prime constant")
    })
}

/// Why a peer's public value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhError {
    /// Not exactly [`ELEMENT_HEX_LEN`] hex digits.
    Malformed,
    /// A number outside `2..=p-2`.
    OutOfRange,
    /// The operating system's random number generator failed.
    Rng,
}

impl fmt::Display for DhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DhError::Malformed => write!(f, "public value must be {ELEMENT_HEX_LEN} hex digits"),
            DhError::OutOfRange => write!(f, "public value outside 2..p-2"),
            DhError::Rng => write!(f, "the operating system's random number generator failed"),
        }
    }
}

impl std::error::Error for DhError {}

/// A validated public value `g^x mod p`, known to lie in `2..=p-2`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicValue(BigUint);

impl PublicValue {
    /// Validates a number received from a peer.
    pub fn from_biguint(value: BigUint) -> Result<Self, DhError> {
        let two = BigUint::from(2u32);
        let upper = prime() - &two;
        if value < two || value > upper {
            return Err(DhError::OutOfRange);
        }
        Ok(PublicValue(value))
    }

    /// Parses and validates exactly [`ELEMENT_HEX_LEN`] hex digits (either case).
    pub fn from_hex(hex: &str) -> Result<Self, DhError> {
        if hex.len() != ELEMENT_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DhError::Malformed);
        }
        let value = BigUint::parse_bytes(hex.as_bytes(), 16).ok_or(DhError::Malformed)?;
        Self::from_biguint(value)
    }

    /// The value as [`ELEMENT_HEX_LEN`] lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let hex = self.0.to_str_radix(16);
        format!("{hex:0>ELEMENT_HEX_LEN$}")
    }

    /// The value as [`ELEMENT_BYTES`] big-endian bytes.
    pub fn to_bytes(&self) -> [u8; ELEMENT_BYTES] {
        fixed_bytes(&self.0)
    }
}

impl fmt::Debug for PublicValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "PublicValue({}...)", &hex[..16])
    }
}

/// A private exponent for one key agreement. Consumed by
/// [`diffie_hellman`](Self::diffie_hellman); its `Debug` never prints it.
pub struct EphemeralSecret {
    exponent: BigUint,
    public: PublicValue,
}

impl EphemeralSecret {
    /// Draws a fresh [`EXPONENT_BITS`]-bit exponent from the OS RNG.
    pub fn random() -> Result<Self, DhError> {
        let mut bytes = [0u8; EXPONENT_BITS / 8];
        loop {
            rand::rngs::SysRng
                .try_fill_bytes(&mut bytes)
                .map_err(|_| DhError::Rng)?;
            // Exponents 0 and 1 would give a public value outside 2..p-2.
            let exponent = BigUint::from_bytes_be(&bytes);
            if exponent > BigUint::one() {
                return Ok(Self::from_exponent(exponent));
            }
        }
    }

    /// A secret with a chosen exponent: for test vectors only.
    pub fn from_exponent(exponent: BigUint) -> Self {
        debug_assert!(!exponent.is_zero());
        let public = BigUint::from(GENERATOR).modpow(&exponent, prime());
        EphemeralSecret {
            exponent,
            public: PublicValue(public),
        }
    }

    /// `g^x mod p`, to send to the peer.
    pub fn public_value(&self) -> &PublicValue {
        &self.public
    }

    /// Combines this secret with the peer's validated value.
    pub fn diffie_hellman(self, peer: &PublicValue) -> SharedSecret {
        SharedSecret(fixed_bytes(&peer.0.modpow(&self.exponent, prime())))
    }
}

impl fmt::Debug for EphemeralSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EphemeralSecret(<redacted>)")
    }
}

/// A long-term private exponent (the server's identity). Unlike an
/// [`EphemeralSecret`] it is used for many agreements, so it borrows.
pub struct StaticSecret {
    exponent: BigUint,
    public: PublicValue,
}

impl StaticSecret {
    /// A fresh key pair from the OS RNG.
    pub fn random() -> Result<Self, DhError> {
        let e = EphemeralSecret::random()?;
        Ok(StaticSecret {
            exponent: e.exponent,
            public: e.public,
        })
    }

    /// Restores a key pair from its exponent's big-endian bytes (as saved by
    /// [`to_bytes`](Self::to_bytes)); refuses 0 and 1.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DhError> {
        let exponent = BigUint::from_bytes_be(bytes);
        if bytes.len() != EXPONENT_BITS / 8 || exponent <= BigUint::one() {
            return Err(DhError::Malformed);
        }
        let e = EphemeralSecret::from_exponent(exponent);
        Ok(StaticSecret {
            exponent: e.exponent,
            public: e.public,
        })
    }

    /// The exponent as [`EXPONENT_BITS`]/8 big-endian bytes, for the key file.
    pub fn to_bytes(&self) -> [u8; EXPONENT_BITS / 8] {
        let raw = self.exponent.to_bytes_be();
        let mut out = [0u8; EXPONENT_BITS / 8];
        out[EXPONENT_BITS / 8 - raw.len()..].copy_from_slice(&raw);
        out
    }

    /// `g^s mod p`: what clients pin.
    pub fn public_value(&self) -> &PublicValue {
        &self.public
    }

    /// The secret shared with a peer's validated value.
    pub fn diffie_hellman(&self, peer: &PublicValue) -> SharedSecret {
        SharedSecret(fixed_bytes(&peer.0.modpow(&self.exponent, prime())))
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

impl EphemeralSecret {
    /// Combines this secret with both of the server's values: its ephemeral
    /// value and its static one. Consumes the secret.
    pub fn diffie_hellman_twice(
        self,
        ephemeral: &PublicValue,
        fixed: &PublicValue,
    ) -> (SharedSecret, SharedSecret) {
        let p = prime();
        (
            SharedSecret(fixed_bytes(&ephemeral.0.modpow(&self.exponent, p))),
            SharedSecret(fixed_bytes(&fixed.0.modpow(&self.exponent, p))),
        )
    }
}

/// The agreed secret `Z`, as [`ELEMENT_BYTES`] big-endian bytes. Only the key
/// derivation ([`crate::keys`]) reads it.
pub struct SharedSecret(pub(crate) [u8; ELEMENT_BYTES]);

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

fn fixed_bytes(n: &BigUint) -> [u8; ELEMENT_BYTES] {
    let raw = n.to_bytes_be();
    let mut out = [0u8; ELEMENT_BYTES];
    // Every value here is reduced mod p, so it fits in ELEMENT_BYTES.
    out[ELEMENT_BYTES - raw.len()..].copy_from_slice(&raw);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prime_is_the_2048_bit_group_14_prime() {
        let p = prime();
        assert_eq!(p.bits(), 2048);
        // Fermat test with base 2: catches any typo in the constant.
        let p_minus_1 = p - BigUint::one();
        assert_eq!(BigUint::from(2u32).modpow(&p_minus_1, p), BigUint::one());
        // Safe prime: q = (p-1)/2 passes the same test.
        let q = &p_minus_1 >> 1;
        assert_eq!(BigUint::from(3u32).modpow(&(&q - 1u32), &q), BigUint::one());
    }

    #[test]
    fn degenerate_peer_values_are_rejected() {
        let p = prime().clone();
        for bad in [
            BigUint::zero(),
            BigUint::one(),
            &p - 1u32,
            p.clone(),
            &p + 1u32,
            BigUint::one() << 4096,
        ] {
            assert_eq!(PublicValue::from_biguint(bad), Err(DhError::OutOfRange));
        }
        assert!(PublicValue::from_biguint(BigUint::from(2u32)).is_ok());
        assert!(PublicValue::from_biguint(&p - 2u32).is_ok());
    }

    #[test]
    fn hex_must_be_exact_length_and_hex() {
        assert_eq!(PublicValue::from_hex("02"), Err(DhError::Malformed));
        let mut s = "0".repeat(ELEMENT_HEX_LEN - 1);
        s.push('g');
        assert_eq!(PublicValue::from_hex(&s), Err(DhError::Malformed));
        let zero = "0".repeat(ELEMENT_HEX_LEN);
        assert_eq!(PublicValue::from_hex(&zero), Err(DhError::OutOfRange));
        let p_hex = format!("{:0>512}", prime().to_str_radix(16));
        assert_eq!(PublicValue::from_hex(&p_hex), Err(DhError::OutOfRange));
        let two = format!("{:0>512}", "2");
        assert_eq!(PublicValue::from_hex(&two).unwrap().to_hex(), two);
    }

    #[test]
    fn both_sides_agree() {
        let a = EphemeralSecret::random().unwrap();
        let b = EphemeralSecret::random().unwrap();
        let (pa, pb) = (a.public_value().clone(), b.public_value().clone());
        assert_ne!(pa, pb);
        let za = a.diffie_hellman(&pb);
        let zb = b.diffie_hellman(&pa);
        assert_eq!(za.0, zb.0);
    }

    #[test]
    fn static_keys_round_trip_and_agree_with_ephemeral_ones() {
        let s = StaticSecret::random().unwrap();
        let again = StaticSecret::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(again.public_value(), s.public_value());
        assert!(StaticSecret::from_bytes(&[0; 32]).is_err());
        assert!(StaticSecret::from_bytes(&[1; 31]).is_err());
        let server_eph = EphemeralSecret::random().unwrap();
        let c = EphemeralSecret::random().unwrap();
        let cp = c.public_value().clone();
        let (ee, es) = c.diffie_hellman_twice(server_eph.public_value(), s.public_value());
        assert_eq!(es.0, s.diffie_hellman(&cp).0);
        assert_eq!(ee.0, server_eph.diffie_hellman(&cp).0);
        assert_eq!(format!("{s:?}"), "StaticSecret(<redacted>)");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let a = EphemeralSecret::from_exponent(BigUint::from(12345u32));
        assert_eq!(format!("{a:?}"), "EphemeralSecret(<redacted>)");
    }
}
