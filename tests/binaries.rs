//! The real `server` and `client` binaries, driven the way people and
//! scripts use them: arguments, environment variables, piped standard
//! input, printed lines.
//!
//! Every child runs in a sandbox: no `MUCHAT_*` variable of the caller
//! reaches it, `RUST_LOG=info`, and its home, XDG directories, temporary
//! directory and working directory are the test's own temporary ones, so
//! nothing touches the real user's files. Tests wait for printed lines
//! (each wait bounded by [`common::WAIT`]), never for time to pass.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Instant;

use tempfile::TempDir;

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// Temporary directories for one test's child processes.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let sandbox = Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for d in ["home", "cwd", "tmp"] {
            sandbox.dir(d);
        }
        sandbox
    }

    /// `name` inside the sandbox, created.
    fn dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("create dir");
        p
    }

    /// `name` inside the sandbox, not created.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for `bin` with the environment described in the module
    /// documentation.
    fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUCHAT_") {
                c.env_remove(key);
            }
        }
        let home = self.path("home");
        c.env("RUST_LOG", "info")
            .env_remove("COLUMNS")
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_RUNTIME_DIR", self.dir("runtime"))
            .env("TMPDIR", self.path("tmp"))
            .current_dir(self.path("cwd"));
        c
    }

    /// The server binary on a free port with its data in `data`.
    fn server_cmd(&self, data: &Path) -> Command {
        let mut c = self.command(SERVER);
        c.arg("127.0.0.1:0").arg("--data-dir").arg(data);
        c
    }

    /// The client binary for `server`, with its key pinned by fingerprint
    /// and `who`'s own downloads and state directories.
    fn client_cmd(&self, server: &ServerBin, who: &str) -> Command {
        let mut c = self.command(CLIENT);
        c.arg(&server.addr)
            .arg("--server-fingerprint")
            .arg(&server.fingerprint)
            .arg("--downloads")
            .arg(self.downloads(who))
            .arg("--state-dir")
            .arg(self.path(&format!("{who}-state")));
        c
    }

    /// Where `who`'s client saves files.
    fn downloads(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}-downloads"))
    }
}

/// One output stream of a child, read line by line on its own thread.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    /// Which of `seen` a wait has already returned.
    taken: Vec<bool>,
    open: bool,
}

impl Lines {
    fn read(from: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            taken: Vec::new(),
            open: true,
        }
    }

    /// Receives one more line; false at the end of the stream or at
    /// `deadline`.
    fn pull(&mut self, deadline: Instant) -> bool {
        if !self.open {
            return false;
        }
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => {
                self.seen.push(line);
                self.taken.push(false);
                true
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.open = false;
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    /// The first line not returned before that satisfies `want`, waiting
    /// for it until `deadline`.
    fn find(&mut self, want: &dyn Fn(&str) -> bool, deadline: Instant) -> Option<String> {
        let mut i = 0;
        loop {
            while i < self.seen.len() {
                if !self.taken[i] && want(&self.seen[i]) {
                    self.taken[i] = true;
                    return Some(self.seen[i].clone());
                }
                i += 1;
            }
            if !self.pull(deadline) {
                return None;
            }
        }
    }

    /// Reads to the end of the stream; false if `deadline` came first.
    fn read_to_end_by(&mut self, deadline: Instant) -> bool {
        while self.pull(deadline) {}
        !self.open
    }
}

/// A running child process with piped standard streams. Dropping it kills
/// the process.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    err: Lines,
}

/// How a child ended, and everything it printed.
#[derive(Debug)]
struct Exit {
    code: Option<i32>,
    out: Vec<String>,
    err: Vec<String>,
}

impl Exit {
    fn stdout(&self) -> String {
        self.out.iter().map(|l| format!("{l}\n")).collect()
    }

