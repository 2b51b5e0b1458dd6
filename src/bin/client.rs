//! `client [HOST:PORT] [flags]`: the muchat terminal client.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use muchat::client::script::{Exit, ScriptOptions};
use muchat::client::{repl, script, seen, tui, Client, ClientConfig, Trust};
use muchat::identity::Fingerprint;

/// The muchat terminal client.
///
/// Connects to a muchat server. The server proves it holds its key during
/// the handshake; the client pins the key's fingerprint the first time
/// (trust on first use, like SSH) and refuses a changed key.
///
/// On a terminal: an interactive prompt with history and tab completion
/// that reconnects by itself. With standard input from a pipe or file: runs
/// one command per line, waiting for each reply, printing replies and
/// events one per line (or JSON with --json). Exit codes: 0 every command
/// succeeded, 1 some command got an ERR (or an upload failed), 2 usage, 3
/// the connection failed or was lost, 141 standard output was closed.
/// Type HELP once connected for the commands.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The server
    #[arg(default_value = "127.0.0.1:9000")]
    server: String,

    /// Where received files are saved
    #[arg(long, value_name = "DIR", default_value = "downloads")]
    downloads: PathBuf,

    /// Pinned server fingerprints [default: ~/.local/share/muchat/known_servers]
    #[arg(long, value_name = "FILE")]
    known_servers: Option<PathBuf>,

    /// Accept exactly this server key (SHA256:...), e.g. in scripts
    #[arg(long, value_name = "FP", value_parser = parse_fingerprint)]
    server_fingerprint: Option<Fingerprint>,

    /// Where to remember what was already shown, per server and user
    /// [default: ~/.local/state/muchat]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Reconnect when the connection drops (always on at a terminal)
    #[arg(long)]
    reconnect: bool,

    /// Scripts: print one JSON object per reply and event
    #[arg(long)]
    json: bool,

    /// Scripts: stop at the first ERR (exit 1)
    #[arg(long)]
    fail_fast: bool,

    /// Show message ids and full timestamps at the prompt (toggle with /ids)
    #[arg(long, short)]
    verbose: bool,

    /// Full-screen client: conversation list, a pane per conversation,
    /// transfers, status bar (? for keys)
    #[arg(long)]
    tui: bool,
}

fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(s).ok_or_else(|| "expected SHA256:<base64>".to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let interactive = std::io::stdin().is_terminal();
    let config = ClientConfig {
        downloads: args.downloads,
        trust: match (args.server_fingerprint, args.known_servers) {
            (Some(fp), _) => Trust::Fingerprint(fp),
            (None, Some(file)) => Trust::KnownServers(file),
            (None, None) => Trust::default(),
        },
        state_dir: Some(args.state_dir.unwrap_or_else(seen::default_state_dir)),
        reconnect: args.reconnect || interactive,
    };
    let client = match Client::connect(&args.server, config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client: cannot connect to {}: {e}", args.server);
            return ExitCode::from(Exit::Connection.code());
        }
    };
    if let Some(note) = client.first_use_note() {
        eprintln!("client: {note}");
    }
    let exit = if args.tui {
        let fingerprint = client.fingerprint().to_string();
        tui::run(client, &args.server, &fingerprint)
    } else if interactive && !args.json {
        repl::run(client, &args.server, args.verbose)
    } else {
        let opts = ScriptOptions {
            json: args.json,
            fail_fast: args.fail_fast,
        };
        script::run(client, std::io::BufReader::new(std::io::stdin()), opts)
    };
    ExitCode::from(exit.code())
}
