//! Pins docs/PROTOCOL.md to the code.
//!
//! The "Test vectors" section of the protocol document holds a fenced block
//! of `name = value` lines: fixed inputs (exponents, IVs, keys, heads),
//! the values the protocol derives from them, and the protocol's constants.
//! These tests recompute every derived value twice, once through the
//! crate's public API and once with an independent re-implementation of the
//! document's description (num-bigint, sha2, hmac, des/cbc, base64 used
//! directly), and fail if any documented line is changed, added or removed.
//!
//! To print the derived values for the block (after changing an input):
//! `cargo test --test protocol_vectors -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine as _;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use cipher::block_padding::Pkcs7;
use hmac::{KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use muchat::client::known_servers::{self, Trust};
use muchat::content::{Body, ContentKey, CONTENT_KEY_B64_LEN};
use muchat::dh::{self, EphemeralSecret, PublicValue, StaticSecret};
use muchat::event::{Delivery, ErrorCode, Reply, ServerMessage};
use muchat::frame::{Frame, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN, REKEY_BLOCKS};
use muchat::handshake::{self, HandshakeError, Keyed, MAX_HANDSHAKE_LINE, PROTOCOL};
use muchat::identity::Fingerprint;
use muchat::keys::{self, SessionKeys, Transcript};
use muchat::names::{Conversation, GroupName, Username, MAX_NAME_LEN};
use muchat::request::{
    Request, DEFAULT_HISTORY, FILE_CHUNK_SIZE, MAX_ACK_IDS, MAX_FIELD_LEN, MAX_HISTORY,
    MAX_MESSAGE_LEN,
};
use muchat::server::outbox::OutboxLimits;
use muchat::server::Config;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64_NOPAD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The fixed inputs; every other vector is derived from these.
const INPUTS: [&str; 11] = [
    "client_exponent",
    "server_exponent",
    "server_static_exponent",
    "frame1_iv",
    "frame1_head",
    "content_key",
    "content_iv",
    "content_plaintext",
    "frame2_iv",
    "frame3_iv",
    "frame3_head",
];

/// Every error code. The exhaustive match stops this file compiling when a
/// variant is added, until it is listed here (and then documented, since
/// `error_codes` in the document must equal this list).
fn all_error_codes() -> Vec<ErrorCode> {
    let all = [
        ErrorCode::UnknownCommand,
        ErrorCode::Usage,
        ErrorCode::BadName,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::UserExists,
        ErrorCode::LoginFailed,
        ErrorCode::UnknownUser,
        ErrorCode::GroupExists,
        ErrorCode::NoSuchGroup,
        ErrorCode::NotMember,
        ErrorCode::AlreadyMember,
        ErrorCode::TooLarge,
        ErrorCode::NoSuchTransfer,
        ErrorCode::QuotaExceeded,
        ErrorCode::Storage,
        ErrorCode::RateLimited,
        ErrorCode::TooManyGroups,
    ];
    for c in all {
        match c {
            ErrorCode::UnknownCommand
            | ErrorCode::Usage
            | ErrorCode::BadName
            | ErrorCode::NotLoggedIn
            | ErrorCode::AlreadyLoggedIn
            | ErrorCode::UserExists
            | ErrorCode::LoginFailed
            | ErrorCode::UnknownUser
            | ErrorCode::GroupExists
            | ErrorCode::NoSuchGroup
            | ErrorCode::NotMember
            | ErrorCode::AlreadyMember
            | ErrorCode::TooLarge
            | ErrorCode::NoSuchTransfer
            | ErrorCode::QuotaExceeded
            | ErrorCode::Storage
            | ErrorCode::RateLimited
            | ErrorCode::TooManyGroups => {}
        }
    }
    all.to_vec()
}

/// The protocol constants as the code defines them.
fn constants() -> Vec<(&'static str, String)> {
    let config = Config::default();
    let limits = OutboxLimits::default();
    let codes: Vec<&str> = all_error_codes()
        .into_iter()
        .map(ErrorCode::as_str)
        .collect();
    vec![
        ("protocol", PROTOCOL.to_string()),
        ("generator", dh::GENERATOR.to_string()),
        ("element_bytes", dh::ELEMENT_BYTES.to_string()),
        ("element_hex_len", dh::ELEMENT_HEX_LEN.to_string()),
        ("exponent_bits", dh::EXPONENT_BITS.to_string()),
        ("label_c2s_enc", keys::LABEL_C2S_ENC.to_string()),
        ("label_c2s_mac", keys::LABEL_C2S_MAC.to_string()),
        ("label_s2c_enc", keys::LABEL_S2C_ENC.to_string()),
        ("label_s2c_mac", keys::LABEL_S2C_MAC.to_string()),
        ("label_confirm", keys::LABEL_CONFIRM.to_string()),
        ("label_rekey", keys::LABEL_REKEY.to_string()),
        ("server_finished", keys::SERVER_FINISHED.to_string()),
        ("max_handshake_line", MAX_HANDSHAKE_LINE.to_string()),
        ("max_line_len", MAX_LINE_LEN.to_string()),
        ("max_head_len", MAX_HEAD_LEN.to_string()),
        ("rekey_blocks", REKEY_BLOCKS.to_string()),
        ("content_key_b64_len", CONTENT_KEY_B64_LEN.to_string()),
        ("file_chunk_size", FILE_CHUNK_SIZE.to_string()),
        ("max_field_len", MAX_FIELD_LEN.to_string()),
        ("max_name_len", MAX_NAME_LEN.to_string()),
        ("default_max_file_size", config.max_file_size.to_string()),
        (
            "handshake_timeout_secs",
            config.handshake_timeout.as_secs().to_string(),
        ),
        ("outbox_urgent_queue", limits.urgent.to_string()),
        ("outbox_bulk_queue", limits.bulk.to_string()),
        (
            "bulk_timeout_secs",
            limits.bulk_timeout.as_secs().to_string(),
        ),
        ("max_message_len", MAX_MESSAGE_LEN.to_string()),
        ("default_history", DEFAULT_HISTORY.to_string()),
        ("max_history", MAX_HISTORY.to_string()),
        ("max_ack_ids", MAX_ACK_IDS.to_string()),
        (
            "default_max_pending_bytes",
            config.max_pending_bytes.to_string(),
        ),
        ("error_codes", codes.join(",")),
    ]
}

/// The length of the line carrying a worst-case `MSG` event (longest ids,
/// timestamp and names) with `n` bytes of message plaintext.
fn worst_case_msg_line(n: usize) -> usize {
    let key = ContentKey::from_bytes([1; 24]);
    let msg = ServerMessage::Msg(Delivery {
        id: u64::MAX,
        at_ms: u64::MAX,
        from: Username::parse(&"u".repeat(MAX_NAME_LEN)).unwrap(),
        to: Conversation::Group(GroupName::parse(&"g".repeat(MAX_NAME_LEN)).unwrap()),
        key: key.clone(),
        body: key.seal_with_iv(&[0; 8], &vec![0; n]),
    });
    let frame = msg.to_frame();
    let mut sealer = Sealer::new(&muchat::keys::DirectionKeys {
        enc: [2; 24],
        mac: [3; 32],
    });
    let line = seal(&mut sealer, &[0; 8], &frame.head, frame.body.as_ref());
    line.len()
}

/// The longest allowed message, relayed in the worst case, fits a line.
#[test]
fn the_longest_message_always_fits_its_relayed_line() {
    assert!(worst_case_msg_line(MAX_MESSAGE_LEN) <= MAX_LINE_LEN);
}

/// The `name = value` lines of the fenced block under the "Test vectors" heading.
fn documented() -> BTreeMap<String, String> {
    let mut lines = DOC.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with('#') && l.contains("Test vectors"))
        .expect("a \"Test vectors\" heading");
    lines
        .by_ref()
        .find(|l| l.starts_with("```"))
        .expect("a fenced block after the heading");
    let mut map = BTreeMap::new();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            return map;
        }
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not a `name = value` line: {line:?}"));
        let old = map.insert(name.trim().to_string(), value.to_string());
        assert!(old.is_none(), "{name} is documented twice");
    }
    panic!("unterminated test vector block");
}

