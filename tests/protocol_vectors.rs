//! Pins docs/PROTOCOL.md to the code.
//!
//! The "Test vectors" section of the protocol document holds a fenced block
//! of `name = value` lines: fixed inputs (exponents, IVs, keys, heads,
//! timestamps), the values the protocol derives from them, and the
//! protocol's constants. These tests recompute every derived value twice,
//! once through the crate's public API and once with an independent
//! re-implementation of the document's description (num-bigint, sha2, hmac,
//! des/cbc, base64 used directly), and fail if any documented line is
//! changed, added or removed.
//!
//! To print the derived values for the block (after changing an input):
//! `cargo test --test protocol_vectors -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine as _;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use cipher::block_padding::Pkcs7;
use hmac::{KeyInit, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use muchat::client::known_servers::{self, Trust};
use muchat::content::{Body, ContentKey, CONTENT_KEY_B64_LEN};
use muchat::dh::{self, EphemeralSecret, PublicValue, StaticSecret};
use muchat::event::{Delivery, ErrorCode, FileStart, Reply, ServerMessage};
use muchat::frame::{Frame, Opener, Sealer, MAX_HEAD_LEN, MAX_LINE_LEN, REKEY_BLOCKS};
use muchat::handshake::{self, HandshakeError, Keyed, MAX_HANDSHAKE_LINE, PROTOCOL};
use muchat::identity::Fingerprint;
use muchat::keys::{self, DirectionKeys, SessionKeys, Transcript};
use muchat::names::{Conversation, GroupName, MessageRef, Username, MAX_NAME_LEN};
use muchat::request::{
    format_sha256, Request, SendId, DEFAULT_HISTORY, FILE_CHUNK_SIZE, MAX_ACK_REFS, MAX_FIELD_LEN,
    MAX_HISTORY, MAX_MESSAGE_BODY_LEN, MAX_MESSAGE_LEN, MAX_SEND_ID_LEN,
};
use muchat::server::outbox::OutboxLimits;
use muchat::server::Config;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64_NOPAD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The fixed inputs; every other vector is derived from these (and from
/// the fixed words below, which the document's prose spells out).
const INPUTS: [&str; 35] = [
    "client_exponent",
    "server_exponent",
    "server_static_exponent",
    "frame1_iv",
    "frame1_head",
    "content_key",
    "content_iv",
    "content_plaintext",
    "send_id",
    "frame2_iv",
    "frame3_iv",
    "frame3_head",
    "frame4_iv",
    "frame4_head",
    "msg_unix_ms",
    "frame5_iv",
    "group_key",
    "group_key_id",
    "group_content_key",
    "group_content_iv",
    "group_content_plaintext",
    "gmsg_unix_ms",
    "gmsg_seq",
    "envelope_iv",
    "file_plaintext",
    "file_unix_ms",
    "frame7_iv",
    "chunk_key",
    "chunk_iv",
    "frame8_iv",
    "group_content2_key",
    "group_content2_iv",
    "group_content2_plaintext",
    "gmsg2_unix_ms",
    "envelope2_iv",
];

/// The sender of every message in the vectors.
const SENDER: &str = "alice";
/// The recipient of frame 2's direct message.
const RECIPIENT: &str = "bob";
/// Frame 5's reference: alice's message to bob, as bob reads it.
const MSG_AT: &str = "@alice:1";
/// The group of frame 6's `GMSG` (named by `group_key_id`, not on the wire).
const GROUP: &str = "devs";
/// Frames 7 and 8's reference: alice's file to bob, as bob reads it.
const FILE_AT: &str = "@alice:2";
/// Frame 7's file name.
const FILE_NAME: &str = "notes.txt";

/// The protocol constants as the code defines them.
fn constants() -> Vec<(&'static str, String)> {
    let config = Config::DEFAULT;
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
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
        ("max_send_id_len", MAX_SEND_ID_LEN.to_string()),
        ("max_message_len", MAX_MESSAGE_LEN.to_string()),
        ("default_history", DEFAULT_HISTORY.to_string()),
        ("max_history", MAX_HISTORY.to_string()),
        ("max_ack_refs", MAX_ACK_REFS.to_string()),
        ("default_max_file_size", config.max_file_size.to_string()),
        (
            "default_max_pending_bytes",
            config.max_pending_bytes.to_string(),
        ),
        (
            "handshake_timeout_secs",
            config.handshake_timeout.as_secs().to_string(),
        ),
        ("default_session_window", config.session_window.to_string()),
        ("default_memory_budget", config.memory_budget.to_string()),
        (
            "stall_timeout_secs",
            OutboxLimits::default().stall_timeout.as_secs().to_string(),
        ),
        ("error_codes", codes.join(",")),
    ]
}

/// The `Default` configuration agrees with `Config::DEFAULT` (the flags'
/// defaults) on everything the constants pin.
#[test]
fn the_default_config_is_the_documented_one() {
    let (a, b) = (Config::default(), Config::DEFAULT);
    assert_eq!(a.max_file_size, b.max_file_size);
    assert_eq!(a.max_pending_bytes, b.max_pending_bytes);
    assert_eq!(a.handshake_timeout, b.handshake_timeout);
    assert_eq!(a.session_window, b.session_window);
    assert_eq!(a.memory_budget, b.memory_budget);
    assert_eq!(OutboxLimits::default().window, b.session_window);
}

/// The error code table of section 7 lists exactly the codes of
/// `error_codes` (that is, of the code).
#[test]
fn the_error_code_table_lists_every_code() {
    let section = DOC
        .split_once("\n## 7. ")
        .and_then(|(_, rest)| rest.split_once("\n## 8. "))
        .expect("sections 7 and 8")
        .0;
    let mut table: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(code, _)| code)
        .collect();
    let mut code: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    table.sort_unstable();
    code.sort_unstable();
    assert_eq!(table, code);
}

