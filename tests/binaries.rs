//! The real `server` and `client` binaries, driven the way people and
//! scripts use them: arguments, piped standard input, printed lines.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// A child process whose output lines arrive on a channel.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command, from_stderr: bool) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let (tx, lines) = channel();
        let out: Box<dyn std::io::Read + Send> = if from_stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            match self.lines.recv_timeout(common::WAIT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().unwrap()
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin(), "{line}").unwrap();
    }

    /// Closes stdin and waits for the exit code.
    fn finish(mut self) -> (i32, Vec<String>) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status.code().unwrap_or(-1), std::mem::take(&mut self.seen))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client binary, pinning server keys in a file of the test's own.
fn client_cmd() -> Command {
    let mut c = Command::new(CLIENT);
    c.arg("--known-servers")
        .arg(common::temp_dir("known").join("known_servers"));
    c
}

fn start_server_binary() -> (Proc, String) {
    start_server_binary_in(&common::temp_dir("bin-data"))
}

fn start_server_binary_in(data: &std::path::Path) -> (Proc, String) {
    let mut server = Proc::spawn(
        Command::new(SERVER)
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data),
        true,
    );
    let line = server.expect("listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_string();
    (server, addr)
}

#[test]
fn both_binaries_answer_help() {
    for bin in [SERVER, CLIENT] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage:"));
    }
    let out = Command::new(SERVER).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn scripted_clients_chat_and_send_a_file() {
    let (mut server, addr) = start_server_binary();
    let dir = common::temp_dir("bin");
    let file = dir.join("report.txt");
    std::fs::write(&file, "quarterly numbers\n").unwrap();
    let bob_dl = dir.join("bob-downloads");

    // Bob keeps his stdin open (like `(printf ...; sleep 2) | client`).
    let mut bob = Proc::spawn(
        client_cmd().arg(&addr).arg("--downloads").arg(&bob_dl),
        false,
    );
    bob.send("CREATE_USER Bob bob pw");
    bob.expect("OK created user bob");
    bob.send("login bob pw");
    bob.expect("OK logged in as bob");

    let alice = client_cmd()
        .arg(&addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "CREATE_USER Alice alice pw\nLOGIN alice pw\n# a comment\n\nSEND bob hi  there\nSEND FILE bob {}\nSEND bob \x1b[2Jgotcha\nBOGUS\n",
        file.display()
    );
    let mut alice = alice;
    alice
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = alice.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "alice: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("OK created user alice"), "{text}");
    assert!(lines[2].starts_with("OK ") && lines[2].contains("sent to bob"));
    assert!(lines.iter().any(|l| l.starts_with("ERR UNKNOWN_COMMAND")));
    assert!(
        lines.iter().any(|l| l.starts_with("FILE_SENT ")),
        "exit waited for the transfer: {text}"
    );

    let m = bob.expect("MSG ");
    assert!(m.ends_with(" alice -> @bob: hi  there"), "{m}");
    let f = bob.expect("FILE ");
    assert!(f.contains("alice -> @bob: saved"), "{f}");
    let escaped = bob.expect("gotcha");
    assert!(
        escaped.ends_with(": \\x1b[2Jgotcha"),
        "escape neutralised: {escaped}"
    );
    assert_eq!(
        std::fs::read_to_string(bob_dl.join("report.txt")).unwrap(),
        "quarterly numbers\n"
    );
    let (code, _) = bob.finish();
    assert_eq!(code, 0);

    server.expect("logged in as alice");
    server.expect("closed: client closed the connection");
}

#[test]
fn client_exits_non_zero_when_it_cannot_connect_or_handshake() {
    // Nothing listening: take a free port and close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = client_cmd()
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // Something that is not a muchat server.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = fake.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1024]);
        }
    });
    let out = client_cmd()
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("muchat protocol"));
}

#[test]
fn script_exits_non_zero_when_the_server_goes_away() {
    let (server, addr) = start_server_binary();
    let mut c = Proc::spawn(client_cmd().arg(&addr), false);
    c.send("CREATE_USER A a pw");
    c.expect("OK created user a");
    drop(server); // kills the server process
    c.expect("DISCONNECTED");
    let (code, _) = c.finish();
    assert_eq!(code, 1);
}
