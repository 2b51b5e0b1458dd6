//! `server [ADDR] [--data-dir DIR] [--max-file-size BYTES] [--max-pending-bytes BYTES]`:
//! runs the muchat server.

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use muchat::log;
use muchat::server::{Config, Server};

const USAGE: &str = "\
usage: server [ADDR] [--data-dir DIR] [--max-file-size BYTES] [--max-pending-bytes BYTES]
       server --fingerprint [--data-dir DIR]

Runs the muchat chat server.

  ADDR                        address to listen on (default 127.0.0.1:9000;
                              0.0.0.0:9000 for every interface, port 0 for any free port)
  --data-dir DIR              where accounts, groups and messages are stored
                              (default ./muchat-data, created if missing)
  --max-file-size BYTES       largest file accepted (default 104857600 = 100 MiB)
  --max-pending-bytes BYTES   most bytes of undelivered files kept per user
                              (default 1073741824 = 1 GiB)
    --handshake-timeout SECS    time a new connection has to finish the handshake (10)
  --idle-timeout SECS         close a session silent this long; PING it halfway (300)
  --max-connections-per-ip N  open connections allowed per source address (16; 0: no limit)
  --rate N                    commands per second per session (20; 0: no limit)
  --burst N                   commands a session may send at once above the rate (50)
  --max-groups-per-user N     groups one user may belong to (100)
  --login-backoff-ms MS       after 3 failed logins for an account or address, each
                              further attempt waits this long, doubling up to 60 s (500)
  --fingerprint               print this server's key fingerprint (creating the
                              key in the data directory if needed) and exit
  -h, --help                  show this help

Logs connections, logins and closes (with reasons) to standard error.";

/// glibc raises its mmap threshold after the first large block is freed,
/// so Argon2's 19 MiB working memory then comes from, and stays in, the
/// heap: measured at about 7 MiB of resident memory per session. A fixed
/// threshold keeps large blocks in mmap, returned to the system on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations_in_mmap() {
    const M_MMAP_THRESHOLD: i32 = -3;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only sets an allocator tunable; it is called once,
    // before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_in_mmap() {}

fn main() -> ExitCode {
    keep_large_allocations_in_mmap();
    let mut addr = "127.0.0.1:9000".to_string();
    let mut config = Config::default();
    let mut fingerprint = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--max-file-size" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => config.max_file_size = n,
                None => return usage_error("--max-file-size needs a number of bytes"),
            },
            "--max-pending-bytes" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => config.max_pending_bytes = n,
                None => return usage_error("--max-pending-bytes needs a number of bytes"),
            },
            "--fingerprint" => fingerprint = true,
            "--handshake-timeout" => match number(&mut args) {
                Some(n) => config.handshake_timeout = Duration::from_secs(n),
                None => return usage_error("--handshake-timeout needs seconds"),
            },
            "--idle-timeout" => match number(&mut args) {
                Some(n) => config.idle_timeout = Duration::from_secs(n.max(1)),
                None => return usage_error("--idle-timeout needs seconds"),
            },
            "--max-connections-per-ip" => match number(&mut args) {
                Some(n) => config.max_connections_per_ip = n as usize,
                None => return usage_error("--max-connections-per-ip needs a number"),
            },
            "--rate" => match number(&mut args).and_then(|n| u32::try_from(n).ok()) {
                Some(n) => config.rate = n,
                None => return usage_error("--rate needs a number"),
            },
            "--burst" => match number(&mut args).and_then(|n| u32::try_from(n).ok()) {
                Some(n) => config.burst = n,
                None => return usage_error("--burst needs a number"),
            },
            "--max-groups-per-user" => match number(&mut args) {
                Some(n) => config.max_groups_per_user = n as usize,
                None => return usage_error("--max-groups-per-user needs a number"),
            },
            "--login-backoff-ms" => match number(&mut args) {
                Some(n) => config.login_backoff = Duration::from_millis(n),
                None => return usage_error("--login-backoff-ms needs milliseconds"),
            },
            "--data-dir" => match args.next() {
                Some(d) => config.data_dir = d.into(),
                None => return usage_error("--data-dir needs a directory"),
            },
            a if a.starts_with('-') => return usage_error(&format!("unknown option {a}")),
            a => addr = a.to_string(),
        }
    }
    if fingerprint {
        return match muchat::identity::load_or_create(&config.data_dir) {
            Ok(key) => {
                println!("{}", muchat::identity::Fingerprint::of(key.public_value()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("server: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(listener, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    log!("key fingerprint {}", server.fingerprint());
    log!("listening on {}", server.local_addr());
    server.wait();
    ExitCode::SUCCESS
}

/// The next argument as a number.
fn number(args: &mut impl Iterator<Item = String>) -> Option<u64> {
    args.next().and_then(|v| v.parse().ok())
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("server: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
