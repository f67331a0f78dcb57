//! The `labgate` command: parses the CLI, loads the config, runs the server. No logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
        /// The admin socket ([admin] socket in the config).
        #[arg(
            long,
            env = "LABGATE_ADMIN_SOCKET",
            default_value = "/run/labgate/admin.sock"
        )]
        socket: PathBuf,
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
}

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
    /// Log format.
    #[arg(long, value_enum, env = "LABGATE_LOG_FORMAT", default_value = "pretty")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LABGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second subscriber (never expected) must not abort the process.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
            if let Some(first) = c.missing_dirs().first() {
                anyhow::bail!("{}: {first}", config.display());
            }
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
            // What device tunnels may reach (issue 11), max and timeouts included.
            print!("{}", c.tunnels.allowlist);
            println!(
                "  at most {} open tunnel(s) per session; connect timeout {}; keepalive {}",
                c.tunnels.max_per_session,
                humantime::format_duration(c.tunnels.connect_timeout),
                humantime::format_duration(c.tunnels.keepalive)
            );
            Ok(())
        }
        Some(Command::Admin {
            socket,
            json,
            action,
        }) => labgate::admin::run_cli(&socket, json, action),
        Some(Command::DemoLab { listen, log }) => {
            init_logging(log.log_format);
            labgate::server::run_demo_lab(listen)
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log.log_format);
    let config = Config::load(&args.config)?;
    labgate::server::run(config).context("labgate failed")
}