    fn stderr(&self) -> String {
        self.err.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = Lines::read(child.stdout.take().unwrap());
        let err = Lines::read(child.stderr.take().unwrap());
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            out,
            err,
        }
    }

    /// Runs `cmd` with empty standard input to its end.
    fn run(name: &str, cmd: Command) -> Exit {
        Proc::spawn(name, cmd).finish()
    }

    /// Everything printed so far, for failure messages.
    fn transcript(&self) -> String {
        format!(
            "{} stdout:\n  {}\n{} stderr:\n  {}",
            self.name,
            self.out.seen.join("\n  "),
            self.name,
            self.err.seen.join("\n  ")
        )
    }

    /// Writes one line to the child's standard input.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to child");
    }

    /// Waits for a line on standard output containing `needle` (one not
    /// returned by an earlier wait); returns it.
    fn out_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + common::WAIT;
        match self.out.find(&|l| l.contains(needle), deadline) {
            Some(l) => l,
            None => panic!(
                "no stdout line containing {needle:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// Like [`Proc::out_line`], on standard error (the server's log).
    fn err_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + common::WAIT;
        match self.err.find(&|l| l.contains(needle), deadline) {
            Some(l) => l,
            None => panic!(
                "no stderr line containing {needle:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// Closes standard input, waits for the process to end and returns
    /// what it printed.
    fn finish(&mut self) -> Exit {
        drop(self.stdin.take());
        let deadline = Instant::now() + common::WAIT;
        if !(self.out.read_to_end_by(deadline) && self.err.read_to_end_by(deadline)) {
            panic!("{} did not exit\n{}", self.name, self.transcript());
        }
        let status = self.child.wait().expect("wait");
        Exit {
            code: status.code(),
            out: self.out.seen.clone(),
            err: self.err.seen.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Does nothing once the child has been waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a log line.
fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + pat.len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A running server binary and what it logged about itself.
struct ServerBin {
    proc: Proc,
    addr: String,
    fingerprint: String,
}

/// Starts `cmd` (the server binary) and waits until it listens.
fn start_server_bin(cmd: Command) -> ServerBin {
    let mut proc = Proc::spawn("server", cmd);
    let fingerprint = field(&proc.err_line("INFO key fingerprint="), "fingerprint");
    let addr = field(&proc.err_line("INFO listening addr="), "addr");
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    ServerBin {
        proc,
        addr,
        fingerprint,
    }
}

/// A printed `MSG`/`FILE` line taken apart.
#[derive(Debug)]
struct Event {
    kind: String,
    /// `@user:seq` or `#group:seq`.
    at: String,
    time: String,
    from: String,
    text: String,
}

fn event(line: &str) -> Event {
    let mut parts = line.splitn(4, ' ');
    let (kind, at, time, rest) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let (from, text) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("not an event line: {line:?}"));
    Event {
        kind: kind.into(),
        at: at.into(),
        time: time.into(),
        from: from.into(),
        text: text.into(),
    }
}

/// Where an `OK sent to <ref>` reply says the message went.
fn sent_to(reply: &str) -> String {
    reply
        .rsplit_once("sent to ")
        .unwrap_or_else(|| panic!("not a send reply: {reply:?}"))
        .1
        .to_string()
}

/// The long help of the server binary split into option entries: each
/// entry starts at its `--flag` line and holds its description.
fn help_entries(help: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if indent > 0 && indent <= 6 && trimmed.starts_with('-') {
            entries.push(String::new());
        }
        if let Some(e) = entries.last_mut() {
            if indent == 0 && !trimmed.is_empty() {
                // A new section.
                continue;
            }
            e.push_str(line);
            e.push('\n');
        }
    }
    entries
}

#[test]
fn server_help_lists_every_config_flag_with_its_env_var() {
    let sandbox = Sandbox::new();
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--help");
    let help = Proc::run("server --help", cmd);
    assert_eq!(help.code, Some(0), "{help:?}");
    let text = help.stdout();
    assert!(text.contains("Usage: server [OPTIONS] [ADDR]"), "{text}");
    let entries = help_entries(&text);
    let entry = |long: &str| -> &String {
        entries
            .iter()
            .find(|e| {
                // `  -h, --help` or `      --data-dir <DIR>`.
                let head = e.lines().next().unwrap_or("").trim();
                let head = head.split_once(", ").map_or(head, |(_, h)| h);
                head.strip_prefix(&format!("--{long}"))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
            })
            .unwrap_or_else(|| panic!("--{long} not in the server's help:\n{text}"))
    };

    // The flags come from the server's Config: derive the list from it.
    let config = <muchat::server::Config as clap::Args>::augment_args(clap::Command::new("config"));
    let mut checked = 0;
    for arg in config.get_arguments() {
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("Config field {} has no --flag", arg.get_id()));
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{long} reads no environment variable"))
            .to_string_lossy()
            .into_owned();
        // The cluster's two URLs use the names every tool reads them from.
        assert!(
            env.starts_with("MUCHAT_") || ["DATABASE_URL", "REDIS_URL"].contains(&env.as_str()),
            "--{long}: {env}"
        );
        let e = entry(long);
        assert!(
            e.contains(&format!("[env: {env}=]")),
            "--{long} does not name {env} in its help:\n{e}"
        );
        checked += 1;
    }
    // The derivation found the flags (a few named here as a check on it).
    assert!(checked > 3, "only {checked} Config flags");
    entry("data-dir");
    entry("rate");
    entry("max-connections-per-ip");

    // The binary's own: the address (also from the environment) and
    // --fingerprint, and clap's help and version.
    assert!(text.contains("[env: MUCHAT_LISTEN=]"), "{text}");
    entry("fingerprint");
    entry("help");
    entry("version");
}

#[test]
fn both_binaries_answer_help_and_version() {
    let sandbox = Sandbox::new();
    for (bin, name) in [(SERVER, "server"), (CLIENT, "client")] {
        for flag in ["--help", "-h"] {
            let mut cmd = sandbox.command(bin);
            cmd.arg(flag);
            let out = Proc::run(name, cmd);
            assert_eq!(out.code, Some(0), "{name} {flag}: {out:?}");
            assert!(
                out.stdout().contains(&format!("Usage: {name} [OPTIONS]")),
                "{name} {flag}: {}",
                out.stdout()
            );
        }
        for flag in ["--version", "-V"] {
            let mut cmd = sandbox.command(bin);
            cmd.arg(flag);
            let out = Proc::run(name, cmd);
            assert_eq!(out.code, Some(0), "{name} {flag}: {out:?}");
            assert_eq!(out.out.len(), 1, "{out:?}");
            assert!(
                out.out[0].ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
                "{name} {flag}: {:?}",
                out.out
            );
        }
        let mut cmd = sandbox.command(bin);
        cmd.arg("--bogus");
        let out = Proc::run(name, cmd);
        assert_eq!(out.code, Some(2), "{name} --bogus: {out:?}");
        assert!(out.stderr().contains("--bogus"), "{}", out.stderr());
    }

    let mut cmd = sandbox.command(CLIENT);
    cmd.arg("--help");
    let help = Proc::run("client", cmd).stdout();
    for flag in [
        "--server-fingerprint <FP>",
        "--known-servers <FILE>",
        "--downloads <DIR>",
        "--state-dir <DIR>",
        "--reconnect",
    ] {
        assert!(help.contains(flag), "client --help lacks {flag}:\n{help}");
    }
}

#[test]
fn flags_take_equals_values_and_environment_variables() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    let fingerprint_of = |cmd: Command| -> String {
        let out = Proc::run("server --fingerprint", cmd);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(out.out.len(), 1, "{out:?}");
        assert!(out.out[0].starts_with("SHA256:"), "{out:?}");
        out.out[0].clone()
    };

    // --flag=value: the key is created in that data directory.
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--fingerprint")
        .arg(format!("--data-dir={}", data.display()));
    let fp = fingerprint_of(cmd);
    assert!(data.is_dir(), "--data-dir=DIR was not used");

    // The environment variable names the same directory, so the same key.
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--fingerprint").env("MUCHAT_DATA_DIR", &data);
    assert_eq!(fingerprint_of(cmd), fp);

    // A flag on the command line beats the environment.
    let ignored = sandbox.path("ignored");
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--fingerprint")
        .arg("--data-dir")
        .arg(&data)
        .env("MUCHAT_DATA_DIR", &ignored);
    assert_eq!(fingerprint_of(cmd), fp);
    assert!(!ignored.exists());

    // A bad value in the environment is a usage error, like one on the
    // command line.
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--fingerprint").env("MUCHAT_RATE", "fast");
    let out = Proc::run("server", cmd);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr().contains("--rate"), "{}", out.stderr());

    // A server configured only from the environment: its address, its data
    // directory (the key above) and a limit that visibly applies.
    let mut cmd = sandbox.command(SERVER);
    cmd.env("MUCHAT_LISTEN", "127.0.0.1:0")
        .env("MUCHAT_DATA_DIR", &data)
        .env("MUCHAT_MAX_FILE_SIZE", "100");
    let server = start_server_bin(cmd);
    assert_eq!(server.fingerprint, fp);
    assert!(!sandbox.path("cwd/muchat-data").exists());

    let big = sandbox.path("big.bin");
    std::fs::write(&big, [7u8; 101]).unwrap();
    let small = sandbox.path("small.bin");
    std::fs::write(&small, [7u8; 100]).unwrap();
    // The client's flags in --flag=value form too.
    let mut cmd = sandbox.command(CLIENT);
    cmd.arg(&server.addr)
        .arg(format!("--server-fingerprint={}", server.fingerprint))
        .arg(format!("--downloads={}", sandbox.downloads("a").display()))
        .arg(format!("--state-dir={}", sandbox.path("a-state").display()));
    let mut c = Proc::spawn("client", cmd);
    for line in [
        "CREATE_USER A a pw",
        "CREATE_USER B b pw",
        "LOGIN a pw",
        &format!("SEND FILE b {}", big.display()),
        &format!("SEND FILE b {}", small.display()),
    ] {
        c.send(line);
    }
    let out = c.finish();
    // One command failed (the file over the limit): exit 1.
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.out.iter().any(|l| l.starts_with("ERR TOO_LARGE ")),
        "{}",
        out.stdout()
    );
    assert!(
        out.out
            .iter()
            .any(|l| l.starts_with("FILE_SENT ") && l.contains(": OK sent to @b:")),
        "{}",
        out.stdout()
    );
}

