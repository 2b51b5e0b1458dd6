//! `server [ADDR] [--data-dir DIR] [--max-file-size BYTES] [--max-pending-bytes BYTES]`:
//! runs the muchat server.

use std::net::TcpListener;
use std::process::ExitCode;

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
  --fingerprint               print this server's key fingerprint (creating the
                              key in the data directory if needed) and exit
  -h, --help                  show this help

Logs connections, logins and closes (with reasons) to standard error.";

fn main() -> ExitCode {
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

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("server: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
