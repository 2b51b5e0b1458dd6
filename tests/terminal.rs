//! The interactive client in a real terminal: the `client` binary runs in
//! a tmux pane (a pseudo-terminal, 80 columns) against the real `server`
//! binary, keys are typed with `tmux send-keys` and the screen is read with
//! `tmux capture-pane`, as a person would see it.
//!
//! Needs tmux. Without it these tests say so and pass, except when
//! `MUCHAT_REQUIRE_TMUX` is set (CI sets it, after installing tmux), when
//! a missing tmux fails them.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use std::io::{BufRead, BufReader};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// Whether tmux is here; panics if it must be and is not.
fn have_tmux() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("MUCHAT_REQUIRE_TMUX").is_none(),
            "MUCHAT_REQUIRE_TMUX is set but tmux is not installed"
        );
        eprintln!("tmux is not installed: skipped the terminal test");
    }
    found
}

/// A tmux server of the test's own (its socket in the test's directory),
/// killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// Starts `shell_command` in a new 80x24 session `name`.
    fn session(&self, name: &str, shell_command: &str) {
        let ok = self
            .cmd()
            .args(["new-session", "-d", "-s", name, "-x", "80", "-y", "24"])
            .arg(shell_command)
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session failed");
    }

    /// Types `keys` (tmux key names, e.g. "Enter", "C-c", or literal text).
    fn keys(&self, name: &str, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", name])
            .args(keys)
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux send-keys failed");
    }

    /// What the pane shows, with its scrollback.
    fn screen(&self, name: &str) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-S", "-200", "-t", name])
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen has a line for which `want` holds; returns
    /// the screen.
    fn wait_for(&self, name: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + common::WAIT;
        loop {
            let screen = self.screen(name);
            if screen.lines().any(&want) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no line {what} on the screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// The server binary on a free port; returns it and its address.
fn server(dir: &Path) -> (Child, String) {
    let mut child = Command::new(SERVER)
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server ended");
        if let Some(rest) = line.split("listening addr=").nth(1) {
            break rest.trim().to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in err.lines() {});
    (child, addr)
}

/// A shell command running the client for `who` in `dir`, then printing
/// its exit code so the test can read it.
fn client_command(dir: &Path, addr: &str, who: &str) -> String {
    let home = dir.join(format!("{who}-home"));
    format!(
        "cd {dir} && env -u MUCHAT_DATA_DIR NO_COLOR=1 HOME={home} XDG_STATE_HOME={home}/state \
         XDG_DATA_HOME={home}/data {CLIENT} {addr} --downloads {dir}/{who}-downloads; \
         echo EXIT=$?; sleep 60",
        dir = dir.display(),
        home = home.display(),
    )
}

/// A server, a tmux of the test's own and the directory they live in;
/// the server is stopped on drop (the tmux server too, by its own drop).
struct Setup {
    tmux: Tmux,
    server: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Setup {
    /// None (after saying so) where tmux is not installed.
    fn start() -> Option<Setup> {
        if !have_tmux() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = server(dir.path());
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
        };
        Some(Setup {
            tmux,
            server,
            addr,
            dir,
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn the_prompt_reads_like_a_chat_and_keeps_passwords_secret() {
    let Some(t) = Setup::start() else {
        return;
    };
    let (dir, addr, tmux) = (&t.dir, t.addr.as_str(), &t.tmux);
    tmux.session("alice", &client_command(dir.path(), addr, "alice"));
    tmux.session("bob", &client_command(dir.path(), addr, "bob"));
    tmux.wait_for("alice", "connected", |l| l.starts_with("connected to "));
    tmux.wait_for("bob", "connected", |l| l.starts_with("connected to "));

    // Passwords asked for without echo, twice for a new account.
    tmux.keys("alice", &["CREATE_USER \"Alice Smith\" alice", "Enter"]);
    tmux.wait_for("alice", "asking", |l| l.starts_with("password for alice:"));
    tmux.keys("alice", &["s3cret-pw", "Enter"]);
    tmux.wait_for("alice", "asking again", |l| {
        l.starts_with("the same again:")
    });
    tmux.keys("alice", &["s3cret-pw", "Enter"]);
    tmux.wait_for("alice", "created", |l| {
        l == "-- created user alice; now LOGIN alice <password>"
    });
    tmux.keys("alice", &["LOGIN alice", "Enter"]);
    tmux.wait_for("alice", "asking", |l| l.ends_with("password for alice:"));
    tmux.keys("alice", &["s3cret-pw", "Enter"]);
    tmux.wait_for("alice", "logged in", |l| l == "-- logged in as alice");

    tmux.keys("bob", &["CREATE_USER Bob bob pw2", "Enter"]);
    tmux.wait_for("bob", "created", |l| l.starts_with("-- created user bob"));
    tmux.keys("bob", &["LOGIN bob pw2", "Enter"]);
    tmux.wait_for("bob", "logged in", |l| l == "-- logged in as bob");

    // A group and messages, shown as a chat; #group and @user everywhere.
    tmux.keys("alice", &["CREATE_GROUP #ops", "Enter"]);
    tmux.wait_for("alice", "created", |l| {
        l.starts_with("-- created the group #ops")
    });
    tmux.keys("bob", &["/join #ops", "Enter"]);
    tmux.wait_for("bob", "joined", |l| l.starts_with("-- joined #ops"));
    let long =
        "this line is long enough that an eighty column terminal has to wrap it under the text";
    tmux.keys("alice", &[&format!("SEND_TO_GROUP #ops {long}"), "Enter"]);
    let hh_mm = |l: &str| {
        let b = l.as_bytes();
        b.len() > 6 && b[2] == b':' && b[..5].iter().filter(|c| c.is_ascii_digit()).count() == 4
    };
    let screen = tmux.wait_for("bob", "the group message", |l| {
        hh_mm(l) && l[6..].starts_with("#ops <alice> this line is long")
    });
    // Wrapped under the text, not under the time.
    let first = screen
        .lines()
        .position(|l| l.contains("#ops <alice> this line"))
        .unwrap();
    let next = screen.lines().nth(first + 1).unwrap();
    let indent = "12:34 #ops <alice> ".len();
    assert!(next.starts_with(&" ".repeat(indent)), "{screen}");
    // The sender sees its own message in the same form.
    tmux.wait_for("alice", "its own message", |l| {
        hh_mm(l) && l[6..].starts_with("#ops <alice> this line is long")
    });

    tmux.keys("bob", &["/msg @alice hi alice", "Enter"]);
    tmux.wait_for("alice", "bob's message", |l| {
        hh_mm(l) && &l[6..] == "<bob> hi alice"
    });
    tmux.wait_for("bob", "bob's own message", |l| {
        hh_mm(l) && &l[6..] == "@alice <bob> hi alice"
    });
    tmux.keys("alice", &["JOIN #nosuch", "Enter"]);
    tmux.wait_for("alice", "the error", |l| {
        l == "!! NO_SUCH_GROUP no group named #nosuch"
    });

    // The password never showed, and lines with one never entered the
    // history: going up from the newest stops at `/join #ops`, the oldest
    // line without a password.
    let screen = tmux.screen("alice");
    assert!(!screen.contains("s3cret-pw"), "{screen}");
    tmux.keys("bob", &["Up"]);
    tmux.wait_for("bob", "the newest line", |l| {
        l == "bob> /msg @alice hi alice"
    });
    tmux.keys("bob", &["Up"]);
    tmux.wait_for("bob", "the older line", |l| l == "bob> /join #ops");
    // Two more: nothing older; a marker typed after them lands on it.
    tmux.keys("bob", &["Up", "Up", "~"]);
    tmux.wait_for("bob", "the oldest line", |l| l == "bob> /join #ops~");

    // Ctrl-C clears a half-typed line; a second one in a row quits, with 0.
    tmux.keys("alice", &["half a line", "C-c"]);
    tmux.keys("alice", &["C-c"]);
    tmux.wait_for("alice", "the exit code", |l| l == "EXIT=0");
}

#[test]
fn the_full_screen_client_shows_each_message_in_its_conversation() {
    let Some(t) = Setup::start() else {
        return;
    };
    let (dir, addr, tmux) = (&t.dir, t.addr.as_str(), &t.tmux);
    tmux.session("bob", &client_command(dir.path(), addr, "bob"));
    tmux.wait_for("bob", "connected", |l| l.starts_with("connected to "));
    tmux.keys("bob", &["CREATE_USER Bob bob pw2", "Enter"]);
    tmux.wait_for("bob", "created", |l| l.starts_with("-- created user bob"));
    tmux.keys("bob", &["LOGIN bob pw2", "Enter"]);
    tmux.wait_for("bob", "logged in", |l| l == "-- logged in as bob");
    tmux.keys("bob", &["CREATE_GROUP ops", "Enter"]);
    tmux.wait_for("bob", "created", |l| l.starts_with("-- created the group"));

    let tui =
        client_command(dir.path(), addr, "alice").replace(" --downloads", " --tui --downloads");
    tmux.session("alice", &tui);
    tmux.wait_for("alice", "the status bar", |l| {
        l.contains(addr) && l.contains("online")
    });
    tmux.keys("alice", &["CREATE_USER Alice alice pw1", "Enter"]);
    tmux.wait_for("alice", "created", |l| l.contains("-- created user alice"));
    // The password is asked for in a hidden field.
    tmux.keys("alice", &["LOGIN alice", "Enter"]);
    tmux.wait_for("alice", "the password field", |l| {
        l.contains("password (hidden)")
    });
    tmux.keys("alice", &["pw1"]);
    tmux.wait_for("alice", "stars", |l| l.contains("***"));
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "logged in", |l| l.contains("alice  online"));
    tmux.keys("alice", &["/join #ops", "Enter"]);
    tmux.wait_for("alice", "the #ops pane", |l| l.contains("-- joined #ops"));

    // A group message lands in the #ops pane, shown now.
    tmux.keys("bob", &["SEND_TO_GROUP ops the build is green", "Enter"]);
    let screen = tmux.wait_for("alice", "bob's message", |l| {
        l.contains("<bob> the build is green")
    });
    assert!(screen.contains("┌#ops"), "{screen}");
    // A direct message opens a pane of its own, counted unread.
    tmux.keys("bob", &["SEND alice psst", "Enter"]);
    tmux.wait_for("alice", "the unread count", |l| l.contains(" @bob (1)"));
    let screen = tmux.screen("alice");
    assert!(!screen.contains("psst"), "not in the #ops pane:\n{screen}");
    tmux.keys("alice", &["C-n"]);
    let screen = tmux.wait_for("alice", "the @bob pane", |l| l.contains("<bob> psst"));
    assert!(screen.contains("┌@bob"), "{screen}");
    // Text typed there goes to bob.
    tmux.keys("alice", &["hi bob", "Enter"]);
    tmux.wait_for("bob", "alice's answer", |l| l.ends_with("<alice> hi bob"));

    tmux.keys("alice", &["C-c", "C-c"]);
    tmux.wait_for("alice", "the exit code", |l| l == "EXIT=0");
}