fn sealed_line(sealer: &mut Sealer, frame: &Frame) -> usize {
    let mut out = Vec::new();
    if frame.clear {
        sealer.seal_clear_into(&frame.head, frame.body.as_ref(), &mut out);
    } else {
        sealer.seal_with_iv(&[0; 8], &frame.head, frame.body.as_ref(), &mut out);
    }
    out.len() - 1
}

/// The longest allowed message, relayed in the worst case (longest
/// references, timestamp and names) as `MSG`, `HIST` or `GMSG`, and the
/// largest file chunk relayed as `CHUNK`, each fit a line (section 9.6).
#[test]
fn the_longest_message_and_chunk_always_fit_their_relayed_lines() {
    let key = ContentKey::from_bytes([1; 24]);
    let body = key.seal_with_iv(&[0; 8], &vec![0; MAX_MESSAGE_LEN]);
    assert_eq!(body.as_str().len(), MAX_MESSAGE_BODY_LEN);
    let longest = |c: &str| c.repeat(MAX_NAME_LEN);
    let group = GroupName::parse(&longest("g")).unwrap();
    let d = Delivery {
        at: MessageRef {
            conv: Conversation::Group(group),
            seq: u64::MAX,
        },
        at_ms: u64::MAX,
        from: Username::parse(&longest("u")).unwrap(),
        key: key.clone(),
        body,
    };
    let chunk = ServerMessage::Chunk {
        at: MessageRef {
            conv: Conversation::User(Username::parse(&longest("u")).unwrap()),
            seq: u64::MAX,
        },
        offset: u64::MAX,
        key: key.clone(),
        body: key.seal_with_iv(&[0; 8], &vec![0; FILE_CHUNK_SIZE]),
    };
    let gmsg = ServerMessage::GroupMsg {
        key_id: u64::MAX,
        seq: u64::MAX,
        body: d.seal_for_group(&key),
    };
    let mut sealer = Sealer::new(&DirectionKeys {
        enc: [2; 24],
        mac: [3; 32],
    });
    for m in [
        ServerMessage::Msg(d.clone()),
        ServerMessage::History(d),
        gmsg,
        chunk,
    ] {
        let frame = m.to_frame();
        let len = sealed_line(&mut sealer, &frame);
        assert!(len <= MAX_LINE_LEN, "{len}: {}", frame.head);
    }
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

fn num(doc: &BTreeMap<String, String>, name: &str) -> u64 {
    get(doc, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
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

fn content_key(doc: &BTreeMap<String, String>, name: &str) -> ContentKey {
    ContentKey::from_bytes(fixed(get(doc, name)))
}

fn user(name: &str) -> Username {
    Username::parse(name).unwrap()
}

fn at(reference: &str) -> MessageRef {
    MessageRef::parse(reference).unwrap()
}

/// Seals one frame and returns the line without its newline.
fn seal(sealer: &mut Sealer, iv: &[u8; 8], head: &str, body: Option<&Body>) -> String {
    let mut out = Vec::new();
    sealer.seal_with_iv(iv, head, body, &mut out);
    assert_eq!(out.pop(), Some(b'\n'), "a sealed line ends in a newline");
    String::from_utf8(out).expect("sealed lines are ASCII")
}

/// Seals a frame with its documented IV (`iv` names it).
fn seal_doc(
    sealer: &mut Sealer,
    doc: &BTreeMap<String, String>,
    iv: &str,
    frame: &Frame,
) -> String {
    assert!(!frame.clear, "{} is not a clear head", frame.head);
    seal(
        sealer,
        &fixed(get(doc, iv)),
        &frame.head,
        frame.body.as_ref(),
    )
}

/// Seals a frame whose head travels in clear.
fn seal_clear(sealer: &mut Sealer, frame: &Frame) -> String {
    assert!(frame.clear, "{} is a clear head", frame.head);
    let mut out = Vec::new();
    sealer.seal_clear_into(&frame.head, frame.body.as_ref(), &mut out);
    assert_eq!(out.pop(), Some(b'\n'), "a sealed line ends in a newline");
    String::from_utf8(out).expect("sealed lines are ASCII")
}

/// The 3DES blocks a sealed line's (encrypted) head counted.
fn head_blocks(line: &str) -> u64 {
    let head = line.split('.').next().unwrap();
    let raw = B64.decode(head).expect("an encrypted head");
    (raw.len() as u64 - 8) / 8
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

/// The content of the vectors, built through the crate's API.
struct Content {
    /// Frame 2's request (and frame 5's message): alice's text to bob.
    send: Request,
    /// Frame 5: bob is sent alice's message.
    msg: ServerMessage,
    /// Frame 6's message, as bob has it once he opened the envelope.
    group_delivery: Delivery,
    /// The envelope text the crate seals for it.
    envelope_text: String,
    /// The envelope sealed with the documented IV.
    envelope: Body,
    /// Frame 6.
    gmsg: ServerMessage,
    /// Frame 9's second message, opened.
    group_delivery2: Delivery,
    /// Its envelope text, as the crate seals it.
    envelope2_text: String,
    /// That envelope sealed with the documented IV.
    envelope2: Body,
    /// Frame 9: frame 6's message and the next in one `GMSG`.
    bundle: ServerMessage,
    /// Frame 7.
    file: ServerMessage,
    /// Frame 8.
    chunk: ServerMessage,
}

fn content(doc: &BTreeMap<String, String>) -> Content {
    let key = content_key(doc, "content_key");
    let body = key.seal_with_iv(
        &fixed(get(doc, "content_iv")),
        get(doc, "content_plaintext").as_bytes(),
    );
    let send = Request::Send {
        to: user(RECIPIENT),
        send_id: SendId::parse(get(doc, "send_id")).expect("a valid send id"),
        key: key.clone(),
        body: body.clone(),
    };
    let msg = ServerMessage::Msg(Delivery {
        at: at(MSG_AT),
        at_ms: num(doc, "msg_unix_ms"),
        from: user(SENDER),
        key,
        body,
    });

    let group_key = content_key(doc, "group_key");
    let group_content_key = content_key(doc, "group_content_key");
    let group_delivery = Delivery {
        at: MessageRef {
            conv: Conversation::Group(GroupName::parse(GROUP).unwrap()),
            seq: num(doc, "gmsg_seq"),
        },
        at_ms: num(doc, "gmsg_unix_ms"),
        from: user(SENDER),
        key: group_content_key.clone(),
        body: group_content_key.seal_with_iv(
            &fixed(get(doc, "group_content_iv")),
            get(doc, "group_content_plaintext").as_bytes(),
        ),
    };
    // The API seals envelopes with a random IV: take the crate's envelope
    // text out of one, then seal it again with the documented IV.
    let random = group_delivery.seal_for_group(&group_key);
    let (random_envelope, carried) = random.split_envelope().expect("an enveloped body");
    assert_eq!(
        carried, group_delivery.body,
        "the content travels unchanged"
    );
    let envelope_text = String::from_utf8(group_key.open(&random_envelope).unwrap()).unwrap();
    let envelope =
        group_key.seal_with_iv(&fixed(get(doc, "envelope_iv")), envelope_text.as_bytes());
    assert_eq!(
        envelope.ciphertext_len() as u64 - 8,
        group_delivery.envelope_blocks() * 8,
        "the envelope's block count, as the server counts it for the group key"
    );
    let gmsg = ServerMessage::GroupMsg {
        key_id: num(doc, "group_key_id"),
        seq: group_delivery.at.seq,
        body: Body::enveloped(&envelope, &group_delivery.body),
    };

    // The next message in the group, committed together with frame 6's.
    let key2 = content_key(doc, "group_content2_key");
    let group_delivery2 = Delivery {
        at: MessageRef {
            conv: Conversation::Group(GroupName::parse(GROUP).unwrap()),
            seq: group_delivery.at.seq + 1,
        },
        at_ms: num(doc, "gmsg2_unix_ms"),
        from: user(SENDER),
        key: key2.clone(),
        body: key2.seal_with_iv(
            &fixed(get(doc, "group_content2_iv")),
            get(doc, "group_content2_plaintext").as_bytes(),
        ),
    };
    let random2 = group_delivery2.seal_for_group(&group_key);
    let (random_envelope2, _) = random2.split_envelope().expect("an enveloped body");
    let envelope2_text = String::from_utf8(group_key.open(&random_envelope2).unwrap()).unwrap();
    let envelope2 =
        group_key.seal_with_iv(&fixed(get(doc, "envelope2_iv")), envelope2_text.as_bytes());
    let bundle = ServerMessage::GroupMsg {
        key_id: num(doc, "group_key_id"),
        seq: group_delivery.at.seq,
        body: Body::bundle(&[
            &Body::enveloped(&envelope, &group_delivery.body),
            &Body::enveloped(&envelope2, &group_delivery2.body),
        ]),
    };

    let data = get(doc, "file_plaintext").as_bytes();
    let chunk_key = content_key(doc, "chunk_key");
    let chunk = ServerMessage::Chunk {
        at: at(FILE_AT),
        offset: 0,
        key: chunk_key.clone(),
        body: chunk_key.seal_with_iv(&fixed(get(doc, "chunk_iv")), data),
    };
    let file = ServerMessage::File(FileStart {
        at: at(FILE_AT),
        at_ms: num(doc, "file_unix_ms"),
        from: user(SENDER),
        size: data.len() as u64,
        sha256: Sha256::digest(data).into(),
        name: FILE_NAME.to_string(),
        voice: None,
    });
    Content {
        send,
        msg,
        group_delivery,
        envelope_text,
        envelope,
        gmsg,
        group_delivery2,
        envelope2_text,
        envelope2,
        bundle,
        file,
        chunk,
    }
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

    let c = content(doc);
    let Request::Send { key, body, .. } = &c.send else {
        unreachable!()
    };

    // The client's frames, sealed by the handshake's sealer (c2s seq 0, 1).
    let frame1 = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame1_iv")),
        get(doc, "frame1_head"),
        None,
    );
    let frame2 = c.send.to_frame();
    let frame2_line = seal_doc(&mut keyed.sealer, doc, "frame2_iv", &frame2);

    // Frame 4 (c2s seq 2) under a sealer whose limit is what frames 1 and 2
    // counted: they seal as before (reaching the limit exactly does not
    // rotate), and frame 4 is sealed under the rotated key.
    let blocks_before = head_blocks(&frame1) + head_blocks(&frame2_line);
    let mut rotating = Sealer::with_rekey_blocks(c2s, blocks_before);
    let again1 = seal(
        &mut rotating,
        &fixed(get(doc, "frame1_iv")),
        get(doc, "frame1_head"),
        None,
    );
    assert_eq!(again1, frame1, "no rotation below the limit");
    let again2 = seal_doc(&mut rotating, doc, "frame2_iv", &frame2);
    assert_eq!(again2, frame2_line, "no rotation at exactly the limit");
    let frame4 = seal(
        &mut rotating,
        &fixed(get(doc, "frame4_iv")),
        get(doc, "frame4_head"),
        None,
    );
    let unrotated = seal(
        &mut keyed.sealer,
        &fixed(get(doc, "frame4_iv")),
        get(doc, "frame4_head"),
        None,
    );
    assert_ne!(frame4, unrotated, "frame 4 is sealed under another key");

    // The server's frames, sealed by its handshake's sealer (s2c seq 0 to 4).
    let frame3 = seal(
        &mut server_keyed.sealer,
        &fixed(get(doc, "frame3_iv")),
        get(doc, "frame3_head"),
        None,
    );
    let frame5 = c.msg.to_frame();
    let frame5_line = seal_doc(&mut server_keyed.sealer, doc, "frame5_iv", &frame5);
    let frame6 = c.gmsg.to_frame();
    let frame6_line = seal_clear(&mut server_keyed.sealer, &frame6);
    let frame7 = c.file.to_frame();
    let frame7_line = seal_doc(&mut server_keyed.sealer, doc, "frame7_iv", &frame7);
    let frame8 = c.chunk.to_frame();
    let frame8_line = seal_doc(&mut server_keyed.sealer, doc, "frame8_iv", &frame8);
    let frame9 = c.bundle.to_frame();
    let frame9_line = seal_clear(&mut server_keyed.sealer, &frame9);

    let ServerMessage::File(file) = &c.file else {
        unreachable!()
    };
    let ServerMessage::Chunk {
        key: chunk_key,
        body: chunk_body,
        ..
    } = &c.chunk
    else {
        unreachable!()
    };

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
        ("c2s_enc_key_rotated", hex(&keys::rotate_enc_key(&c2s.enc))),
        ("server_hello", server_hello),
        (
            "server_fingerprint",
            Fingerprint::of(&static_public).to_string(),
        ),
        ("frame1_line", frame1),
        ("content_key_b64", key.to_b64()),
        ("content_body", body.as_str().to_string()),
        ("frame2_head", frame2.head),
        ("frame2_line", frame2_line),
        ("frame3_line", frame3),
        ("c2s_blocks_before_frame4", blocks_before.to_string()),
        ("frame4_line", frame4),
        ("frame5_head", frame5.head),
        ("frame5_line", frame5_line),
        ("group_key_b64", content_key(doc, "group_key").to_b64()),
        ("group_content_key_b64", c.group_delivery.key.to_b64()),
        (
            "group_content_body",
            c.group_delivery.body.as_str().to_string(),
        ),
        ("envelope_text", c.envelope_text),
        ("envelope", c.envelope.as_str().to_string()),
        (
            "gmsg_body",
            frame6.body.as_ref().unwrap().as_str().to_string(),
        ),
        ("frame6_head", frame6.head),
        ("frame6_line", frame6_line),
        ("file_size", file.size.to_string()),
        ("file_sha256", format_sha256(&file.sha256)),
        ("frame7_head", frame7.head),
        ("frame7_line", frame7_line),
        ("chunk_key_b64", chunk_key.to_b64()),
        ("chunk_body", chunk_body.as_str().to_string()),
        ("frame8_head", frame8.head),
        ("frame8_line", frame8_line),
        ("group_content2_key_b64", c.group_delivery2.key.to_b64()),
        (
            "group_content2_body",
            c.group_delivery2.body.as_str().to_string(),
        ),
        ("envelope2_text", c.envelope2_text),
        ("envelope2", c.envelope2.as_str().to_string()),
        (
            "gmsg_bundle_body",
            frame9.body.as_ref().unwrap().as_str().to_string(),
        ),
        ("frame9_head", frame9.head),
        ("frame9_line", frame9_line),
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
        let old = expected.insert(name.to_string(), get(&doc, name).to_string());
        assert!(old.is_none(), "{name} is both an input and derived");
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

fn tdes_cbc_encrypt(key: &[u8], iv: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let n = plaintext.len();
    let mut buf = plaintext.to_vec();
    // PKCS#7 always pads, 1 to 8 bytes.
    buf.resize(n / 8 * 8 + 8, 0);
    let len = cbc::Encryptor::<des::TdesEde3>::new_from_slices(key, iv)
        .expect("24-byte key, 8-byte IV")
        .encrypt_padded::<Pkcs7>(&mut buf, n)
        .expect("room for the padding")
        .len();
    assert_eq!(len, buf.len());
    buf
}

/// The plaintext, or `None` for bad padding.
fn try_tdes_cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let mut buf = ct.to_vec();
    let n = cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
        .expect("24-byte key, 8-byte IV")
        .decrypt_padded::<Pkcs7>(&mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

fn tdes_cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
    try_tdes_cbc_decrypt(key, iv, ct).expect("valid PKCS#7 padding")
}

/// base64(IV || 3DES-CBC(key, IV, PKCS7(plaintext))): a content body, an
/// envelope, or an encrypted head segment.
fn encrypt_by_hand(key: &[u8], iv: &[u8], plaintext: &[u8]) -> String {
    let mut raw = iv.to_vec();
    raw.extend(tdes_cbc_encrypt(key, iv, plaintext));
    B64.encode(raw)
}

/// Decodes base64(IV || ciphertext), checks the IV, and decrypts.
fn decrypt_by_hand(key: &[u8], iv: &str, text: &str) -> Vec<u8> {
    let raw = B64.decode(text).expect("base64");
    assert!(raw.len() >= 16 && raw.len().is_multiple_of(8));
    assert_eq!(hex(&raw[..8]), iv, "it starts with its IV");
    tdes_cbc_decrypt(key, &raw[..8], &raw[8..])
}

/// The tag: base64(HMAC-SHA256(mac key, seq || head "." [SHA-256(body)])).
fn tag_by_hand(mac_key: &[u8], seq: u64, head: &str, body: &str) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(mac_key).unwrap();
    mac.update(&seq.to_be_bytes());
    mac.update(format!("{head}.").as_bytes());
    // For a non-empty body, the SHA-256 of its characters.
    if !body.is_empty() {
        mac.update(&Sha256::digest(body.as_bytes()));
    }
    B64.encode(mac.finalize().into_bytes())
}

/// How a line's head travels.
enum Head<'a> {
    /// Encrypted under this 3DES key with this IV (hex).
    Sealed(&'a [u8], &'a str),
    /// In clear, after a `=`.
    Clear,
}

/// Builds a line as the document describes it: `head "." body "." tag`.
fn line_by_hand(how: &Head<'_>, mac_key: &[u8], seq: u64, head: &str, body: &str) -> String {
    let head = match how {
        Head::Sealed(key, iv) => encrypt_by_hand(key, &unhex(iv), head.as_bytes()),
        Head::Clear => format!("={head}"),
    };
    let tag = tag_by_hand(mac_key, seq, &head, body);
    format!("{head}.{body}.{tag}")
}

/// Checks a line as the document describes it: `head "." body "." tag`, the
/// tag an HMAC over the sequence number, `head "."` and the body's digest,
/// the head base64(IV || 3DES-CBC) or `=` and clear text. Returns the head
/// text and the body segment.
fn open_by_hand(line: &str, how: &Head<'_>, mac_key: &[u8], seq: u64) -> (String, String) {
    assert!(line.len() <= MAX_LINE_LEN);
    let (covered, tag) = line.rsplit_once('.').expect("a tag");
    let (head, body) = covered.split_once('.').expect("a head");
    assert_eq!(tag.len(), 44);
    assert_eq!(tag_by_hand(mac_key, seq, head, body), tag, "tag");
    let text = match how {
        Head::Sealed(key, iv) => {
            String::from_utf8(decrypt_by_hand(key, iv, head)).expect("UTF-8 head")
        }
        Head::Clear => {
            let text = head.strip_prefix('=').expect("a clear head starts with =");
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'.'));
            text.to_string()
        }
    };
    assert!(text.len() <= MAX_HEAD_LEN);
    (text, body.to_string())
}

