//! `client [HOST:PORT] [--downloads DIR]`: the muchat terminal client.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use muchat::client::{repl, script, Client, ClientConfig};

const USAGE: &str = "\
usage: client [HOST:PORT] [--downloads DIR]

Connects to a muchat server (default 127.0.0.1:9000).

On a terminal: an interactive prompt with history and tab completion.
With standard input from a pipe or file: runs one command per line, waiting
for each reply, printing replies and events one per line; exits 0 at the end
of input (after outgoing files finish), 1 if the connection fails.

  --downloads DIR   where received files are saved (default ./downloads)
  -h, --help        show this help

Type HELP once connected for the commands.";

fn main() -> ExitCode {
    let mut addr = "127.0.0.1:9000".to_string();
    let mut config = ClientConfig::default();
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
            a if a.starts_with('-') => return usage_error(&format!("unknown option {a}")),
            a => addr = a.to_string(),
        }
    }
    let client = match Client::connect(addr.as_str(), config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client: cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
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