fn get<'a>(doc: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    doc.get(name)
        .unwrap_or_else(|| panic!("{name} missing from the test vectors"))
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "not hex: {s:?}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fixed<const N: usize>(s: &str) -> [u8; N] {
    unhex(s)
        .try_into()
        .unwrap_or_else(|_| panic!("{s:?} is not {N} bytes"))
}

fn exponent(doc: &BTreeMap<String, String>, name: &str) -> BigUint {
    BigUint::from_bytes_be(&unhex(get(doc, name)))
}

/// Seals one frame and returns the line without its newline.
fn seal(sealer: &mut Sealer, iv: &[u8; 8], head: &str, body: Option<&Body>) -> String {
    let mut out = Vec::new();
    sealer.seal_with_iv(iv, head, body, &mut out);
    assert_eq!(out.pop(), Some(b'\n'), "a sealed line ends in a newline");
    String::from_utf8(out).expect("sealed lines are ASCII")
}

/// The server's static key pair, from the documented exponent.
fn server_static(doc: &BTreeMap<String, String>) -> StaticSecret {
    StaticSecret::from_bytes(&unhex(get(doc, "server_static_exponent")))
        .expect("a 32-byte static exponent above 1")
}

/// A number mod p as 256 big-endian bytes (for the shared secrets, which the
/// API does not expose).
fn element_bytes(n: &BigUint) -> [u8; 256] {
    let mut out = [0u8; 256];
    let raw = n.to_bytes_be();
    out[256 - raw.len()..].copy_from_slice(&raw);
    out
}

