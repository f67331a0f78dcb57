//! The client side of labgate, for CI jobs and scripts: `labgate run` (hold the lab for
//! exactly the length of one command), `labgate session new|status|heartbeat|end`, and
//! device tunnels: `labgate tunnel --stdio|-L` and `labgate ssh-config`.
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
//! - [`tls`]: whom an `https://` labgate must prove itself to (`--ca`, `LAB_CA`).
//! - [`tunnel`]: one device tunnel (WebSocket to `/lab/tunnel/{target}`), the target syntax.
//! - [`forward`]: `-L` forwards for `labgate tunnel` and `labgate run`, and CMD's view of them.
//! - [`tunnel_cmd`]: the `labgate tunnel` and `labgate ssh-config` commands.
//! - [`ssh_config`]: the `Host` blocks `labgate ssh-config` prints.
//! - [`status`]: `labgate status`, the public queue view as a table.

pub mod child;
pub mod forward;
pub mod http;
pub mod progress;
pub mod run;
pub mod ssh_config;
pub mod status;
pub mod tls;
pub mod tunnel;
pub mod tunnel_cmd;
pub mod watch;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use http::{ClientError, LabClient};
pub use status::{status_command, StatusArgs};

/// Exit codes (sysexits.h where one fits); the README's "CI usage" lists them.
pub mod exit {
    /// Success (`labgate tunnel --stdio`: the connection ended normally).
    pub const OK: u8 = 0;
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
    /// A local port for `-L` could not be listened on.
    pub const OSERR: u8 = 71;
    /// The server answered something the contract does not allow.
    pub const PROTOCOL: u8 = 76;
    /// `labgate tunnel`: the target is not one labgate allows.
    pub const NOPERM: u8 = 77;
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
    /// For an https:// URL: trust exactly this PEM CA file instead of the system's
    /// CA store (`labgate run` passes it on to CMD as LAB_CA).
    #[arg(long, global = true, env = "LAB_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
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
    /// While CMD runs, forward [BIND:]LPORT (127.0.0.1 unless BIND; 0 = any free
    /// port) to HOST:PORT through labgate, like ssh -L; repeatable. CMD finds each in
    /// LAB_FORWARD_<HOST>_<PORT>=ADDR:PORT (HOST upper-cased, other characters
    /// than A-Z 0-9 as _) and all in LAB_FORWARDS="HOST:PORT=ADDR:PORT ...".
    #[arg(short = 'L', long = "forward", value_name = "[BIND:]LPORT:HOST:PORT")]
    forward: Vec<forward::ForwardSpec>,
    /// At most this many forwarded connections at once (more are closed at once).
    #[arg(long, value_name = "N", default_value_t = forward::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u16).range(1..))]
    max_connections: u16,
    /// Print only errors.
    #[arg(long, short)]
    quiet: bool,
    /// Who holds the lab, as the status page and `labgate status` show it (a claim,
    /// at most 64 characters; '' sends none) [default: USER@HOST].
    #[arg(long, value_name = "TEXT")]
    owner: Option<String>,
    /// Why, shown beside the owner (at most 200 characters; '' sends none) [default:
    /// the CI job's URL, from GitHub Actions, GitLab, Buildkite or Jenkins variables].
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
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

/// The session a tunnel belongs to: `--url`/`--session`, else `LAB_URL`/`LAB_SESSION_ID`
/// (what `labgate run` exports to CMD).
#[derive(Args, Debug)]
pub struct TunnelSession {
    /// The labgate URL, e.g. http://lab-host:8080 [env: LAB_URL].
    #[arg(long)]
    url: Option<String>,
    /// The session id [env: LAB_SESSION_ID].
    #[arg(long)]
    session: Option<String>,
    /// For an https:// URL: trust exactly this PEM CA file instead of the system's
    /// CA store.
    #[arg(long, env = "LAB_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
}

impl TunnelSession {
    /// (URL, session id), each from its flag, else from its variable.
    fn resolve(&self) -> Result<(String, String), String> {
        let from = |flag: &Option<String>, var: &str, what: &str| match flag {
            Some(v) => Ok(v.clone()),
            None => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("no {what}: pass --{what} or set {var}")),
        };
        Ok((
            from(&self.url, "LAB_URL", "url")?,
            from(&self.session, "LAB_SESSION_ID", "session")?,
        ))
    }
}

