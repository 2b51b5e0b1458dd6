//! `loadgen ADDR... [flags]`: drives muchat servers with real protocol
//! traffic and reports throughput, latency and server CPU per delivery.
//! The load shapes are in [`modes`], the measuring in [`report`], and
//! the attacks the abuse limits answer in [`attack`]. Several addresses
//! (the nodes of a cluster) share the clients out in turn.

mod attack;
mod fanout;
mod hoard;
mod latency;
mod modes;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muchat::client::Trust;
use muchat::identity::Fingerprint;

use attack::{Attack, Attacker};
use modes::{fresh_prefix, run, tdes_mb_per_s, FanOut, Mode, Options};

/// Drives muchat servers with real protocol traffic (every MAC verified,
/// every group envelope opened, every delivery acknowledged, a sample of
/// bodies decrypted as latency probes) and reports throughput, latency and
/// server CPU. Prints a summary and one JSON line; exits 1 if any delivery
/// is missing or repeated.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The server, or the nodes of a cluster (several ADDRs, or one
    /// comma-separated list): client i connects to ADDR number i mod their
    /// count, so fan-out members are dealt out round robin, and so are the
    /// senders (members 0 to --senders - 1); give a load balancer's one
    /// address to let it choose
    #[arg(required = true, value_name = "ADDR", value_delimiter = ',')]
    addrs: Vec<String>,

    /// Fan-out: clients in one group
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Fan-out: how many members send
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Fan-out: messages per sender [default: 2000]; --hoard: messages in
    /// the group before the hoarders and during [default: 3000]
    #[arg(long)]
    messages: Option<usize>,
    /// Fan-out: message text size in bytes
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Fan-out: requests a sender keeps unanswered
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Fan-out: event-loop threads serving all the sessions (each reads
    /// its sessions until they would block: MACs, envelopes, ACKs, PONGs,
    /// and the senders' next messages)
    #[arg(long, value_name = "N", default_value_t = 2)]
    loops: usize,
    /// Fan-out: serve the senders on a loop of their own, so they act on
    /// each reply at once however far the receivers lag
    #[arg(long)]
    sender_loop: bool,

    /// Hold N logged-in sessions; report server RSS per session (needs
    /// --server-pid) and one probe message's latency
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// One user sends another N direct messages, each once the previous
    /// one has arrived; reports send-to-arrival latency. The sender
    /// connects to the first ADDR, the receiver to the second (so with two
    /// nodes this is cross-node delivery), or both to the only one
    #[arg(long, value_name = "N")]
    latency: Option<usize>,
    /// N clients connect, handshake and log in at once
    #[arg(long, value_name = "N")]
    storm: Option<usize>,
    /// One file of BYTES to a user, or to a group of 10 (--to group)
    #[arg(long, value_name = "BYTES")]
    file: Option<u64>,
    /// Who gets --file
    #[arg(long, value_parser = ["user", "group"], default_value = "user")]
    to: String,
    /// Measure the des crate's single-core 3DES-CBC MB/s and exit
    #[arg(long)]
    cipher: bool,
    /// Clients that stop reading (pipelined HISTORY, a flooded group, a
    /// backlog): report the server's peak RSS and another member's
    /// HISTORY latency (needs --server-pid)
    #[arg(long)]
    hoard: bool,
    /// Run one of the attacks the server's abuse limits answer (against
    /// the first ADDR, from loopback source addresses 127.10.0.1 and up)
    /// and report what got through
    #[arg(long, value_enum, value_name = "ATTACK")]
    attack: Option<Attack>,
    /// Attack: guesses, accounts or connections [defaults: guess 96,
    /// spray 150, silent 3000, nat 100]
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Attack: how long the victim and dh-flood attacks last, seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    secs: u64,

    /// Report the server's CPU seconds (and RSS for --idle); repeat for
    /// several nodes (their CPU is summed)
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Report the CPU seconds of this process and its children apart from
    /// the servers' (PostgreSQL's postmaster, redis-server); repeatable
    #[arg(long = "engine-pid", value_name = "PID")]
    engine_pids: Vec<u32>,
    /// Accept exactly this server key (default: pin on first use in a
    /// throwaway file)
    #[arg(long, value_name = "FP", value_parser = parse_fingerprint)]
    server_fingerprint: Option<Fingerprint>,
    /// Hard limit for the run, seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    deadline: u64,
    /// Decrypt every N-th body per receiver as a latency probe
    #[arg(long, value_name = "N", default_value_t = 50)]
    sample: usize,
    /// Account name prefix [default: fresh per run]
    #[arg(long)]
    prefix: Option<String>,
}

fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(s).ok_or_else(|| "expected SHA256:<base64>".to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.cipher {
        println!(
            "3DES-CBC (des crate, one core): {:.2} MB/s",
            tdes_mb_per_s(32 << 20)
        );
        return ExitCode::SUCCESS;
    }
    let throwaway: PathBuf =
        std::env::temp_dir().join(format!("muchat-loadgen-known-{}", std::process::id()));
    let trust = match args.server_fingerprint {
        Some(fp) => Trust::Fingerprint(fp),
        None => Trust::KnownServers(throwaway.clone()),
    };
    let prefix = args.prefix.unwrap_or_else(fresh_prefix);
    let deadline = Duration::from_secs(args.deadline);
    if let Some(attack) = args.attack {
        let attacker = Attacker {
            addr: args.addrs[0].clone(),
            prefix,
            trust,
            count: args.count,
            secs: args.secs,
            server_pid: args.server_pids.first().copied(),
            deadline,
        };
        let result = attacker.run(attack);
        let _ = std::fs::remove_file(&throwaway);
        return print_json(result);
    }
    let hoarding = args.hoard;
    let mode = if let Some(messages) = args.latency {
        Mode::Latency { messages }
    } else if let Some(sessions) = args.idle {
        Mode::Idle { sessions }
    } else if let Some(clients) = args.storm {
        Mode::Storm { clients }
    } else if let Some(size) = args.file {
        Mode::File {
            size,
            members: if args.to == "group" { 10 } else { 1 },
        }
    } else {
        Mode::FanOut(FanOut {
            members: args.members,
            senders: args.senders,
            messages: args.messages.unwrap_or(2000),
            size: args.size,
            window: args.window,
            loops: args.loops,
            sender_loop: args.sender_loop,
        })
    };
    let opts = Options {
        addrs: args.addrs,
        trust,
        mode,
        prefix,
        deadline,
        server_pids: args.server_pids,
        engine_pids: args.engine_pids,
        sample: args.sample,
    };
    if hoarding {
        let result = hoard::hoard(&opts, args.messages.unwrap_or(3000));
        let _ = std::fs::remove_file(&throwaway);
        return print_json(result);
    }
    let result = run(&opts);
    let _ = std::fs::remove_file(&throwaway);
    match result {
        Ok(report) => {
            println!("{}", report.summary());
            println!("{}", report.json());
            if report.complete() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "loadgen: {} of {} expected arrived",
                    report.deliveries, report.expected
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends a mode that reports one JSON object (its summary already printed).
fn print_json(result: Result<serde_json::Value, modes::LoadError>) -> ExitCode {
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