#[test]
fn scripted_clients_chat_and_send_a_file() {
    let sandbox = Sandbox::new();
    let mut server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));

    // More than one chunk, and every byte value.
    let content: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .chain(0..=255u8)
        .collect();
    let file = sandbox.dir("outbox").join("report.bin");
    std::fs::write(&file, &content).unwrap();

    // Bob's standard input stays open until the test has seen what it
    // waits for (like `(printf ...; sleep 2) | client`, without the sleep).
    let mut bob = Proc::spawn("bob", sandbox.client_cmd(&server, "bob"));
    bob.send("CREATE_USER Bob bob pw");
    bob.out_line("OK created user bob");
    bob.send("login bob pw");
    bob.out_line("OK logged in as bob");
    bob.send("CREATE_GROUP devs");
    bob.out_line("OK created the group #devs");

    // Alice's whole script at once; the client waits for each reply, and
    // at the end for its file to finish.
    let mut alice = Proc::spawn("alice", sandbox.client_cmd(&server, "alice"));
    for line in [
        "CREATE_USER \"Alice Liddell\" alice pw",
        "LOGIN alice pw",
        "# a comment",
        "",
        "JOIN #devs",
        "SEND bob hi  there",
        "SEND_TO_GROUP devs hello group",
        &format!("SEND FILE bob {}", file.display()),
        "SEND bob \x1b[2Jgotcha",
        "BOGUS",
    ] {
        alice.send(line);
    }
    let a = alice.finish();
    let text = a.stdout();
    // BOGUS got an error: exit 1, after everything else ran.
    assert_eq!(a.code, Some(1), "alice: {a:?}");
    assert!(a.out[0].starts_with("OK created user alice"), "{text}");
    assert!(a.out[1].starts_with("OK logged in as alice"), "{text}");
    assert!(a.out[2].starts_with("OK "), "{text}");
    assert!(a.out[3].starts_with("OK sent to @bob:"), "{text}");
    assert!(a.out[4].starts_with("OK sent to #devs:"), "{text}");
    let hi_at = sent_to(&a.out[3]);
    let group_at = sent_to(&a.out[4]);
    assert!(
        a.out.iter().any(|l| l.starts_with("ERR UNKNOWN_COMMAND ")),
        "{text}"
    );
    let file_sent = a
        .out
        .iter()
        .find(|l| l.starts_with("FILE_SENT "))
        .unwrap_or_else(|| panic!("exit did not wait for the transfer: {text}"));
    assert!(file_sent.contains(": OK sent to @bob:"), "{file_sent}");
    let file_at = sent_to(file_sent);
    // The connection that sent a message does not get it back.
    assert!(
        !a.out
            .iter()
            .any(|l| l.starts_with("MSG ") || l.starts_with("FILE ")),
        "{text}"
    );

    // Bob sees each, named as he sees the conversation.
    let m = event(&bob.out_line("hi  there"));
    assert_eq!(m.kind, "MSG");
    assert_eq!(m.at, hi_at.replace("@bob", "@alice"));
    assert_eq!((m.from.as_str(), m.text.as_str()), ("alice", "hi  there"));
    assert!(m.time.contains('T') && m.time.ends_with('Z'), "{m:?}");
    let g = event(&bob.out_line("hello group"));
    assert_eq!((g.kind.as_str(), g.at.as_str()), ("MSG", group_at.as_str()));
    assert_eq!(g.from, "alice");
    let escaped = event(&bob.out_line("gotcha"));
    assert_eq!(escaped.text, "\\x1b[2Jgotcha", "escape neutralised");

    let f = event(&bob.out_line("FILE "));
    assert_eq!(f.kind, "FILE");
    assert_eq!(f.at, file_at.replace("@bob", "@alice"));
    assert_eq!(f.from, "alice");
    let saved = sandbox.downloads("bob").join("report.bin");
    assert_eq!(
        f.text,
        format!("saved {} ({} bytes)", saved.display(), content.len())
    );
    assert!(
        std::fs::read(&saved).unwrap() == content,
        "the received file differs from the sent one"
    );

    // History shows the group message again, then the reply.
    bob.send("HISTORY #devs");
    let h = event(&bob.out_line("hello group"));
    assert_eq!(h.at, group_at);
    bob.out_line("OK ");
    let b = bob.finish();
    assert_eq!(b.code, Some(0), "{b:?}");

    server.proc.err_line("logged in user=alice");
    server.proc.err_line("closed reason=client quit");
}

