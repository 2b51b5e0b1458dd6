//! Three-key Triple DES (EDE) in CBC mode with PKCS#7 padding.
//!
//! A thin, hard-to-misuse layer over the RustCrypto `des` and `cbc` crates:
//! it owns a cached key schedule (building one costs about as much as
//! encrypting half a block, so it is made once per key, not per message) and
//! exposes whole-message encrypt/decrypt with an explicit IV. Framing,
//! MACs and sequence numbers live in [`crate::frame`]; content keys in
//! [`crate::content`].

use std::fmt;

use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use cipher::block_padding::Pkcs7;

type TdesCbcEnc = cbc::Encryptor<des::TdesEde3>;
type TdesCbcDec = cbc::Decryptor<des::TdesEde3>;

/// The DES block size in bytes.
pub const BLOCK_LEN: usize = 8;

/// A three-key 3DES key: K1 || K2 || K3, 8 bytes each (parity bits ignored).
pub const KEY_LEN: usize = 24;

/// The ciphertext length for a plaintext of `len` bytes: PKCS#7 always adds
/// 1..=8 bytes of padding.
pub const fn padded_len(len: usize) -> usize {
    (len / BLOCK_LEN + 1) * BLOCK_LEN
}

/// The ciphertext did not decrypt to validly padded plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCiphertext;

impl fmt::Display for BadCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ciphertext is not a whole number of blocks or has bad padding")
    }
}

impl std::error::Error for BadCiphertext {}

/// A 3DES-EDE3 key with its key schedule computed once.
#[derive(Clone)]
pub struct TdesKey {
    schedule: des::TdesEde3,
}

impl TdesKey {
    /// Builds the key schedule for `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // new_from_slice only fails on a wrong length, which the array type rules out.
        let schedule = des::TdesEde3::new_from_slice(key).expect("24-byte 3DES key");
        TdesKey { schedule }
    }

    /// Pads and encrypts `plaintext` under `iv`, appending the ciphertext
    /// ([`padded_len`] bytes) to `out`.
    pub fn encrypt_into(&self, iv: &[u8; BLOCK_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        out.resize(start + padded_len(plaintext.len()), 0);
        TdesCbcEnc::inner_iv_init(self.schedule.clone(), iv.into())
            .encrypt_padded::<Pkcs7>(&mut out[start..], plaintext.len())
            // The buffer was sized with padded_len, so padding always fits.
            .expect("buffer sized for padding");
    }

    /// Decrypts `ciphertext` under `iv` and strips the padding.
    pub fn decrypt(
        &self,
        iv: &[u8; BLOCK_LEN],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, BadCiphertext> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(BLOCK_LEN) {
            return Err(BadCiphertext);
        }
        let mut buf = ciphertext.to_vec();
        let len = TdesCbcDec::inner_iv_init(self.schedule.clone(), iv.into())
            .decrypt_padded::<Pkcs7>(&mut buf)
            .map_err(|_| BadCiphertext)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl fmt::Debug for TdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TdesKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipher::BlockCipherEncrypt;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(s: &str) -> [u8; KEY_LEN] {
        hex(s).try_into().unwrap()
    }

    fn ecb(k: &[u8; KEY_LEN], block: &[u8]) -> Vec<u8> {
        let cipher = des::TdesEde3::new_from_slice(k).unwrap();
        let mut b = cipher::Block::<des::TdesEde3>::try_from(block).unwrap();
        cipher.encrypt_block(&mut b);
        b.to_vec()
    }

    /// NIST SP 800-67 Rev. 1, appendix B: three-key TDEA in ECB mode.
    #[test]
    fn nist_sp800_67_known_answer() {
        let k = key("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
        let pt = b"The qufck brown fox jump";
        let want = hex("A826FD8CE53B855FCCE21C8112256FE668D5C05DD9B6B900");
        let got: Vec<u8> = pt.chunks(8).flat_map(|b| ecb(&k, b)).collect();
        assert_eq!(got, want);
    }

    /// With K1 = K2 = K3, EDE collapses to single DES: the classic DES vector.
    #[test]
    fn single_des_known_answer_through_ede() {
        let k = key("133457799BBCDFF1133457799BBCDFF1133457799BBCDFF1");
        assert_eq!(ecb(&k, &hex("0123456789ABCDEF")), hex("85E813540F0AB405"));
    }

    /// CBC with a zero IV on one block is ECB; the second block chains.
    #[test]
    fn cbc_matches_ecb_chaining() {
        let k = key("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
        let tk = TdesKey::new(&k);
        let mut out = Vec::new();
        tk.encrypt_into(&[0; 8], b"The qufc", &mut out);
        assert_eq!(out.len(), 16);
        assert_eq!(out[..8], hex("A826FD8CE53B855F")[..]);
        // The padding block 0x08*8 XOR the first ciphertext block, then encrypted.
        let second: Vec<u8> = out[..8].iter().map(|b| b ^ 8).collect();
        assert_eq!(out[8..], ecb(&k, &second)[..]);
    }

    #[test]
    fn round_trip_every_length() {
        let tk = TdesKey::new(&[7u8; KEY_LEN]);
        let iv = [1, 2, 3, 4, 5, 6, 7, 8];
        for len in 0..40 {
            let pt: Vec<u8> = (0..len as u8).collect();
            let mut ct = Vec::new();
            tk.encrypt_into(&iv, &pt, &mut ct);
            assert_eq!(ct.len(), padded_len(len));
            assert_eq!(tk.decrypt(&iv, &ct).unwrap(), pt);
        }
    }

    #[test]
    fn bad_lengths_and_padding_are_errors() {
        let tk = TdesKey::new(&[9u8; KEY_LEN]);
        let iv = [0u8; 8];
        assert_eq!(tk.decrypt(&iv, &[]), Err(BadCiphertext));
        assert_eq!(tk.decrypt(&iv, &[0; 7]), Err(BadCiphertext));
        let mut ct = Vec::new();
        tk.encrypt_into(&iv, b"hello", &mut ct);
        // Flipping the IV's last byte flips the last plaintext byte: the pad value.
        let mut bad_iv = iv;
        bad_iv[7] ^= 0x40;
        assert_eq!(tk.decrypt(&bad_iv, &ct), Err(BadCiphertext));
    }
}
