//! Receiving files: chunks into a temporary file inside the downloads
//! directory, checked against the announced size and SHA-256, then moved to
//! a safe, unused name.
//!
//! The sender's file name is untrusted. [`safe_file_name`] keeps only its
//! last path component, drops control and bidirectional-override
//! characters, and refuses names made only of dots, so whatever was sent
//! the file lands directly inside the downloads directory; an existing file
//! is never overwritten (a numbered suffix is added instead).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::content::{Body, ContentKey};
use crate::event::FileStart;
use crate::names::MessageRef;
use crate::text::is_bidi_control;

use super::progress::Meter;
use super::ClientEvent;

/// The longest saved file name, in bytes.
const MAX_NAME_BYTES: usize = 200;

struct Incoming {
    start: FileStart,
    file: File,
    temp: PathBuf,
    received: u64,
    hasher: Sha256,
    progress: Meter,
}

/// The files being received on one connection.
pub struct Downloads {
    dir: PathBuf,
    active: HashMap<MessageRef, Incoming>,
    /// Files finished for good (saved, or refused as corrupt), to acknowledge.
    done: Vec<MessageRef>,
}

impl Downloads {
    /// Receives into `dir` (created when the first file arrives).
    pub fn new(dir: PathBuf) -> Self {
        Downloads {
            dir,
            active: HashMap::new(),
            done: Vec::new(),
        }
    }

    /// Files finished for good (saved, or refused as corrupt) since the
    /// last call: handled, to acknowledge. A file that failed for a local
    /// reason (disk full...) is not among them, so it comes again.
    pub fn take_done(&mut self) -> Vec<MessageRef> {
        std::mem::take(&mut self.done)
    }

    /// A file begins.
    pub fn start(&mut self, start: FileStart) -> Vec<ClientEvent> {
        let id = start.at.clone();
        // The server starts a file again from the beginning after an
        // interruption: the partial copy goes.
        if let Some(old) = self.active.remove(&id) {
            let _ = fs::remove_file(&old.temp);
        }
        let temp = self.dir.join(format!(".muchat-{}.part", rand_suffix()));
        let opened = fs::create_dir_all(&self.dir).and_then(|()| {
            // A fresh file, never through a link someone left at that name.
            let _ = fs::remove_file(&temp);
            OpenOptions::new().write(true).create_new(true).open(&temp)
        });
        match opened {
            Ok(file) => {
                self.active.insert(
                    id,
                    Incoming {
                        file,
                        temp,
                        received: 0,
                        hasher: Sha256::new(),
                        progress: Meter::new(start.size),
                        start,
                    },
                );
                Vec::new()
            }
            Err(e) => vec![failed(
                &id,
                &format!("cannot write in {}: {e}", self.dir.display()),
            )],
        }
    }

    /// A chunk arrives.
    pub fn chunk(
        &mut self,
        id: &MessageRef,
        offset: u64,
        key: &ContentKey,
        body: &Body,
    ) -> Vec<ClientEvent> {
        let Some(inc) = self.active.get_mut(id) else {
            return Vec::new(); // a transfer we already gave up on
        };
        let data = match key.open(body) {
            Ok(d) => d,
            Err(e) => return self.fail(id, &e.to_string(), true),
        };
        if offset != inc.received {
            let why = format!("chunk at offset {offset}, expected {}", inc.received);
            return self.fail(id, &why, true);
        }
        if inc.received + data.len() as u64 > inc.start.size {
            return self.fail(id, "more data than the announced size", true);
        }
        if let Err(e) = inc.file.write_all(&data) {
            return self.fail(id, &format!("write failed: {e}"), false);
        }
        inc.hasher.update(&data);
        inc.received += data.len() as u64;
        match inc.progress.update(inc.received) {
            Some(progress) => vec![ClientEvent::FileProgress {
                at: id.clone(),
                name: safe_file_name(&inc.start.name, id.seq),
                progress,
            }],
            None => Vec::new(),
        }
    }

