//! `loadgen HOST:PORT [mode] [flags]`: drives a muchat server with real
//! protocol traffic and reports throughput, latency and CPU.

use std::process::ExitCode;
use std::time::Duration;

use muchat::loadgen::{fresh_prefix, run, tdes_mb_per_s, Mode, Options};

const USAGE: &str = "\
usage: loadgen HOST:PORT [mode] [flags]

Modes (default: fan-out):
  --members N --senders S --messages M --size B [--window W]
        fan-out: N clients in one group, S of them send M messages of B bytes
        (defaults 50, 1, 2000, 100; W requests in flight per sender, default 64)
  --idle N          hold N logged-in sessions; report server RSS per session
                    (needs --server-pid) and one probe message's latency
    --storm N         N clients connect, handshake and log in at once
  --cipher          measure the des crate's single-core 3DES-CBC MB/s and exit
  --file BYTES [--to user|group]
                    one file to a user, or to a group of 10 (--to group)

Flags:
  --server-pid PID  report the server's CPU seconds (and RSS for --idle)
  --deadline SECS   hard limit for the run (default 120)
  --sample N        decrypt every N-th body per receiver as a latency probe (default 50)
  --prefix P        account name prefix (default: fresh per run)

Prints a summary and one JSON line; exits 1 if any delivery is missing.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if matches!(
        args.peek().map(String::as_str),
        None | Some("-h" | "--help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let addr_text = args.next().unwrap_or_default();
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(addr_text.as_str())
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => return usage_error(&format!("cannot resolve {addr_text}")),
    };
    let (mut members, mut senders, mut messages, mut size, mut window) = (50, 1, 2000, 100, 64);
    let mut mode = None;
    let mut to_group = false;
    let mut opts = Options {
        addr,
        mode: Mode::Storm { clients: 0 },
        prefix: fresh_prefix(),
        deadline: Duration::from_secs(120),
        server_pid: None,
        sample: 50,
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        let step = match flag.as_str() {
            "--members" => value("--members").map(|v| members = v as usize),
            "--senders" => value("--senders").map(|v| senders = v as usize),
            "--messages" => value("--messages").map(|v| messages = v as usize),
            "--size" => value("--size").map(|v| size = v as usize),
            "--window" => value("--window").map(|v| window = v as usize),
            "--cipher" => {
                println!(
                    "3DES-CBC (des crate, one core): {:.2} MB/s",
                    tdes_mb_per_s(32 << 20)
                );
                return ExitCode::SUCCESS;
            }
            "--idle" => value("--idle").map(|v| {
                mode = Some(Mode::Idle {
                    sessions: v as usize,
                })
            }),
            "--storm" => value("--storm").map(|v| {
                mode = Some(Mode::Storm {
                    clients: v as usize,
                })
            }),
            "--file" => value("--file").map(|v| {
                mode = Some(Mode::File {
                    size: v,
                    members: 1,
                })
            }),
            "--to" => match args.next().as_deref() {
                Some(t @ ("group" | "user")) => {
                    to_group = t == "group";
                    Ok(())
                }
                _ => Err("--to takes user or group".to_string()),
            },
            "--server-pid" => value("--server-pid").map(|v| opts.server_pid = Some(v as u32)),
            "--deadline" => value("--deadline").map(|v| opts.deadline = Duration::from_secs(v)),
            "--sample" => value("--sample").map(|v| opts.sample = v as usize),
            "--prefix" => match args.next() {
                Some(p) => {
                    opts.prefix = p;
                    Ok(())
                }
                None => Err("--prefix needs a value".to_string()),
            },
            other => Err(format!("unknown flag {other}")),
        };
        if let Err(e) = step {
            return usage_error(&e);
        }
    }
    opts.mode = match mode {
        Some(Mode::File { size, .. }) => Mode::File {
            size,
            members: if to_group { 10 } else { 1 },
        },
        Some(m) => m,
        None => Mode::FanOut {
            members,
            senders,
            messages,
            size,
            window,
        },
    };
    match run(&opts) {
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

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("loadgen: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
