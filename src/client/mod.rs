//! The client side of labgate, for CI jobs and scripts: `labgate run` (hold the lab for
//! exactly the length of one command) and `labgate session new|status|heartbeat|end`.
//! It speaks contract §1 (and §7's long-poll when the server has it) over HTTP, so it
//! works against labgate and against the neops-remote-lab server alike.
//!
//! Owns the command-line arguments of those subcommands and their exit codes. Must
//! never touch the server's state other than through the HTTP API.
//!
//! - [`http`]: one method per API request, typed errors, connection retries.
//! - [`run`]: the `labgate run` sequence.
//! - [`child`]: CMD as a child process, signals, exit codes.
//! - [`progress`]: the waiting line and messages on stderr.
//! - [`watch`]: signals, the wait deadline and the waiting line around a wait.

pub mod child;
pub mod http;
pub mod progress;
pub mod run;
pub mod watch;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use http::{ClientError, LabClient};

/// Exit codes (sysexits.h where one fits); the README's "CI usage" lists them.
pub mod exit {
    /// Bad arguments (a missing or malformed URL).
    pub const USAGE: u8 = 64;
    /// `labgate session ...`: the server does not know that session.
    pub const NOT_FOUND: u8 = 66;
    /// The server could not be reached, even after retrying.
    pub const UNAVAILABLE: u8 = 69;
    /// Something failed inside labgate (cannot watch signals, lost track of CMD).
    pub const SOFTWARE: u8 = 70;
    /// Try again later: the wait timed out, the session was lost (reaped or kicked),
    /// or the server refused a new session (rate limit, queue full, draining).
    pub const TEMPFAIL: u8 = 75;
    /// The server answered something the contract does not allow.
    pub const PROTOCOL: u8 = 76;
    /// CMD exists but could not be started.
    pub const CMD_NOT_EXECUTABLE: u8 = 126;
    /// CMD was not found.
    pub const CMD_NOT_FOUND: u8 = 127;
}

/// Where the server is, and how long to keep trying to reach it.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The labgate URL, e.g. http://lab-host:8080 [env: LAB_URL].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Keep retrying a server that cannot be reached for this long.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    connect_retry: Duration,
}

impl ServerArgs {
    /// `--url`, else `LAB_URL`. (Read by hand: clap refuses required global args.)
    fn url(&self) -> Result<String, String> {
        match &self.url {
            Some(u) => Ok(u.clone()),
            None => std::env::var("LAB_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| "no server URL: pass --url or set LAB_URL".to_string()),
        }
    }
}

/// `labgate run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Give up (exit 75, CMD not run) if the lab is not ours within this long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    wait_timeout: Option<Duration>,
    /// Heartbeat interval while CMD runs [default: a third of the server's active
    /// timeout, or 100s if it does not say].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    heartbeat: Option<Duration>,
    /// After SIGTERM (session lost) or a passed-on signal, SIGKILL CMD if it is still
    /// running this much later.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    kill_after: Duration,
    /// Print only errors.
    #[arg(long, short)]
    quiet: bool,
    /// The command to run while holding the lab.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// `labgate session`.
#[derive(Args, Debug)]
pub struct SessionArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print the server's JSON instead of plain text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: SessionAction,
}

#[derive(Subcommand, Debug)]
enum SessionAction {
    /// Open a session; prints its id.
    New,
    /// Prints "active 0" or "waiting N" (N = sessions ahead).
    Status { id: String },
    /// Keeps a session alive.
    Heartbeat { id: String },
    /// Ends a session (the next one is promoted at once).
    End { id: String },
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. \"30s\", \"10m\")"))
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        Duration::ZERO => Err("must be more than zero".to_string()),
        d => Ok(d),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("labgate: cannot start the async runtime: {e}");
            ExitCode::from(exit::SOFTWARE)
        })
}

/// `labgate run`: the process exit code.
pub fn run_command(args: RunArgs) -> ExitCode {
    let url = match args.server.url() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("labgate: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = run::RunOptions {
        url,
        wait_timeout: args.wait_timeout,
        heartbeat: args.heartbeat,
        kill_after: args.kill_after,
        connect_retry: args.server.connect_retry,
        quiet: args.quiet,
        command: args.command,
    };
    ExitCode::from(rt.block_on(run::run(opts)))
}

/// `labgate session ...`: the process exit code.
pub fn session_command(args: SessionArgs) -> ExitCode {
    let client = match args
        .server
        .url()
        .and_then(|u| LabClient::new(&u, args.server.connect_retry))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labgate: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(session(&client, &args.action, args.json)) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("labgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What `labgate session` prints on success.
async fn session(
    client: &LabClient,
    action: &SessionAction,
    json: bool,
) -> Result<String, ClientError> {
    // 204 answers have no body: with --json, say what happened in the same shape.
    let done = |id: &str, what: &str| {
        if json {
            serde_json::json!({ "session_id": id, "result": what }).to_string()
        } else {
            String::new()
        }
    };
    Ok(match action {
        SessionAction::New => {
            let c = client.create().await?;
            if json {
                c.body
            } else {
                c.id
            }
        }
        SessionAction::Status { id } => {
            let s = client.status(id, None).await?;
            match (json, s.active) {
                (true, _) => s.body,
                (false, true) => format!("active {}", s.position),
                (false, false) => format!("waiting {}", s.position),
            }
        }
        SessionAction::Heartbeat { id } => {
            client.heartbeat(id).await?;
            done(id, "alive")
        }
        SessionAction::End { id } => {
            client.end(id).await?;
            done(id, "ended")
        }
    })
}