/// Runs the client's side of the handshake with the documented exponent
/// against a canned server line; returns what the client sent and the result.
fn client_against(
    doc: &BTreeMap<String, String>,
    server_line: &str,
) -> (String, Result<Keyed, HandshakeError>) {
    let mut sent = Vec::new();
    let result = handshake::client_with_secret(
        &mut Cursor::new(format!("{server_line}\n").into_bytes()),
        &mut sent,
        EphemeralSecret::from_exponent(exponent(doc, "client_exponent")),
    );
    (String::from_utf8(sent).unwrap(), result)
}

/// Every derived vector, computed through the crate's public API.
fn derive_through_the_crate(doc: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let a = exponent(doc, "client_exponent");
    let client_public = EphemeralSecret::from_exponent(a.clone())
        .public_value()
        .clone();
    let server_public = EphemeralSecret::from_exponent(exponent(doc, "server_exponent"))
        .public_value()
        .clone();
    let identity = server_static(doc);
    let static_public = identity.public_value().clone();
    let client_hello = format!("{PROTOCOL} {}\n", client_public.to_hex());

    // The server runs the real handshake against the client's hello...
    let mut server_sent = Vec::new();
    let mut server_keyed = handshake::server_with_secret(
        &mut Cursor::new(client_hello.clone().into_bytes()),
        &mut server_sent,
        &identity,
        EphemeralSecret::from_exponent(exponent(doc, "server_exponent")),
    )
    .expect("server handshake");
    let mut server_hello = String::from_utf8(server_sent).unwrap();
    assert_eq!(
        server_hello.pop(),
        Some('\n'),
        "the hello ends in a newline"
    );
    assert!(server_hello.len() <= MAX_HANDSHAKE_LINE);
    assert_eq!(server_keyed.server_key, static_public);

    // ...and the client runs it against the server's answer.
    let (sent, keyed) = client_against(doc, &server_hello);
    assert_eq!(sent, client_hello, "the client sends its hello only");
    let mut keyed = keyed.expect("client handshake");
    assert_eq!(keyed.server_key, static_public);

    let transcript = Transcript {
        client: &client_public,
        server: &server_public,
        server_static: &static_public,
    };
    let (ee, es) = EphemeralSecret::from_exponent(a.clone())
        .diffie_hellman_twice(&server_public, &static_public);
    let client_keys = SessionKeys::derive(&ee, &es, &transcript);
    let server_keys = SessionKeys::derive(
        &EphemeralSecret::from_exponent(exponent(doc, "server_exponent"))
            .diffie_hellman(&client_public),
        &identity.diffie_hellman(&client_public),
        &transcript,
    );
    assert_eq!(client_keys, server_keys, "both ends derive the same keys");
    let c2s = &client_keys.client_to_server;
    let s2c = &client_keys.server_to_client;

    // Zee and Zes are not reachable through the API: compute them with
    // num-bigint; the independent key derivation below ties them to the
    // crate's keys.
    let zee = BigUint::from_bytes_be(&server_public.to_bytes()).modpow(&a, dh::prime());
    let zes = BigUint::from_bytes_be(&static_public.to_bytes()).modpow(&a, dh::prime());

    let content_key = ContentKey::from_bytes(fixed(get(doc, "content_key")));
    let body = content_key.seal_with_iv(
        &fixed(get(doc, "content_iv")),
        get(doc, "content_plaintext").as_bytes(),
    );
    let frame2_head = format!("SEND bob {}", content_key.to_b64());

    let frame1 = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame1_iv")),
        get(doc, "frame1_head"),
        None,
    );
    let frame2 = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame2_iv")),
        &frame2_head,
        Some(&body),
    );
    let frame3 = seal(
        &mut server_keyed.sealer,
        &fixed(get(doc, "frame3_iv")),
        get(doc, "frame3_head"),
        None,
    );

    vec![
        ("client_public", client_public.to_hex()),
        ("server_public", server_public.to_hex()),
        ("server_static_public", static_public.to_hex()),
        ("shared_secret_ee", hex(&element_bytes(&zee))),
        ("shared_secret_es", hex(&element_bytes(&zes))),
        ("c2s_enc_key", hex(&c2s.enc)),
        ("c2s_mac_key", hex(&c2s.mac)),
        ("s2c_enc_key", hex(&s2c.enc)),
        ("s2c_mac_key", hex(&s2c.mac)),
        ("confirm_key", hex(&client_keys.confirm)),
        ("server_hello", server_hello),
        (
            "server_fingerprint",
            Fingerprint::of(&static_public).to_string(),
        ),
        ("c2s_enc_key_rotated", hex(&keys::rotate_enc_key(&c2s.enc))),
        ("content_key_b64", content_key.to_b64()),
        ("content_body", body.as_str().to_string()),
        ("frame1_line", frame1),
        ("frame2_head", frame2_head),
        ("frame2_line", frame2),
        ("frame3_line", frame3),
    ]
}