/// Checks a documented line both ways: built by hand it is the documented
/// line, and opened by hand it gives `head` and `body`.
fn check_line(
    doc: &BTreeMap<String, String>,
    line: &str,
    how: &Head<'_>,
    mac_key: &str,
    seq: u64,
    head: &str,
    body: &str,
) {
    let mac_key = unhex(get(doc, mac_key));
    assert_eq!(
        get(doc, line),
        line_by_hand(how, &mac_key, seq, head, body),
        "{line}"
    );
    let (h, b) = open_by_hand(get(doc, line), how, &mac_key, seq);
    assert_eq!((h.as_str(), b.as_str()), (head, body), "{line}");
}

/// The handshake and key derivation (sections 2 and 3), by hand.
#[test]
fn an_independent_implementation_of_the_handshake_agrees() {
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
            "MUCHAT/4 {} {} {confirm}",
            get(&doc, "server_public"),
            get(&doc, "server_static_public")
        )
    );
    assert_eq!(hello.len(), 1079, "the length section 2 gives");
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
}

/// Content, envelopes and every frame (sections 4, 5, 7, 8.6), by hand.
#[test]
fn an_independent_implementation_of_the_frames_agrees() {
    let doc = documented();
    let c2s_enc = unhex(get(&doc, "c2s_enc_key"));
    let c2s_rotated = unhex(get(&doc, "c2s_enc_key_rotated"));
    let s2c_enc = unhex(get(&doc, "s2c_enc_key"));
    let c2s = |iv| Head::Sealed(&c2s_enc, get(&doc, iv));
    let s2c = |iv| Head::Sealed(&s2c_enc, get(&doc, iv));

    // A content body: base64(IV || 3DES-CBC(key, IV, PKCS7(text))), and its
    // key in base64 (32 characters).
    let content = |key: &str, key_b64: &str, iv: &str, plaintext: &str, body: &str| {
        let k = unhex(get(&doc, key));
        assert_eq!(k.len(), 24);
        assert_eq!(get(&doc, key_b64), B64.encode(&k));
        assert_eq!(get(&doc, key_b64).len(), 32);
        let iv_bytes = unhex(get(&doc, iv));
        let text = get(&doc, plaintext).as_bytes();
        assert_eq!(get(&doc, body), encrypt_by_hand(&k, &iv_bytes, text));
        assert_eq!(decrypt_by_hand(&k, get(&doc, iv), get(&doc, body)), text);
    };
    content(
        "content_key",
        "content_key_b64",
        "content_iv",
        "content_plaintext",
        "content_body",
    );
    content(
        "group_content_key",
        "group_content_key_b64",
        "group_content_iv",
        "group_content_plaintext",
        "group_content_body",
    );
    content(
        "chunk_key",
        "chunk_key_b64",
        "chunk_iv",
        "file_plaintext",
        "chunk_body",
    );

    // Client frames: c2s seq 0 and 1 under c2s_enc_key.
    check_line(
        &doc,
        "frame1_line",
        &c2s("frame1_iv"),
        "c2s_mac_key",
        0,
        get(&doc, "frame1_head"),
        "",
    );
    let frame2_head = format!(
        "SEND bob {} {}",
        get(&doc, "send_id"),
        get(&doc, "content_key_b64")
    );
    assert_eq!(get(&doc, "frame2_head"), frame2_head);
    check_line(
        &doc,
        "frame2_line",
        &c2s("frame2_iv"),
        "c2s_mac_key",
        1,
        &frame2_head,
        get(&doc, "content_body"),
    );

    // Frame 4, c2s seq 2: the blocks frames 1 and 2 counted (n = floor(len
    // / 8) + 1 each) are the limit it would cross, so it is sealed under the
    // rotated key; the MAC key and the sequence number carry on.
    let blocks = |head: &str| head.len() / 8 + 1;
    assert_eq!(
        (blocks(get(&doc, "frame1_head")) + blocks(&frame2_head)).to_string(),
        get(&doc, "c2s_blocks_before_frame4")
    );
    check_line(
        &doc,
        "frame4_line",
        &Head::Sealed(&c2s_rotated, get(&doc, "frame4_iv")),
        "c2s_mac_key",
        2,
        get(&doc, "frame4_head"),
        "",
    );
    let raw = B64
        .decode(get(&doc, "frame4_line").split('.').next().unwrap())
        .unwrap();
    assert_ne!(
        try_tdes_cbc_decrypt(&c2s_enc, &raw[..8], &raw[8..]),
        Some(get(&doc, "frame4_head").as_bytes().to_vec()),
        "the unrotated key does not open frame 4"
    );

    // Server frames: s2c seq 0, 1, 3 and 4 under s2c_enc_key, and seq 2
    // (the GMSG) with a clear head.
    check_line(
        &doc,
        "frame3_line",
        &s2c("frame3_iv"),
        "s2c_mac_key",
        0,
        get(&doc, "frame3_head"),
        "",
    );
    let frame5_head = format!(
        "MSG @alice:1 {} alice {}",
        get(&doc, "msg_unix_ms"),
        get(&doc, "content_key_b64")
    );
    assert_eq!(get(&doc, "frame5_head"), frame5_head);
    check_line(
        &doc,
        "frame5_line",
        &s2c("frame5_iv"),
        "s2c_mac_key",
        1,
        &frame5_head,
        get(&doc, "content_body"),
    );

    // The GMSG: envelope = base64(IV || 3DES-CBC(group key, IV,
    // PKCS7("<unix-ms> <from> <content-key>"))), body = envelope ":" content.
    let group_key = unhex(get(&doc, "group_key"));
    assert_eq!(get(&doc, "group_key_b64"), B64.encode(&group_key));
    let envelope_text = format!(
        "{} alice {}",
        get(&doc, "gmsg_unix_ms"),
        get(&doc, "group_content_key_b64")
    );
    assert_eq!(get(&doc, "envelope_text"), envelope_text);
    assert_eq!(
        get(&doc, "envelope"),
        encrypt_by_hand(
            &group_key,
            &unhex(get(&doc, "envelope_iv")),
            envelope_text.as_bytes()
        )
    );
    let gmsg_body = format!(
        "{}:{}",
        get(&doc, "envelope"),
        get(&doc, "group_content_body")
    );
    assert_eq!(get(&doc, "gmsg_body"), gmsg_body);
    let frame6_head = format!(
        "GMSG {} {}",
        get(&doc, "group_key_id"),
        get(&doc, "gmsg_seq")
    );
    assert_eq!(get(&doc, "frame6_head"), frame6_head);
    check_line(
        &doc,
        "frame6_line",
        &Head::Clear,
        "s2c_mac_key",
        2,
        &frame6_head,
        &gmsg_body,
    );
    // What the MAC covers, spelled out: seq || "=GMSG 1 1" || "." ||
    // SHA-256(body).
    let line = get(&doc, "frame6_line");
    assert!(line.starts_with(&format!("={frame6_head}.{gmsg_body}.")));

    // Bob opens it: the key id names the group key, the envelope gives the
    // time, the sender and the content key, which opens the content.
    let (head, body) = open_by_hand(line, &Head::Clear, &unhex(get(&doc, "s2c_mac_key")), 2);
    let mut words = head.split(' ');
    assert_eq!(words.next(), Some("GMSG"));
    assert_eq!(words.next(), Some(get(&doc, "group_key_id")));
    assert_eq!(words.next(), Some(get(&doc, "gmsg_seq")));
    assert_eq!(words.next(), None);
    let (envelope, content) = body.split_once(':').expect("envelope:content");
    let opened = decrypt_by_hand(&group_key, get(&doc, "envelope_iv"), envelope);
    let opened = String::from_utf8(opened).unwrap();
    let fields: Vec<&str> = opened.split(' ').collect();
    let [unix_ms, from, key_b64] = fields[..] else {
        panic!("the envelope is not three fields: {opened:?}")
    };
    assert_eq!(unix_ms, get(&doc, "gmsg_unix_ms"));
    assert_eq!(from, SENDER);
    let key = B64.decode(key_b64).unwrap();
    assert_eq!(hex(&key), get(&doc, "group_content_key"));
    assert_eq!(
        decrypt_by_hand(&key, get(&doc, "group_content_iv"), content),
        get(&doc, "group_content_plaintext").as_bytes()
    );

    // The file: its FILE (no body), then its one CHUNK.
    let file = get(&doc, "file_plaintext").as_bytes();
    assert_eq!(get(&doc, "file_size"), file.len().to_string());
    assert_eq!(get(&doc, "file_sha256"), hex(&Sha256::digest(file)));
    let frame7_head = format!(
        "FILE @alice:2 {} alice {} {} notes.txt",
        get(&doc, "file_unix_ms"),
        file.len(),
        get(&doc, "file_sha256")
    );
    assert_eq!(get(&doc, "frame7_head"), frame7_head);
    check_line(
        &doc,
        "frame7_line",
        &s2c("frame7_iv"),
        "s2c_mac_key",
        3,
        &frame7_head,
        "",
    );
    assert!(file.len() <= FILE_CHUNK_SIZE, "the file is one chunk");
    let frame8_head = format!("CHUNK @alice:2 0 {}", get(&doc, "chunk_key_b64"));
    assert_eq!(get(&doc, "frame8_head"), frame8_head);
    check_line(
        &doc,
        "frame8_line",
        &s2c("frame8_iv"),
        "s2c_mac_key",
        4,
        &frame8_head,
        get(&doc, "chunk_body"),
    );

    // Frame 9: frame 6's message and the next one in one GMSG, their
    // envelope:content pairs joined by ",", under frame 6's head.
    let envelope2_text = format!(
        "{} alice {}",
        get(&doc, "gmsg2_unix_ms"),
        get(&doc, "group_content2_key_b64")
    );
    assert_eq!(get(&doc, "envelope2_text"), envelope2_text);
    assert_eq!(
        get(&doc, "envelope2"),
        encrypt_by_hand(
            &group_key,
            &unhex(get(&doc, "envelope2_iv")),
            envelope2_text.as_bytes()
        )
    );
    assert_eq!(
        get(&doc, "group_content2_body"),
        encrypt_by_hand(
            &unhex(get(&doc, "group_content2_key")),
            &unhex(get(&doc, "group_content2_iv")),
            get(&doc, "group_content2_plaintext").as_bytes()
        )
    );
    let bundle_body = format!(
        "{gmsg_body},{}:{}",
        get(&doc, "envelope2"),
        get(&doc, "group_content2_body")
    );
    assert_eq!(get(&doc, "gmsg_bundle_body"), bundle_body);
    assert_eq!(get(&doc, "frame9_head"), frame6_head);
    check_line(
        &doc,
        "frame9_line",
        &Head::Clear,
        "s2c_mac_key",
        5,
        &frame6_head,
        &bundle_body,
    );
    // Bob reads two messages from it: #devs:<gmsg_seq> and the next.
    let (_, body) = open_by_hand(
        get(&doc, "frame9_line"),
        &Head::Clear,
        &unhex(get(&doc, "s2c_mac_key")),
        5,
    );
    let messages: Vec<&str> = body.split(',').collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0], gmsg_body, "the first is frame 6's message");
    let (envelope, content) = messages[1].split_once(':').expect("envelope:content");
    let opened = decrypt_by_hand(&group_key, get(&doc, "envelope2_iv"), envelope);
    assert_eq!(opened, envelope2_text.as_bytes());
    let key = B64.decode(get(&doc, "group_content2_key_b64")).unwrap();
    assert_eq!(
        decrypt_by_hand(&key, get(&doc, "group_content2_iv"), content),
        get(&doc, "group_content2_plaintext").as_bytes()
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

fn open(opener: &mut Opener, doc: &BTreeMap<String, String>, line: &str) -> Frame {
    opener
        .open(get(doc, line).as_bytes())
        .unwrap_or_else(|e| panic!("{line} does not open: {e}"))
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

    let limit = num(&doc, "c2s_blocks_before_frame4");
    let mut opener = Opener::with_rekey_blocks(&keys.client_to_server, limit);
    let f1 = open(&mut opener, &doc, "frame1_line");
    assert_eq!(f1, Frame::head(get(&doc, "frame1_head")));
    assert_eq!(
        Request::parse(f1),
        Ok(Request::Login {
            username: user("alice"),
            password: "secret".into(),
            token: None,
        })
    );
    let f2 = open(&mut opener, &doc, "frame2_line");
    assert_eq!(f2.head, get(&doc, "frame2_head"));
    assert!(!f2.clear);
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
            to: user(RECIPIENT),
            send_id: SendId::parse(get(&doc, "send_id")).unwrap(),
            key,
            body,
        })
    );
    // A replay of the first line fails once the counter has moved on.
    let mut replayed = Opener::with_rekey_blocks(&keys.client_to_server, limit);
    replayed.open(line1).unwrap();
    assert!(replayed.open(line1).is_err());

    // Frame 4 opens once the receiver has rotated too.
    let f4 = open(&mut opener, &doc, "frame4_line");
    assert_eq!(f4, Frame::head(get(&doc, "frame4_head")));
    assert_eq!(
        Request::parse(f4),
        Ok(Request::Ack(vec![MessageRef {
            conv: Conversation::User(user("bob")),
            seq: 1,
        }]))
    );
    // A receiver that has not rotated verifies its MAC (the MAC key does not
    // change) but cannot decrypt it.
    let mut stale = Opener::new(&keys.client_to_server);
    open(&mut stale, &doc, "frame1_line");
    open(&mut stale, &doc, "frame2_line");
    let f4 = stale.open(get(&doc, "frame4_line").as_bytes());
    assert_ne!(f4, Ok(Frame::head(get(&doc, "frame4_head"))));
}