    /// The sender finished: verify, then move into place.
    pub fn end(&mut self, id: &MessageRef) -> Vec<ClientEvent> {
        let Some(inc) = self.active.remove(id) else {
            return Vec::new();
        };
        let Incoming {
            start,
            file,
            temp,
            received,
            hasher,
            ..
        } = inc;
        // Err((reason, permanent)): a corrupt file is refused for good; a
        // local failure is left for redelivery at the next login.
        let check = if received != start.size {
            Err((
                format!("got {received} bytes, announced {}", start.size),
                true,
            ))
        } else if <[u8; 32]>::from(hasher.finalize()) != start.sha256 {
            Err(("SHA-256 mismatch: the file was corrupted".to_string(), true))
        } else {
            file.sync_all().map_err(|e| (e.to_string(), false))
        };
        drop(file);
        if let Err((reason, permanent)) = check {
            let _ = fs::remove_file(&temp);
            if permanent {
                self.done.push(id.clone());
            }
            return vec![failed(id, &reason)];
        }
        match place(&self.dir, &temp, &safe_file_name(&start.name, id.seq)) {
            Ok(path) => {
                self.done.push(id.clone());
                vec![ClientEvent::FileReceived {
                    at: id.clone(),
                    at_ms: start.at_ms,
                    from: start.from,
                    path,
                    size: received,
                    sha256: start.sha256,
                    voice: start.voice,
                }]
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                vec![failed(id, &format!("cannot save: {e}"))]
            }
        }
    }

    /// The server stopped sending the file (it will come again).
    pub fn abort(&mut self, id: &MessageRef, why: &str) -> Vec<ClientEvent> {
        if self.active.contains_key(id) {
            self.fail(id, &format!("interrupted: {why}"), false)
        } else {
            Vec::new()
        }
    }

    /// The connection ended: delete every partial file.
    pub fn abandon_all(&mut self) {
        for (_, inc) in self.active.drain() {
            let _ = fs::remove_file(&inc.temp);
        }
    }

    /// Gives up on a file; `permanent` failures (bad data) are handled for
    /// good, the others come again.
    fn fail(&mut self, id: &MessageRef, reason: &str, permanent: bool) -> Vec<ClientEvent> {
        if let Some(inc) = self.active.remove(id) {
            let _ = fs::remove_file(&inc.temp);
        }
        if permanent {
            self.done.push(id.clone());
        }
        vec![failed(id, reason)]
    }
}

fn failed(id: &MessageRef, reason: &str) -> ClientEvent {
    ClientEvent::FileFailed {
        at: id.clone(),
        reason: reason.to_string(),
    }
}

/// A random name part for a temporary file.
fn rand_suffix() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::rng().next_u64())
}

/// Moves `temp` to `dir/name`, or `dir/name (1)`, `(2)`... if taken. The
/// target is reserved with `create_new` first, so two files never race for
/// one name and nothing existing is overwritten.
fn place(dir: &Path, temp: &Path, name: &str) -> io::Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(_) => {
                fs::rename(temp, &candidate)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free file name"))
}

/// Turns an untrusted file name into one safe to create inside the
/// downloads directory: last path component only, no control or bidi
/// characters, no leading dots, at most 200 bytes, never empty.
pub fn safe_file_name(name: &str, id: u64) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c) && c != ':')
        .collect();
    let trimmed = cleaned
        .trim()
        .trim_start_matches('.')
        .trim_end_matches(['.', ' ']);
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        format!("file-{id}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_safe() {
        assert_eq!(safe_file_name("../../etc/passwd", 1), "passwd");
        assert_eq!(safe_file_name("/etc/shadow", 1), "shadow");
        assert_eq!(safe_file_name("..\\..\\win.ini", 1), "win.ini");
        assert_eq!(safe_file_name("..", 7), "file-7");
        assert_eq!(safe_file_name("...", 7), "file-7");
        assert_eq!(safe_file_name("", 7), "file-7");
        assert_eq!(safe_file_name("a\0b\x1b[2Jc", 1), "ab[2Jc");
        assert_eq!(safe_file_name(".bashrc", 1), "bashrc");
        assert_eq!(safe_file_name("evil\u{202E}fdp.exe", 1), "evilfdp.exe");
        assert_eq!(safe_file_name("C:report.txt", 1), "Creport.txt");
        assert!(safe_file_name(&"é".repeat(300), 1).len() <= MAX_NAME_BYTES);
        assert_eq!(safe_file_name("my report.pdf", 1), "my report.pdf");
    }

    #[test]
    fn existing_names_get_a_numbered_suffix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for i in 0..3 {
            let temp = dir.join(format!("t{i}"));
            fs::write(&temp, format!("v{i}")).unwrap();
            let p = place(&dir, &temp, "a.txt").unwrap();
            let want = ["a.txt", "a (1).txt", "a (2).txt"][i];
            assert_eq!(p, dir.join(want));
            assert_eq!(fs::read_to_string(&p).unwrap(), format!("v{i}"));
        }
    }
}