#[test]
#[ignore = "prints the derived vectors for docs/PROTOCOL.md"]
fn print_vectors() {
    let doc = documented();
    for (name, value) in derive_through_the_crate(&doc)
        .into_iter()
        .chain(constants())
    {
        println!("{name} = {value}");
    }
}

#[test]
fn every_documented_value_matches_the_code() {
    let doc = documented();
    let mut expected: BTreeMap<String, String> = derive_through_the_crate(&doc)
        .into_iter()
        .chain(constants())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for name in INPUTS {
        expected.insert(name.to_string(), get(&doc, name).to_string());
    }
    for (name, want) in &expected {
        assert_eq!(
            get(&doc, name),
            want,
            "documented {name} differs from the code"
        );
    }
    let extra: Vec<&String> = doc.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "unchecked names in the test vectors: {extra:?}"
    );
}

/// SHA-256(label || 0x00 || parts...), as the document describes.
fn sha256(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn tdes_cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut buf = ct.to_vec();
    let n = cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
        .expect("24-byte key, 8-byte IV")
        .decrypt_padded::<Pkcs7>(&mut buf)
        .expect("valid PKCS#7 padding")
        .len();
    buf.truncate(n);
    buf
}

/// Checks a line as the document describes it: `head "." body "." tag`, the
/// tag an HMAC over the sequence number and `head "." body`, the head
/// base64(IV || 3DES-CBC). Returns the head text and the body segment.
fn open_by_hand(
    line: &str,
    mac_key: &[u8],
    enc_key: &[u8],
    seq: u64,
    iv: &str,
) -> (String, String) {
    assert!(line.len() <= MAX_LINE_LEN);
    let (covered, tag) = line.rsplit_once('.').expect("a tag");
    let (head, body) = covered.split_once('.').expect("a head");
    assert_eq!(tag.len(), 44);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(mac_key).unwrap();
    mac.update(&seq.to_be_bytes());
    // head "." and, for a non-empty body, the SHA-256 of its characters.
    mac.update(format!("{head}.").as_bytes());
    if !body.is_empty() {
        mac.update(&Sha256::digest(body.as_bytes()));
    }
    assert_eq!(B64.encode(mac.finalize().into_bytes()), tag, "tag");
    let raw = B64.decode(head).expect("head base64");
    assert_eq!(hex(&raw[..8]), iv, "the head starts with its IV");
    let text = tdes_cbc_decrypt(enc_key, &raw[..8], &raw[8..]);
    (String::from_utf8(text).unwrap(), body.to_string())
}