#[test]
fn the_client_opens_the_documented_server_lines() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let c = content(&doc);
    let mut opener = Opener::new(&keys.server_to_client);

    let f3 = open(&mut opener, &doc, "frame3_line");
    assert_eq!(f3, Frame::head(get(&doc, "frame3_head")));
    assert_eq!(
        ServerMessage::parse(f3),
        Ok(ServerMessage::Reply(Reply::ok("logged in as alice")))
    );

    // Frame 5: alice's message to bob, key and body as she sent them.
    let f5 = open(&mut opener, &doc, "frame5_line");
    assert!(!f5.clear);
    assert_eq!(f5.head, get(&doc, "frame5_head"));
    assert_eq!(
        f5.body.as_ref().map(Body::as_str),
        Some(get(&doc, "content_body"))
    );
    let msg = ServerMessage::parse(f5).unwrap();
    assert_eq!(msg, c.msg);
    let Request::Send { key, body, .. } = &c.send else {
        unreachable!()
    };
    let ServerMessage::Msg(d) = msg else {
        unreachable!()
    };
    assert_eq!((&d.key, &d.body), (key, body), "relayed unchanged");
    assert_eq!(
        d.key.open(&d.body).unwrap(),
        get(&doc, "content_plaintext").as_bytes()
    );

    // Frame 6: a clear head; the envelope opens with the group key that
    // `group_key_id` names.
    let f6 = open(&mut opener, &doc, "frame6_line");
    assert!(f6.clear);
    assert_eq!(f6.head, get(&doc, "frame6_head"));
    let gmsg = ServerMessage::parse(f6).unwrap();
    assert_eq!(gmsg, c.gmsg);
    let ServerMessage::GroupMsg { key_id, seq, body } = gmsg else {
        unreachable!()
    };
    assert_eq!(key_id, num(&doc, "group_key_id"));
    assert_eq!(body.as_str(), get(&doc, "gmsg_body"));
    let group_key = ContentKey::from_b64(get(&doc, "group_key_b64")).unwrap();
    let group = GroupName::parse(GROUP).unwrap();
    let d = Delivery::open_group(&group, seq, &group_key, &body).expect("the envelope opens");
    assert_eq!(d, c.group_delivery);
    assert_eq!(d.at.to_string(), format!("#devs:{}", get(&doc, "gmsg_seq")));
    assert_eq!(d.at_ms, num(&doc, "gmsg_unix_ms"));
    assert_eq!(d.from.as_str(), SENDER);
    assert_eq!(d.key.to_b64(), get(&doc, "group_content_key_b64"));
    assert_eq!(d.body.as_str(), get(&doc, "group_content_body"));
    assert_eq!(
        d.key.open(&d.body).unwrap(),
        get(&doc, "group_content_plaintext").as_bytes()
    );
    let (envelope, _) = body.split_envelope().unwrap();
    assert_eq!(envelope.as_str(), get(&doc, "envelope"));
    assert_eq!(
        group_key.open(&envelope).unwrap(),
        get(&doc, "envelope_text").as_bytes()
    );
    // Another group key does not open it.
    let other = ContentKey::from_bytes([0x5a; 24]);
    assert!(Delivery::open_group(&group, seq, &other, &body).is_err());

    // Frames 7 and 8: the file's description, then its one chunk.
    let f7 = open(&mut opener, &doc, "frame7_line");
    assert_eq!(f7, Frame::head(get(&doc, "frame7_head")));
    let file = ServerMessage::parse(f7).unwrap();
    assert_eq!(file, c.file);
    let f8 = open(&mut opener, &doc, "frame8_line");
    assert_eq!(f8.head, get(&doc, "frame8_head"));
    assert!(!f8.clear);
    let chunk = ServerMessage::parse(f8).unwrap();
    assert_eq!(chunk, c.chunk);
    let (
        ServerMessage::File(file),
        ServerMessage::Chunk {
            at,
            offset,
            key,
            body,
        },
    ) = (file, chunk)
    else {
        unreachable!()
    };
    assert_eq!(at, file.at, "the chunk names its file");
    assert_eq!(offset, 0);
    let data = key.open(&body).unwrap();
    assert_eq!(data, get(&doc, "file_plaintext").as_bytes());
    assert_eq!(data.len() as u64, file.size);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&data)), file.sha256);
    assert_eq!(file.name, FILE_NAME);

    // Frame 9: two messages in one GMSG, each opening as if it came alone.
    let f9 = open(&mut opener, &doc, "frame9_line");
    assert!(f9.clear);
    let bundle = ServerMessage::parse(f9).unwrap();
    assert_eq!(bundle, c.bundle);
    let ServerMessage::GroupMsg { seq, body, .. } = bundle else {
        unreachable!()
    };
    let parts = body.unbundle();
    assert_eq!(parts.len(), 2);
    let first = Delivery::open_group(&group, seq, &group_key, &parts[0]).unwrap();
    let second = Delivery::open_group(&group, seq + 1, &group_key, &parts[1]).unwrap();
    assert_eq!(first, c.group_delivery);
    assert_eq!(second, c.group_delivery2);
    assert_eq!(
        second.key.open(&second.body).unwrap(),
        get(&doc, "group_content2_plaintext").as_bytes()
    );
}

