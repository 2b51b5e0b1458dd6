//! `server [ADDR] [flags]`: runs the muchat server. Every flag is also read
//! from the environment variable `--help` names.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use muchat::server::{Config, Server};

/// Runs the muchat chat server.
///
/// Logs connections, logins, failed logins (with the client's address) and
/// closes to standard error; RUST_LOG sets the level (default: info), e.g.
/// RUST_LOG=debug or RUST_LOG=muchat=warn.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on (0.0.0.0:9000 for every interface, port 0 for
    /// any free port)
    #[arg(env = "MUCHAT_LISTEN", default_value = "127.0.0.1:9000")]
    addr: String,

    /// Print this server's key fingerprint (creating the key, in the data
    /// directory or at --key-file, if needed) and exit
    #[arg(long)]
    fingerprint: bool,

    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Copies a data directory (stop its server first) into an empty
    /// PostgreSQL database, for servers started with --database-url
    Migrate {
        /// The data directory to copy
        #[arg(long, value_name = "DIR")]
        from_data_dir: std::path::PathBuf,
        /// The PostgreSQL database to copy it into
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database_url: String,
    },
}

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
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Some(Command::Migrate {
        from_data_dir,
        database_url,
    }) = &args.command
    {
        return match muchat::store::migrate::sqlite_to_postgres(from_data_dir, database_url) {
            Ok(copied) => {
                println!("copied {}: {copied}", from_data_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("server migrate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.fingerprint {
        return match muchat::identity::load_or_create(&args.config.key_path()) {
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
    let listener = match TcpListener::bind(&args.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("server: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    // SIGTERM and SIGINT stop the server cleanly; registered before the
    // server starts, so no signal can find it half-installed.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("server: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(listener, args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(fingerprint = %server.fingerprint(), "key");
    tracing::info!(addr = %server.local_addr(), "listening");
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "stopping: telling every client, finishing writes");
    }
    // Stops accepting, says BYE to every connection, commits what is in
    // flight and waits for the connections to wind down.
    server.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
