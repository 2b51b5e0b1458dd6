//! `client [HOST:PORT] [--downloads DIR] [--known-servers FILE] [--server-fingerprint FP]`:
//! the muchat terminal client.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use muchat::client::{repl, script, Client, ClientConfig, Trust};
use muchat::identity::Fingerprint;

const USAGE: &str = "\
usage: client [HOST:PORT] [--downloads DIR] [--known-servers FILE] [--server-fingerprint FP]

Connects to a muchat server (default 127.0.0.1:9000). The server proves it
holds its key during the handshake; the client pins the key's fingerprint
the first time (trust on first use, like SSH) and refuses a changed key.

On a terminal: an interactive prompt with history and tab completion.
With standard input from a pipe or file: runs one command per line, waiting
for each reply, printing replies and events one per line; exits 0 at the end
of input (after outgoing files finish), 1 if the connection fails.

  --downloads DIR             where received files are saved (default ./downloads)
  --known-servers FILE        pinned server fingerprints
                              (default ~/.local/share/muchat/known_servers)
  --server-fingerprint FP     accept exactly this key (SHA256:...), e.g. in scripts
  -h, --help                  show this help

Type HELP once connected for the commands.";

fn main() -> ExitCode {
    let mut addr = "127.0.0.1:9000".to_string();
    let mut config = ClientConfig::default();
    let (mut known, mut pinned) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--downloads" => match args.next() {
                Some(d) => config.downloads = PathBuf::from(d),
                None => return usage_error("--downloads needs a directory"),
            },
            "--known-servers" => match args.next() {
                Some(f) => known = Some(PathBuf::from(f)),
                None => return usage_error("--known-servers needs a file"),
            },
            "--server-fingerprint" => match args.next().as_deref().and_then(Fingerprint::parse) {
                Some(fp) => pinned = Some(fp),
                None => return usage_error("--server-fingerprint needs SHA256:<base64>"),
            },
            a if a.starts_with('-') => return usage_error(&format!("unknown option {a}")),
            a => addr = a.to_string(),
        }
    }
    config.trust = match (pinned, known) {
        (Some(fp), _) => Trust::Fingerprint(fp),
        (None, Some(file)) => Trust::KnownServers(file),
        (None, None) => Trust::default(),
    };
    let client = match Client::connect(addr.as_str(), config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client: cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(note) = client.first_use_note() {
        eprintln!("client: {note}");
    }
    let code = if std::io::stdin().is_terminal() {
        repl::run(client)
    } else {
        script::run(client, std::io::BufReader::new(std::io::stdin()))
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("client: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