#[test]
fn client_exits_non_zero_when_it_cannot_connect_or_handshake() {
    let sandbox = Sandbox::new();
    let client = |args: &[&str]| -> Exit {
        let mut cmd = sandbox.command(CLIENT);
        cmd.args(args);
        Proc::run("client", cmd)
    };

    // Nothing listening: take a free port and close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = client(&[&format!("127.0.0.1:{port}")]);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr().contains("cannot connect"), "{out:?}");

    // Something that is not a muchat server.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = fake.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let _ = s.set_read_timeout(Some(common::WAIT));
            let _ = s.read(&mut [0u8; 1024]);
        }
    });
    let out = client(&[&addr.to_string()]);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr().contains("muchat protocol"), "{out:?}");
    // Nothing was pinned for it in the (sandboxed) default file.
    let known = sandbox.path("home/.local/share/muchat/known_servers");
    let pinned = std::fs::read_to_string(&known).unwrap_or_default();
    assert!(!pinned.contains(&addr.to_string()), "{pinned}");

    // A real server, but not the key the client was told to expect.
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let mut cmd = sandbox.command(SERVER);
    cmd.arg("--fingerprint")
        .arg("--data-dir")
        .arg(sandbox.path("other"));
    let other = Proc::run("server --fingerprint", cmd).out[0].clone();
    assert_ne!(other, server.fingerprint);
    let out = client(&[&server.addr, "--server-fingerprint", &other]);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr().contains("refusing to connect"), "{out:?}");

    // Trust on first use: the default file (in the sandboxed home) pins the
    // key; a different key pinned for the address is refused.
    let out = client(&[&server.addr]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr().contains("pinned"), "{out:?}");
    let pinned = std::fs::read_to_string(&known).unwrap();
    assert!(
        pinned.contains(&format!("{} {}", server.addr, server.fingerprint)),
        "{pinned}"
    );
    let out = client(&[&server.addr]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr().contains("pinned"), "{out:?}");

    let changed = sandbox.path("changed_servers");
    std::fs::write(&changed, format!("{} {other}\n", server.addr)).unwrap();
    let out = client(&[&server.addr, "--known-servers", changed.to_str().unwrap()]);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr().contains(&server.fingerprint), "{out:?}");

    // A malformed fingerprint is a usage error.
    let out = client(&[&server.addr, "--server-fingerprint", "SHA256:nope"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn script_exits_non_zero_when_the_server_goes_away() {
    let sandbox = Sandbox::new();
    let mut server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let mut c = Proc::spawn("client", sandbox.client_cmd(&server, "a"));
    c.send("CREATE_USER A a pw");
    c.out_line("OK created user a");
    c.send("LOGIN a pw");
    c.out_line("OK logged in as a");

    // Killed, not stopped politely: the connection just breaks.
    server.proc.child.kill().unwrap();
    server.proc.child.wait().unwrap();
    c.out_line("DISCONNECTED");
    // The script ends on its own, with input still open.
    let deadline = Instant::now() + common::WAIT;
    assert!(
        c.out.read_to_end_by(deadline) && c.err.read_to_end_by(deadline),
        "client did not exit\n{}",
        c.transcript()
    );
    let out = c.finish();
    // The connection was lost: exit 3.
    assert_eq!(out.code, Some(3), "{out:?}");
}

#[test]
fn logging_out_is_not_a_protocol_error() {
    let sandbox = Sandbox::new();
    let mut server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let mut c = Proc::spawn("client", sandbox.client_cmd(&server, "a"));
    // The acknowledgements for what was sent are still waiting (they go at
    // most every 200 ms, or when the client closes) when LOGOUT goes.
    for line in [
        "CREATE_USER A a pw",
        "CREATE_USER B b pw",
        "LOGIN a pw",
        "SEND b one",
        "SEND b two",
        "LOGOUT",
    ] {
        c.send(line);
    }
    let out = c.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.out.last().map(String::as_str), Some("OK logged out"));
    let closed = server.proc.err_line("closed reason=");
    assert!(closed.ends_with("closed reason=client quit"), "{closed}");
}

#[test]
fn a_file_interrupted_by_logout_arrives_after_logging_in_again() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    // Large enough to be mid-transfer when the first PROGRESS line shows.
    let content: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = sandbox.dir("outbox").join("big.bin");
    std::fs::write(&file, &content).unwrap();
    let mut alice = Proc::spawn("alice", sandbox.client_cmd(&server, "alice"));
    for line in [
        "CREATE_USER A alice pw",
        "CREATE_USER B bob pw",
        "LOGIN alice pw",
        &format!("SEND FILE bob {}", file.display()),
    ] {
        alice.send(line);
    }
    let a = alice.finish();
    assert_eq!(a.code, Some(0), "{a:?}");
    assert!(a.stdout().contains("FILE_SENT "), "{a:?}");

    // Bob's catch-up begins the file; he logs out in the middle of it.
    let mut bob = Proc::spawn("bob", sandbox.client_cmd(&server, "bob"));
    bob.send("LOGIN bob pw");
    bob.out_line("OK logged in as bob");
    bob.out_line("PROGRESS @alice:1 ");
    bob.send("LOGOUT");
    bob.out_line("OK logged out");
    bob.send("LOGIN bob pw");
    bob.out_line("OK logged in as bob");
    let deadline = Instant::now() + common::WAIT;
    // The interrupted copy is reported and discarded; the file then comes
    // again, whole. Any other failure ends the wait.
    let end = bob
        .out
        .find(
            &|l| {
                l.starts_with("FILE @alice:1 ")
                    || (l.starts_with("FILE_FAILED @alice:1")
                        && !l.ends_with("interrupted: logged out"))
            },
            deadline,
        )
        .unwrap_or_else(|| panic!("the file never ended\n{}", bob.transcript()));
    let saved = sandbox.downloads("bob").join("big.bin");
    assert!(
        end.ends_with(&format!(
            ": saved {} ({} bytes)",
            saved.display(),
            content.len()
        )),
        "{end}\n{}",
        bob.transcript()
    );
    assert!(std::fs::read(&saved).unwrap() == content);
    assert_eq!(bob.finish().code, Some(0));
}