#[test]
fn an_independent_implementation_of_the_document_agrees() {
    let doc = documented();
    let p = dh::prime();
    let doc_prime: String = DOC.split_whitespace().collect();
    assert!(
        doc_prime.contains(&format!("{p:X}")),
        "the group 14 prime is written out in the document"
    );
    let g = BigUint::from(2u32);
    let (a, b, s) = (
        exponent(&doc, "client_exponent"),
        exponent(&doc, "server_exponent"),
        exponent(&doc, "server_static_exponent"),
    );
    for name in [
        "client_exponent",
        "server_exponent",
        "server_static_exponent",
    ] {
        assert_eq!(unhex(get(&doc, name)).len(), 32, "{name} is 32 bytes");
    }
    for e in [&a, &b, &s] {
        assert!(e.bits() <= 256 && *e > BigUint::from(1u32));
    }
    let big_a = g.modpow(&a, p);
    let big_b = g.modpow(&b, p);
    let big_s = g.modpow(&s, p);
    let two = BigUint::from(2u32);
    for v in [&big_a, &big_b, &big_s] {
        assert!(*v >= two && *v <= p - 2u32, "public values lie in 2..p-2");
    }
    assert_eq!(format!("{big_a:0>512x}"), get(&doc, "client_public"));
    assert_eq!(format!("{big_b:0>512x}"), get(&doc, "server_public"));
    assert_eq!(format!("{big_s:0>512x}"), get(&doc, "server_static_public"));
    let zee = big_b.modpow(&a, p);
    assert_eq!(zee, big_a.modpow(&b, p));
    assert_eq!(format!("{zee:0>512x}"), get(&doc, "shared_secret_ee"));
    let zes = big_s.modpow(&a, p);
    assert_eq!(zes, big_a.modpow(&s, p));
    assert_eq!(format!("{zes:0>512x}"), get(&doc, "shared_secret_es"));

    let zee = unhex(get(&doc, "shared_secret_ee"));
    let zes = unhex(get(&doc, "shared_secret_es"));
    let big_a = unhex(get(&doc, "client_public"));
    let big_b = unhex(get(&doc, "server_public"));
    let big_s = unhex(get(&doc, "server_static_public"));
    for v in [&zee, &zes, &big_a, &big_b, &big_s] {
        assert_eq!(v.len(), 256);
    }
    let kdf = |label| sha256(label, &[&zee, &zes, &big_a, &big_b, &big_s]);
    assert_eq!(
        hex(&kdf("muchat/2 c2s enc")[..24]),
        get(&doc, "c2s_enc_key")
    );
    assert_eq!(hex(&kdf("muchat/2 c2s mac")), get(&doc, "c2s_mac_key"));
    assert_eq!(
        hex(&kdf("muchat/2 s2c enc")[..24]),
        get(&doc, "s2c_enc_key")
    );
    assert_eq!(hex(&kdf("muchat/2 s2c mac")), get(&doc, "s2c_mac_key"));
    assert_eq!(hex(&kdf("muchat/2 confirm")), get(&doc, "confirm_key"));

    // The server's hello: B, S and the key confirmation.
    let confirm_key = unhex(get(&doc, "confirm_key"));
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&confirm_key).unwrap();
    mac.update(b"muchat/2 server finished");
    let confirm = B64.encode(mac.finalize().into_bytes());
    assert_eq!(confirm.len(), 44);
    let hello = get(&doc, "server_hello");
    assert_eq!(
        hello,
        format!(
            "MUCHAT/2 {} {} {confirm}",
            get(&doc, "server_public"),
            get(&doc, "server_static_public")
        )
    );
    assert!(hello.len() <= get(&doc, "max_handshake_line").parse().unwrap());

    // The fingerprint: SHA-256 over S's 256 bytes, unpadded base64.
    let fingerprint = format!("SHA256:{}", B64_NOPAD.encode(Sha256::digest(&big_s)));
    assert_eq!(fingerprint.len(), 7 + 43);
    assert_eq!(fingerprint, get(&doc, "server_fingerprint"));

    let c2s_enc = unhex(get(&doc, "c2s_enc_key"));
    assert_eq!(
        hex(&sha256("muchat/2 rekey", &[&c2s_enc])[..24]),
        get(&doc, "c2s_enc_key_rotated")
    );

    let content_key = unhex(get(&doc, "content_key"));
    assert_eq!(content_key.len(), 24);
    let key_b64 = get(&doc, "content_key_b64");
    assert_eq!(key_b64, B64.encode(&content_key));
    assert_eq!(key_b64.len(), 32);
    let body = B64.decode(get(&doc, "content_body")).unwrap();
    assert_eq!(hex(&body[..8]), get(&doc, "content_iv"));
    assert_eq!(
        tdes_cbc_decrypt(&content_key, &body[..8], &body[8..]),
        get(&doc, "content_plaintext").as_bytes()
    );
    assert_eq!(get(&doc, "frame2_head"), format!("SEND bob {key_b64}"));

    let c2s_mac = unhex(get(&doc, "c2s_mac_key"));
    let s2c_mac = unhex(get(&doc, "s2c_mac_key"));
    let s2c_enc = unhex(get(&doc, "s2c_enc_key"));
    let (head, body) = open_by_hand(
        get(&doc, "frame1_line"),
        &c2s_mac,
        &c2s_enc,
        0,
        get(&doc, "frame1_iv"),
    );
    assert_eq!(
        (head.as_str(), body.as_str()),
        (get(&doc, "frame1_head"), "")
    );
    let (head, body) = open_by_hand(
        get(&doc, "frame2_line"),
        &c2s_mac,
        &c2s_enc,
        1,
        get(&doc, "frame2_iv"),
    );
    assert_eq!(head, get(&doc, "frame2_head"));
    assert_eq!(
        body,
        get(&doc, "content_body"),
        "the body is carried verbatim"
    );
    let (head, body) = open_by_hand(
        get(&doc, "frame3_line"),
        &s2c_mac,
        &s2c_enc,
        0,
        get(&doc, "frame3_iv"),
    );
    assert_eq!(
        (head.as_str(), body.as_str()),
        (get(&doc, "frame3_head"), "")
    );
}