/// A clear head is MACed like any other: changing it, or sending the same
/// frame with its head encrypted, is caught.
#[test]
fn a_clear_head_is_authenticated() {
    let doc = documented();
    let keys = documented_keys(&doc);
    let opener = || {
        let mut o = Opener::new(&keys.server_to_client);
        open(&mut o, &doc, "frame3_line");
        open(&mut o, &doc, "frame5_line");
        o
    };
    let line = get(&doc, "frame6_line");
    let head = get(&doc, "frame6_head");
    let tampered = line.replacen(head, &format!("{head}0"), 1);
    assert!(opener().open(tampered.as_bytes()).is_err());

    // The same GMSG sealed with an encrypted head opens, but is not a
    // valid server message (only a clear head may carry a GMSG).
    let body = Body::from_wire(get(&doc, "gmsg_body")).unwrap();
    let mut sealer = Sealer::new(&keys.server_to_client);
    for iv in ["frame3_iv", "frame5_iv"] {
        let mut out = Vec::new();
        sealer.seal_with_iv(&fixed(get(&doc, iv)), "x", None, &mut out);
    }
    let encrypted = seal(&mut sealer, &[9; 8], head, Some(&body));
    let frame = opener().open(encrypted.as_bytes()).unwrap();
    assert!(!frame.clear);
    assert!(ServerMessage::parse(frame).is_err());
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
    for line in [
        "frame3_line",
        "frame5_line",
        "frame6_line",
        "frame7_line",
        "frame8_line",
        "frame9_line",
    ] {
        open(&mut keyed.opener, &doc, line);
    }
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
    // Older servers' hellos are other versions, even with valid values: a
    // version 2 server's otherwise identical hello is refused.
    for old in ["MUCHAT/1", "MUCHAT/2"] {
        let e = refused(&doc, &format!("{old} {b} {s} {confirm}"));
        assert!(
            matches!(e, HandshakeError::Version(ref v) if v == old),
            "{e:?}"
        );
    }
    let e = refused(&doc, &format!("{PROTOCOL} ERROR go away"));
    assert!(
        matches!(e, HandshakeError::Refused(ref why) if why == "go away"),
        "{e:?}"
    );
}