#[test]
fn a_second_server_on_one_data_dir_is_refused_and_names_the_holder() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    let first = start_server_bin(sandbox.server_cmd(&data));
    let second = Proc::run("second server", sandbox.server_cmd(&data));
    assert_ne!(second.code, Some(0), "{second:?}");
    let pid = first.proc.child.id();
    assert!(
        second
            .err
            .iter()
            .any(|l| l.contains("in use by another server") && l.contains(&format!("pid {pid}"))),
        "{}",
        second.stderr()
    );
}

#[test]
fn sigterm_says_goodbye_to_every_client_and_exits_cleanly() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    let mut server = start_server_bin(sandbox.server_cmd(&data));
    let mut bob = Proc::spawn("bob", sandbox.client_cmd(&server, "bob"));
    bob.send("CREATE_USER Bob bob pw");
    bob.out_line("OK created user bob");
    bob.send("LOGIN bob pw");
    bob.out_line("OK logged in as bob");
    let mut alice = Proc::spawn("alice", sandbox.client_cmd(&server, "alice"));
    alice.send("CREATE_USER Alice alice pw");
    alice.out_line("OK created user alice");
    alice.send("LOGIN alice pw");
    alice.out_line("OK logged in as alice");
    alice.send("SEND bob before the shutdown");
    alice.out_line("OK sent to @bob:");
    bob.out_line("before the shutdown");

    let pid = server.proc.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    bob.out_line("server shutting down");
    alice.out_line("server shutting down");
    let exit = server.proc.finish();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr());

    // The lock was released and what was committed is there.
    let server = start_server_bin(sandbox.server_cmd(&data));
    let mut carol = Proc::spawn("bob again", sandbox.client_cmd(&server, "bob2"));
    carol.send("LOGIN bob pw");
    carol.out_line("OK logged in as bob");
    carol.send("HISTORY @alice");
    carol.out_line("before the shutdown");
}