fn documented_keys(doc: &BTreeMap<String, String>) -> SessionKeys {
    let client_public = PublicValue::from_hex(get(doc, "client_public")).unwrap();
    let server = EphemeralSecret::from_exponent(exponent(doc, "server_exponent"));
    let server_public = server.public_value().clone();
    let identity = server_static(doc);
    SessionKeys::derive(
        &server.diffie_hellman(&client_public),
        &identity.diffie_hellman(&client_public),
        &Transcript {
            client: &client_public,
            server: &server_public,
            server_static: identity.public_value(),
        },
    )
}

#[test]
fn the_server_opens_the_documented_lines() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let line1 = get(&doc, "frame1_line").as_bytes();
    let line2 = get(&doc, "frame2_line").as_bytes();

    // Sequence numbers: the second line does not verify as the first.
    assert!(Opener::new(&keys.client_to_server).open(line2).is_err());
    // Nor under the other direction's keys.
    assert!(Opener::new(&keys.server_to_client).open(line1).is_err());

    let mut opener = Opener::new(&keys.client_to_server);
    let f1 = opener.open(line1).expect("frame 1 opens");
    assert_eq!(f1, Frame::head(get(&doc, "frame1_head")));
    assert_eq!(
        Request::parse(f1),
        Ok(Request::Login {
            username: Username::parse("alice").unwrap(),
            password: "secret".into(),
        })
    );
    let f2 = opener.open(line2).expect("frame 2 opens");
    assert_eq!(f2.head, get(&doc, "frame2_head"));
    let body = f2.body.clone().expect("frame 2 has a body");
    assert_eq!(body.as_str(), get(&doc, "content_body"));
    let key = ContentKey::from_b64(get(&doc, "content_key_b64")).unwrap();
    assert_eq!(
        key.open(&body).unwrap(),
        get(&doc, "content_plaintext").as_bytes()
    );
    assert_eq!(
        Request::parse(f2),
        Ok(Request::Send {
            to: Username::parse("bob").unwrap(),
            key,
            body,
        })
    );
    // A replay of the first line fails once the counter has moved on.
    assert!(opener.open(line1).is_err());

    let mut client_opener = Opener::new(&keys.server_to_client);
    let f3 = client_opener
        .open(get(&doc, "frame3_line").as_bytes())
        .unwrap();
    assert_eq!(f3.head, get(&doc, "frame3_head"));
    assert_eq!(
        ServerMessage::parse(f3),
        Ok(ServerMessage::Reply(Reply::Ok("logged in as alice".into())))
    );
}