/// `labgate tunnel`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["stdio", "forward"])))]
pub struct TunnelArgs {
    #[command(flatten)]
    session: TunnelSession,
    /// Carry stdin/stdout through one tunnel to HOST:PORT, for ssh:
    /// -o ProxyCommand='labgate tunnel --stdio %h:%p'. HOST is a device name or an
    /// IP address.
    #[arg(long, value_name = "HOST:PORT", value_parser = tunnel::Target::parse, conflicts_with = "forward")]
    stdio: Option<tunnel::Target>,
    /// Forward [BIND:]LPORT (127.0.0.1 unless BIND; 0 = any free port) to
    /// HOST:PORT, like ssh -L; repeatable. Each connection opens one tunnel. Runs
    /// until the session ends (exit 75) or a signal.
    #[arg(short = 'L', long = "forward", value_name = "[BIND:]LPORT:HOST:PORT")]
    forward: Vec<forward::ForwardSpec>,
    /// At most this many forwarded connections at once (more are closed at once).
    #[arg(long, value_name = "N", default_value_t = forward::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u16).range(1..))]
    max_connections: u16,
    /// Raw tunnels (Upgrade: labgate-tcp) instead of WebSockets: about a third of labgate's
    /// CPU for bulk transfers; needs a direct connection or a front proxy that relays
    /// any Upgrade.
    #[arg(long)]
    raw: bool,
    /// Print only errors.
    #[arg(long, short)]
    quiet: bool,
}

/// `labgate ssh-config`.
#[derive(Args, Debug)]
pub struct SshConfigArgs {
    #[command(flatten)]
    session: TunnelSession,
    /// Write this session's --url and --session into each ProxyCommand (a config
    /// for this session only) instead of relying on LAB_URL and LAB_SESSION_ID.
    #[arg(long)]
    pin: bool,
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
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| (name == "USER").then(run::user_name).flatten())
    };
    let label = match run::label_for(
        args.owner.as_deref(),
        args.note.as_deref(),
        &env,
        run::host_name().as_deref(),
    ) {
        Ok(l) => l,
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
        label,
        url,
        wait_timeout: args.wait_timeout,
        heartbeat: args.heartbeat,
        kill_after: args.kill_after,
        connect_retry: args.server.connect_retry,
        trust: tls::Trust::new(args.server.ca),
        quiet: args.quiet,
        command: args.command,
        forwards: args.forward,
        max_connections: usize::from(args.max_connections),
    };
    ExitCode::from(rt.block_on(run::run(opts)))
}

/// `labgate session ...`: the process exit code.
pub fn session_command(args: SessionArgs) -> ExitCode {
    let client = match args.server.url().and_then(|u| {
        let trust = tls::Trust::new(args.server.ca.clone());
        LabClient::new(&u, args.server.connect_retry, &trust)
    }) {
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
            let c = client.create(&crate::label::Label::default()).await?;
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

/// `labgate tunnel`: the process exit code.
pub fn tunnel_command(args: TunnelArgs) -> ExitCode {
    let progress = progress::Progress::new(args.quiet);
    let prepared = args.session.resolve().and_then(|(url, id)| {
        let trust = tls::Trust::new(args.session.ca.clone());
        let mut dialer = tunnel::Dialer::new(&url, &id, &trust)?;
        if args.raw {
            dialer = dialer.raw(&url, &trust)?;
        }
        // Only -L asks the session API (GET /tunnels); no retries: the user is there.
        let client = LabClient::new(&url, Duration::ZERO, &trust)?;
        Ok((client, dialer, id))
    });
    let (client, dialer, id) = match prepared {
        Ok(p) => p,
        Err(e) => {
            progress.error(&e);
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = rt.block_on(async {
        match &args.stdio {
            Some(target) => tunnel_cmd::stdio(&dialer, target, &progress).await,
            None => {
                tunnel_cmd::forward(
                    &client,
                    dialer,
                    &args.forward,
                    usize::from(args.max_connections),
                    &progress,
                    &id,
                )
                .await
            }
        }
    });
    // tokio's stdin reads in a blocking thread that may be stuck in read(2): do not
    // wait for it.
    rt.shutdown_background();
    ExitCode::from(code)
}

/// `labgate ssh-config`: the process exit code.
pub fn ssh_config_command(args: SshConfigArgs) -> ExitCode {
    let prepared = args.session.resolve().and_then(|(url, id)| {
        let trust = tls::Trust::new(args.session.ca.clone());
        let client = LabClient::new(&url, Duration::from_secs(10), &trust)?;
        Ok((client, id))
    });
    let (client, id) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("labgate: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(tunnel_cmd::ssh_config(&client, &id, args.pin)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("labgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