/// Runs `lines` as `who`'s script (with `flags`) to its end.
fn script(
    sandbox: &Sandbox,
    server: &ServerBin,
    who: &str,
    flags: &[&str],
    lines: &[&str],
) -> Exit {
    let mut cmd = sandbox.client_cmd(server, who);
    cmd.args(flags);
    let mut c = Proc::spawn(who, cmd);
    for line in lines {
        c.send(line);
    }
    c.finish()
}

#[test]
fn quit_at_the_end_of_a_script_exits_0_every_time() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let first = script(&sandbox, &server, "a", &[], &["CREATE_USER A a pw"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    for _ in 0..6 {
        let out = script(&sandbox, &server, "a", &[], &["LOGIN a pw", "LIST", "QUIT"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(!out.stdout().contains("DISCONNECTED"), "{out:?}");
    }
}

#[test]
fn an_error_makes_the_exit_code_1_and_fail_fast_stops_there() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let lines = ["CREATE_USER A a pw", "LOGIN a pw", "JOIN nosuch", "LIST"];
    let out = script(&sandbox, &server, "a", &[], &lines);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.out.iter().any(|l| l.starts_with("ERR NO_SUCH_GROUP")),
        "{out:?}"
    );
    // Everything after the error still ran.
    assert!(
        out.out.last().is_some_and(|l| l.starts_with("OK ")),
        "{out:?}"
    );

    let lines = ["LOGIN a pw", "JOIN nosuch", "LIST"];
    let out = script(&sandbox, &server, "a", &["--fail-fast"], &lines);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.out
            .last()
            .is_some_and(|l| l.starts_with("ERR NO_SUCH_GROUP")),
        "{out:?}"
    );
}