/// With a limit of 3 blocks, frame 1 (a 3-block head) fills the key exactly
/// and frame 2 would cross the limit, so frame 2 is sealed under the
/// documented rotated key with the unrotated MAC key.
#[test]
fn rotation_happens_before_a_head_would_cross_the_limit() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let head1 = get(&doc, "frame1_head");
    assert_eq!(head1.len() / 8 + 1, 3, "frame 1's head is three blocks");
    let body = Body::from_wire(get(&doc, "content_body")).unwrap();
    let mut sealer = Sealer::with_rekey_blocks(&keys.client_to_server, 3);
    let line1 = seal(&mut sealer, &fixed(get(&doc, "frame1_iv")), head1, None);
    assert_eq!(
        line1,
        get(&doc, "frame1_line"),
        "no rotation at exactly the limit"
    );
    let line2 = seal(
        &mut sealer,
        &fixed(get(&doc, "frame2_iv")),
        get(&doc, "frame2_head"),
        Some(&body),
    );
    assert_ne!(line2, get(&doc, "frame2_line"));
    let (head, _) = open_by_hand(
        &line2,
        &keys.client_to_server.mac,
        &unhex(get(&doc, "c2s_enc_key_rotated")),
        1,
        get(&doc, "frame2_iv"),
    );
    assert_eq!(head, get(&doc, "frame2_head"));
    let mut opener = Opener::with_rekey_blocks(&keys.client_to_server, 3);
    assert_eq!(opener.open(line1.as_bytes()).unwrap().head, head1);
    assert_eq!(opener.open(line2.as_bytes()).unwrap().head, head);
}

/// The server hello's three words after the protocol name.
fn hello_parts(doc: &BTreeMap<String, String>) -> (String, String, String) {
    let hello = get(doc, "server_hello");
    let mut words = hello.split(' ');
    assert_eq!(words.next(), Some(PROTOCOL));
    let (Some(b), Some(s), Some(confirm), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        panic!("server_hello is not `{PROTOCOL} B S confirm`");
    };
    (b.to_string(), s.to_string(), confirm.to_string())
}

/// What the client sends before it reads the server's hello: its own hello.
fn client_hello(doc: &BTreeMap<String, String>) -> String {
    format!("{PROTOCOL} {}\n", get(doc, "client_public"))
}

#[test]
fn the_client_accepts_the_documented_server_hello() {
    let doc = documented();
    let (sent, keyed) = client_against(&doc, get(&doc, "server_hello"));
    assert_eq!(sent, client_hello(&doc));
    let mut keyed = keyed.expect("the documented hello is accepted");
    assert_eq!(keyed.server_key.to_hex(), get(&doc, "server_static_public"));
    let fp = Fingerprint::of(&keyed.server_key);
    assert_eq!(fp.to_string(), get(&doc, "server_fingerprint"));
    let pinned = Fingerprint::parse(get(&doc, "server_fingerprint")).unwrap();
    assert_eq!(pinned, fp);
    assert!(known_servers::check(&Trust::Fingerprint(pinned), "127.0.0.1:9000", &fp).is_ok());
    // The handshake's keys are the documented ones, in both directions.
    let line1 = seal(
        &mut keyed.sealer,
        &fixed(get(&doc, "frame1_iv")),
        get(&doc, "frame1_head"),
        None,
    );
    assert_eq!(line1, get(&doc, "frame1_line"));
    let f3 = keyed
        .opener
        .open(get(&doc, "frame3_line").as_bytes())
        .expect("the client opens the server's frame");
    assert_eq!(f3.head, get(&doc, "frame3_head"));
}