/// The server refuses a client speaking an older version, with the reason
/// section 2 gives.
#[test]
fn the_server_refuses_an_older_client() {
    let doc = documented();
    let hello = client_hello(&doc).replacen(PROTOCOL, "MUCHAT/2", 1);
    let mut sent = Vec::new();
    let result = handshake::server_with_secret(
        &mut Cursor::new(hello.into_bytes()),
        &mut sent,
        &server_static(&doc),
        EphemeralSecret::from_exponent(exponent(&doc, "server_exponent")),
    );
    assert!(matches!(result, Err(HandshakeError::Version(ref v)) if v == "MUCHAT/2"));
    let refusal =
        "MUCHAT/4 ERROR unsupported protocol version \"MUCHAT/2\"; this side speaks MUCHAT/4";
    assert_eq!(String::from_utf8(sent).unwrap(), format!("{refusal}\n"));
    assert!(DOC.contains(refusal), "section 2 lists the refusal");
}

#[test]
fn the_server_answers_a_version_3_client_in_version_3() {
    let doc = documented();
    let hello = client_hello(&doc).replacen(PROTOCOL, handshake::PROTOCOL_V3, 1);
    let mut sent = Vec::new();
    let keyed = handshake::server_with_secret(
        &mut Cursor::new(hello.into_bytes()),
        &mut sent,
        &server_static(&doc),
        EphemeralSecret::from_exponent(exponent(&doc, "server_exponent")),
    )
    .expect("a MUCHAT/3 client is accepted");
    assert!(
        !keyed.bundles,
        "a MUCHAT/3 client gets one message per GMSG"
    );
    // The same answer, named MUCHAT/3 (section 2's version rule).
    let documented = get(&doc, "server_hello");
    let expected = documented.replacen(PROTOCOL, "MUCHAT/3", 1);
    assert_eq!(String::from_utf8(sent).unwrap(), format!("{expected}\n"));
}