#[test]
fn json_replies_name_their_request_and_carry_ids() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let lines = [
        "CREATE_USER A a pw",
        "CREATE_USER B b pw",
        "# a comment",
        "LOGIN a pw",
        "SEND b hello there",
        "JOIN nosuch",
    ];
    let out = script(&sandbox, &server, "a", &["--json"], &lines);
    assert_eq!(out.code, Some(1), "{out:?}");
    let objects: Vec<serde_json::Value> = out
        .out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let reply = |line: u64| {
        objects
            .iter()
            .find(|o| o["type"] == "reply" && o["line"] == line)
            .unwrap_or_else(|| panic!("no reply for line {line}: {out:?}"))
    };
    assert_eq!(reply(4)["request"], "LOGIN");
    assert_eq!(reply(4)["ok"], true);
    let sent = reply(5);
    assert_eq!(
        (&sent["request"], &sent["ok"]),
        (&"SEND".into(), &true.into())
    );
    assert_eq!(sent["refs"], serde_json::json!(["@b:1"]), "{sent}");
    let failed = reply(6);
    assert_eq!(
        (&failed["ok"], &failed["code"]),
        (&false.into(), &"NO_SUCH_GROUP".into())
    );

    // Bob reads it as an event (it comes after his login's reply).
    let mut cmd = sandbox.client_cmd(&server, "b");
    cmd.arg("--json");
    let mut bob = Proc::spawn("bob", cmd);
    bob.send("LOGIN b pw");
    let line = bob.out_line(r#""type":"message""#);
    let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(bob.finish().code, Some(0));
    assert_eq!(msg["conversation"], "@a");
    assert_eq!(msg["from"], "a");
    assert_eq!(msg["text"], "hello there");
    assert_eq!(msg["seq"], 1);
}

#[test]
fn rate_limited_commands_are_sent_again_after_the_wait() {
    let sandbox = Sandbox::new();
    let mut cmd = sandbox.server_cmd(&sandbox.path("data"));
    cmd.args(["--rate", "1", "--burst", "2"]);
    let server = start_server_bin(cmd);
    let lines = [
        "CREATE_USER A a pw",
        "LOGIN a pw",
        "LIST",
        "LIST",
        "LIST",
        "LIST",
    ];
    let out = script(&sandbox, &server, "a", &[], &lines);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout().contains("RATE_LIMITED"), "{out:?}");
    assert_eq!(
        out.out.iter().filter(|l| l.starts_with("OK ")).count(),
        6,
        "{out:?}"
    );
}

#[test]
fn a_closed_standard_output_ends_the_client_quietly() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let mut cmd = sandbox.client_cmd(&server, "a");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn client");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "CREATE_USER A a pw").unwrap();
    // Read the first line, then close the pipe, as `| head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("OK created user a"), "{first}");
    for _ in 0..3 {
        let _ = writeln!(stdin, "LOGIN a pw");
    }
    drop(stdin);
    let err = Lines::read(child.stderr.take().unwrap());
    let status = child.wait().expect("wait");
    let mut err = err;
    assert!(err.read_to_end_by(Instant::now() + common::WAIT));
    assert_eq!(status.code(), Some(141), "{:?}", err.seen);
    assert!(
        !err.seen.iter().any(|l| l.contains("panicked")),
        "{:?}",
        err.seen
    );
}