/// Runs the client against `line` and returns its error, checking that it
/// sent nothing but its own hello.
fn refused(doc: &BTreeMap<String, String>, line: &str) -> HandshakeError {
    let (sent, result) = client_against(doc, line);
    assert_eq!(sent, client_hello(doc), "nothing after the hello is sent");
    match result {
        Ok(_) => panic!("the client accepted {line:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_hello_with_an_altered_confirmation_is_refused() {
    let doc = documented();
    let (b, s, confirm) = hello_parts(&doc);
    assert!(confirm.ends_with('=') && !confirm.ends_with("=="));
    // Every significant character, changed to another base64 character
    // (the last one may then carry non-zero trailing bits, which the
    // client also refuses).
    for (i, c) in confirm.char_indices().filter(|&(_, c)| c != '=') {
        let other = if c == 'A' { 'B' } else { 'A' };
        let mut altered = confirm.clone();
        altered.replace_range(i..=i, &other.to_string());
        let e = refused(&doc, &format!("{PROTOCOL} {b} {s} {altered}"));
        assert!(
            matches!(e, HandshakeError::BadConfirmation),
            "confirm altered at {i}: {e:?}"
        );
    }
    for altered in [
        "",
        &confirm[..43],
        &confirm[..40],
        &format!("{confirm}AAAA"),
    ] {
        let e = refused(&doc, &format!("{PROTOCOL} {b} {s} {altered}"));
        assert!(matches!(e, HandshakeError::BadConfirmation), "{e:?}");
    }
}

#[test]
fn a_hello_with_other_public_values_and_the_same_confirmation_is_refused() {
    let doc = documented();
    let (b, s, confirm) = hello_parts(&doc);
    // Another server's static value (a man in the middle forwarding the real
    // confirmation but substituting its own key), another ephemeral value,
    // and the two swapped: each changes the keys, so the confirmation fails.
    let other = StaticSecret::from_bytes(&[0x42; 32]).unwrap();
    let s2 = other.public_value().to_hex();
    assert_ne!(s2, s);
    for (b, s) in [(&b, &s2), (&s2, &s), (&s, &b)] {
        let e = refused(&doc, &format!("{PROTOCOL} {b} {s} {confirm}"));
        assert!(matches!(e, HandshakeError::BadConfirmation), "{e:?}");
    }
}

#[test]
fn a_man_in_the_middle_with_its_own_key_is_caught_by_the_pin() {
    let doc = documented();
    // The impostor runs the real server code with its own static key: its
    // confirmation is valid, so only the pinned fingerprint can tell.
    let impostor = StaticSecret::from_bytes(&[0x42; 32]).unwrap();
    let mut hello = Vec::new();
    handshake::server_with_secret(
        &mut Cursor::new(client_hello(&doc).into_bytes()),
        &mut hello,
        &impostor,
        EphemeralSecret::from_exponent(exponent(&doc, "server_exponent")),
    )
    .unwrap();
    let hello = String::from_utf8(hello).unwrap();
    let (_, keyed) = client_against(&doc, hello.trim_end());
    let keyed = keyed.expect("the impostor proves its own key");
    let offered = Fingerprint::of(&keyed.server_key);
    assert_ne!(offered.to_string(), get(&doc, "server_fingerprint"));
    let pinned = Fingerprint::parse(get(&doc, "server_fingerprint")).unwrap();
    assert!(known_servers::check(&Trust::Fingerprint(pinned), "127.0.0.1:9000", &offered).is_err());
}

#[test]
fn the_client_validates_the_hello_before_anything_else() {
    let doc = documented();
    let (b, s, confirm) = hello_parts(&doc);
    let one = format!("{:0>512}", "1");
    let p_minus_1 = format!("{:0>512x}", dh::prime() - 1u32);
    for (b, s) in [(&one, &s), (&b, &one), (&p_minus_1, &s), (&b, &p_minus_1)] {
        let e = refused(&doc, &format!("{PROTOCOL} {b} {s} {confirm}"));
        assert!(
            matches!(e, HandshakeError::BadPublicValue(dh::DhError::OutOfRange)),
            "{e:?}"
        );
    }
    for line in [
        format!("{PROTOCOL} {b} {confirm}"),
        format!("{PROTOCOL} {b} {s} {confirm} extra"),
        format!("{PROTOCOL} {b}{s} {confirm}"),
    ] {
        let e = refused(&doc, &line);
        assert!(matches!(e, HandshakeError::BadPublicValue(_)), "{e:?}");
    }
    // A MUCHAT/1 server's hello is another version.
    let e = refused(&doc, &format!("MUCHAT/1 {b}"));
    assert!(
        matches!(e, HandshakeError::Version(ref v) if v == "MUCHAT/1"),
        "{e:?}"
    );
    let e = refused(&doc, &format!("{PROTOCOL} ERROR go away"));
    assert!(
        matches!(e, HandshakeError::Refused(ref why) if why == "go away"),
        "{e:?}"
    );
}
