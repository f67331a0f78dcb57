//! The `labgate` command: parses the CLI, loads the config, runs the server. No logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use labgate::config::Config;

#[derive(Parser)]
#[command(
    name = "labgate",
    version,
    about = "FIFO session gate for shared lab hardware"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate a config file and exit.
    Check {
        #[arg(long, short, env = "LABGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Operate a running labgate over its admin socket.
    Admin {
        /// The admin socket. Default: the config's [admin] socket with --config, else
        /// /run/labgate/admin.sock (root, services) or
        /// $XDG_RUNTIME_DIR/labgate/admin.sock (a logged-in user), as `serve` does.
        #[arg(long, env = "LABGATE_ADMIN_SOCKET")]
        socket: Option<PathBuf>,
        /// Read the socket from this config file's [admin] section (--socket wins).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: labgate::admin::Action,
    },
    /// Hold the lab for exactly the length of one command: labgate run --url URL -- CMD...
    Run(labgate::client::RunArgs),
    /// Open, inspect, keep alive or end a session (for scripts).
    Session(labgate::client::SessionArgs),
    /// Reach a lab device through labgate: --stdio HOST:PORT (ssh ProxyCommand) or -L.
    Tunnel(labgate::client::TunnelArgs),
    /// Print ssh config Host blocks for the devices this session may reach.
    SshConfig(labgate::client::SshConfigArgs),
    /// Who holds the lab and who waits, with owners, notes and expected starts (the
    /// status page as a table); your own row marked when LAB_SESSION_ID is set.
    Status(labgate::client::StatusArgs),
    /// Serve only the fake lab API used by the walk-through.
    DemoLab {
        #[arg(long, default_value = "127.0.0.1:9181")]
        listen: SocketAddr,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Print a shell completion script: labgate completions bash > /etc/bash_completion.d/labgate
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): labgate man | man -l -
    Man,
}

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_CONFIG: &str = "/etc/labgate/labgate.toml";

#[derive(Args)]
struct ServeArgs {
    /// The TOML config file.
    #[arg(long, short, env = "LABGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct LogArgs {
    /// Log format (pretty is coloured only on a terminal, and never with NO_COLOR set).
    #[arg(long, value_enum, env = "LABGATE_LOG_FORMAT", default_value = "pretty")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn init_logging(format: LogFormat) {
    labgate::logging::init(match format {
        LogFormat::Pretty => labgate::logging::Format::Pretty,
        LogFormat::Json => labgate::logging::Format::Json,
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands have exit codes of their own (see src/client).
    let cli = match cli.command {
        Some(Command::Run(args)) => return labgate::client::run_command(args),
        Some(Command::Session(args)) => return labgate::client::session_command(args),
        Some(Command::Tunnel(args)) => return labgate::client::tunnel_command(args),
        Some(Command::SshConfig(args)) => return labgate::client::ssh_config_command(args),
        Some(Command::Status(args)) => return labgate::client::status_command(args),
        command => Cli { command, ..cli },
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Check { config }) => {
            let c = Config::load(&config)?;
            if let Some(first) = labgate::server::start_problems(&c).first() {
                anyhow::bail!("{}: {first}", config.display());
            }
            // `serve` raises the soft limit up to the hard one; beyond that it refuses.
            let budget = labgate::fdbudget::need(&c);
            let limit = labgate::fdbudget::check(budget)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            for warning in c.warnings() {
                eprintln!("labgate: warning: {}: {warning}", config.display());
            }
            println!(
                "{}: ok ({} upstream(s), {} route(s), listening on {:?}, metrics on {})",
                config.display(),
                c.upstreams.len(),
                c.routes.len(),
                c.server.listen,
                c.metrics.listen
            );
            if let Some(socket) = &c.admin_socket {
                println!("  admin socket {}", socket.display());
            }
            // What device tunnels may reach (issue 11), max and timeouts included.
            print!("{}", c.tunnels.allowlist);
            println!(
                "  at most {} open tunnel(s) per session; connect timeout {}; keepalive {}",
                c.tunnels.max_per_session,
                humantime::format_duration(c.tunnels.connect_timeout),
                humantime::format_duration(c.tunnels.keepalive)
            );
            let raise = if limit.soft < budget.total() {
                format!(" (serve raises the soft limit to {})", budget.total())
            } else {
                String::new()
            };
            println!("  needs {budget}; open-file limit here: {limit}{raise}");
            Ok(())
        }
        Some(Command::Admin {
            socket,
            config,
            json,
            action,
        }) => {
            let socket = labgate::admin::cli::socket_path(socket, config.as_deref())?;
            labgate::admin::run_cli(&socket, json, action)
        }
        Some(Command::DemoLab { listen, log }) => {
            init_logging(log.log_format);
            labgate::server::run_demo_lab(listen)
        }
        Some(Command::Completions { shell }) => {
            // Into a buffer first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "labgate", &mut script);
            print_out(&script)
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_out(&page)
        }
        Some(
            Command::Run(_)
            | Command::Session(_)
            | Command::Tunnel(_)
            | Command::SshConfig(_)
            | Command::Status(_),
        ) => unreachable!("handled in main"),
    }
}

/// Writes generated text to stdout; a closed pipe is an error, not a panic.
fn print_out(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log.log_format);
    let config = Config::load(&args.config)?;
    labgate::server::run(config, &args.config).context("labgate failed")
}