/// `RECORD` and `PLAY` through the real binaries, with stand-in `arecord`
/// and `aplay` first on the client's `PATH` (tests never touch a
/// microphone or speakers): `arecord` writes a WAV made here to the file it
/// is given, `aplay` notes the file it was asked to play.
#[test]
fn record_sends_a_voice_note_and_play_plays_the_one_received() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let tools = sandbox.dir("tools");
    let mic = sandbox.path("mic.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&mic, spec).unwrap();
    for i in 0..16_000u32 {
        w.write_sample(((i % 40) as i16 - 20) * 400).unwrap();
    }
    w.finalize().unwrap();
    let played = sandbox.path("played.txt");
    for (name, body) in [
        ("arecord", format!("cp {} \"$last\"", mic.display())),
        ("aplay", format!("echo \"$last\" > {}", played.display())),
    ] {
        let p = tools.join(name);
        // The file is the last argument.
        std::fs::write(&p, format!("#!/bin/sh\nfor last; do :; done\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let client = |who: &str| {
        let mut c = sandbox.client_cmd(&server, who);
        c.env("PATH", &path);
        Proc::spawn(who, c)
    };

    let mut alice = client("alice");
    for line in [
        "CREATE_USER A alice pw",
        "CREATE_USER B bob pw",
        "LOGIN alice pw",
        "RECORD bob 2",
    ] {
        alice.send(line);
    }
    let a = alice.finish();
    assert_eq!(a.code, Some(0), "{a:?}");
    assert!(a.out.iter().any(|l| l.starts_with("FILE_SENT ")), "{a:?}");

    let mut bob = client("bob");
    bob.send("LOGIN bob pw");
    // Announced and saved as a voice note of 2 s.
    let line = bob.out_line("FILE @alice:1 ");
    assert!(line.ends_with(", voice 0:02)"), "{line}");
    let saved = line
        .split(": saved ")
        .nth(1)
        .and_then(|s| s.rsplit_once(" ("))
        .map(|(p, _)| p.to_string())
        .unwrap_or_else(|| panic!("{line}"));
    bob.send("PLAY @alice:1");
    bob.out_line("OK played ");
    assert_eq!(std::fs::read_to_string(&played).unwrap().trim(), saved);
    // A note this client never received.
    bob.send("PLAY @alice:9");
    bob.out_line("no voice note @alice:9");
    let b = bob.finish();
    assert_eq!(b.code, Some(1), "the failed PLAY counts: {b:?}");
}

#[test]
fn record_without_a_recorder_says_what_to_install() {
    let sandbox = Sandbox::new();
    let server = start_server_bin(sandbox.server_cmd(&sandbox.path("data")));
    let mut c = sandbox.client_cmd(&server, "alice");
    // Nothing on PATH: no recorder, no player.
    c.env("PATH", sandbox.dir("empty-bin"));
    let mut alice = Proc::spawn("alice", c);
    for line in ["CREATE_USER A alice pw", "LOGIN alice pw", "RECORD alice 1"] {
        alice.send(line);
    }
    let a = alice.finish();
    assert_eq!(a.code, Some(1), "{a:?}");
    let text = a.stdout();
    assert!(
        text.contains("no recorder found") && text.contains("arecord"),
        "{text}"
    );
}

#[test]
fn servers_sharing_a_key_file_are_one_identity_to_clients() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let key = sandbox.path("cluster/server_key");
    // Created by --fingerprint when missing, mode 0600.
    let mut fp = sandbox.command(SERVER);
    fp.arg("--fingerprint").arg("--key-file").arg(&key);
    let printed = Proc::run("fingerprint", fp);
    assert_eq!(printed.code, Some(0), "{printed:?}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let node = |dir: &str| {
        let mut c = sandbox.server_cmd(&sandbox.path(dir));
        c.arg("--key-file").arg(&key);
        start_server_bin(c)
    };
    let (one, two) = (node("data1"), node("data2"));
    assert_eq!(one.fingerprint, printed.out[0]);
    assert_eq!(two.fingerprint, printed.out[0]);
    // A client that pinned node one (known_servers, trust on first use)
    // finds the same key on node two under the same name.
    let known = sandbox.path("known_servers");
    let client = |server: &ServerBin| {
        let mut c = sandbox.command(CLIENT);
        c.arg(&server.addr).arg("--known-servers").arg(&known);
        Proc::run("client", c)
    };
    assert_eq!(client(&one).code, Some(0));
    let pinned = std::fs::read_to_string(&known).unwrap();
    let renamed = pinned.replace(&one.addr, &two.addr);
    std::fs::write(&known, renamed).unwrap();
    let second = client(&two);
    assert_eq!(second.code, Some(0), "{second:?}");
    // Known, not pinned afresh.
    assert!(!second.stderr().contains("first connection"), "{second:?}");
    assert!(
        client(&one).stderr().contains("first connection"),
        "one's name is no longer pinned"
    );

    // A key file others can read is refused, naming the fix.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = sandbox.server_cmd(&sandbox.path("data3"));
    c.arg("--key-file").arg(&key);
    let refused = Proc::run("server", c);
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(refused.stderr().contains("chmod 600"), "{refused:?}");
}
