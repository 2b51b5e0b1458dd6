//! Voice notes end to end: WAV files made here (hound), sent with the
//! client's `SEND VOICE` / `SEND_TO_GROUP VOICE` through a real server,
//! received whole with the length announced, kept in history as voice
//! notes; a file that is not audio is refused before anything is sent.
//! `RECORD` and `PLAY` (the system's recorder and player) are tested with
//! the real binaries in tests/binaries.rs.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use muchat::client::{Client, ClientError, ClientEvent};
use muchat::command::Command;
use muchat::request::{AudioFormat, Voice};

/// A mono 16-bit WAV of `ms` milliseconds at `rate` Hz; returns its bytes.
fn wav(path: &Path, rate: u32, ms: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(rate * ms / 1000) {
        let t = i as f32 / rate as f32;
        let s = (t * 440.0 * std::f32::consts::TAU).sin() * 8000.0;
        w.write_sample(s as i16).unwrap();
    }
    w.finalize().unwrap();
    std::fs::read(path).unwrap()
}

fn client_in(server: &TestServer, name: &str) -> (Client, PathBuf) {
    let dir = server.path(&format!("{name}-downloads"));
    let c = Client::connect(server.local_addr(), client_config(server, dir.clone())).unwrap();
    ok(&c, &format!("CREATE_USER {name} {name} pw-{name}"));
    ok(&c, &format!("LOGIN {name} pw-{name}"));
    (c, dir)
}

/// The next received file: where it went and its voice description.
fn received(c: &Client) -> (PathBuf, Option<Voice>) {
    loop {
        match next_event(c) {
            ClientEvent::FileProgress { .. } => {}
            ClientEvent::FileReceived { path, voice, .. } => return (path, voice),
            other => panic!("expected a file, got {other:?}"),
        }
    }
}

fn sent(c: &Client) {
    loop {
        match next_event(c) {
            ClientEvent::UploadProgress { .. } => {}
            ClientEvent::FileSent { reply, .. } => return assert!(reply.is_ok(), "{reply:?}"),
            other => panic!("expected the upload's end, got {other:?}"),
        }
    }
}

const WAV_1500: Voice = Voice {
    duration_ms: 1500,
    format: AudioFormat::Wav,
};

#[test]
fn a_voice_note_arrives_whole_with_its_length_and_stays_one_in_history() {
    let server = start_server();
    let note = server.path("src").join("hello.wav");
    let data = wav(&note, 8000, 1500);
    let (alice, _) = client_in(&server, "alice");
    let (bob, _) = client_in(&server, "bob");
    ok(&alice, &format!("SEND VOICE bob {}", note.display()));
    sent(&alice);
    let (path, voice) = received(&bob);
    assert_eq!(voice, Some(WAV_1500));
    assert!(std::fs::read(&path).unwrap() == data);

    // History keeps it as a voice note (the length without the content).
    assert_eq!(ok(&bob, "HISTORY @alice"), "1 message with @alice");
    match next_event(&bob) {
        ClientEvent::HistoryFile { name, voice, .. } => {
            assert_eq!((name.as_str(), voice), ("hello.wav", Some(WAV_1500)));
        }
        other => panic!("{other:?}"),
    }

    // A plain file is still a plain file.
    let plain = server.path("src").join("notes.txt");
    std::fs::write(&plain, "not audio").unwrap();
    ok(&alice, &format!("SEND FILE bob {}", plain.display()));
    sent(&alice);
    assert_eq!(received(&bob).1, None);
}

#[test]
fn a_voice_note_to_groups_reaches_every_member() {
    let server = start_server();
    let note = server.path("src").join("standup.wav");
    let data = wav(&note, 44_100, 2_000);
    let (alice, _) = client_in(&server, "alice");
    let (bob, _) = client_in(&server, "bob");
    let (carol, _) = client_in(&server, "carol");
    ok(&alice, "CREATE_GROUP ops");
    ok(&bob, "JOIN ops");
    ok(&carol, "JOIN ops");
    ok(
        &alice,
        &format!("SEND_TO_GROUP VOICE #ops {}", note.display()),
    );
    sent(&alice);
    for c in [&bob, &carol] {
        let (path, voice) = received(c);
        assert_eq!(voice.map(|v| v.duration_ms), Some(2_000));
        assert!(std::fs::read(&path).unwrap() == data);
    }
}

#[test]
fn a_file_that_is_not_audio_is_refused_before_anything_is_sent() {
    let server = start_server();
    let fake = server.path("src").join("song.wav");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(&fake, "this is a text file renamed .wav\n").unwrap();
    let (alice, _) = client_in(&server, "alice");
    let (bob, _) = client_in(&server, "bob");
    let command = Command::parse(&format!("SEND VOICE bob {}", fake.display())).unwrap();
    match alice.execute(&command) {
        Err(ClientError::Refused(why)) => {
            assert!(
                why.contains("song.wav") && why.contains("not a WAV file"),
                "{why}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_no_event(&bob);
    assert_no_event(&alice);
}
