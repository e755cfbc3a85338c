//! The `switchyard` command.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::{self, Config};
use switchyard::telemetry::{self, LogFormat};

/// An edge reverse proxy with client-side load balancing.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The config file.
    #[arg(short, long, global = true, default_value = "proxy.yaml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `info,switchyard::access=off`);
    /// `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Check a config file and print every problem found (like `nginx -t`).
    Check,
    /// Start three echo upstreams on loopback and the proxy in front of them.
    Demo,
}

/// The proxy.yaml shipped with switchyard, used by `demo` when no file is
/// found.
const SHIPPED_CONFIG: &str = include_str!("../proxy.yaml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run | Command::Demo => {
            if let Err(error) = telemetry::init(cli.log_format, &cli.log_level) {
                eprintln!("switchyard: {error}");
                return ExitCode::FAILURE;
            }
            let demo = matches!(cli.command, Some(Command::Demo));
            match run(&cli.config, demo) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("switchyard: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok((config, _)) => {
            let instances: usize = config.services.values().map(|s| s.instances.len()).sum();
            println!(
                "{}: ok ({} listener(s), {} route(s), {} service(s), {} instance(s))",
                path.display(),
                config.listeners.len(),
                config.routes.len(),
                config.services.len(),
                instances
            );
            ExitCode::SUCCESS
        }
        Err(config::LoadError::Invalid { errors, .. }) => {
            eprintln!("{}: {} problem(s) found", path.display(), errors.0.len());
            for error in &errors.0 {
                eprintln!("  {error}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("switchyard: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, demo: bool) -> anyhow::Result<()> {
    let config = if demo && !path.exists() {
        tracing::info!(
            "{} not found; using the shipped demo config",
            path.display()
        );
        config::parse(SHIPPED_CONFIG).context("the shipped proxy.yaml is invalid")?
    } else {
        config::load(path)?.0
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if demo {
            start_demo_upstreams(&config).await?;
        }
        let running = switchyard::server::start(config.clone()).await?;
        if demo {
            print_demo_help(&config, &running);
        }
        wait_for_shutdown_signal().await?;
        tracing::info!(drain_timeout = ?config.drain_timeout, "shutting down: no new connections, draining in-flight requests");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn start_demo_upstreams(config: &Config) -> anyhow::Result<()> {
    let mut started = BTreeSet::new();
    for service in config.services.values() {
        for instance in &service.instances {
            if started.insert(instance.address) {
                switchyard::demo::start_echo(instance.id.as_str(), instance.address)
                    .await
                    .with_context(|| {
                        format!("cannot start demo upstream on {}", instance.address)
                    })?;
                tracing::info!(instance = %instance.id, address = %instance.address, "demo upstream started");
            }
        }
    }
    Ok(())
}

fn print_demo_help(config: &Config, running: &switchyard::server::Running) {
    let Some(listener) = running.listeners().first() else {
        return;
    };
    let base = format!("http://{}", listener.address);
    println!("\nswitchyard demo is running. Try:\n");
    for route in &config.routes {
        let host = match &route.host {
            config::HostMatch::Any => String::new(),
            config::HostMatch::Exact(host) => format!(" -H 'Host: {host}'"),
            config::HostMatch::Suffix(suffix) => format!(" -H 'Host: demo{suffix}'"),
        };
        println!(
            "  curl{host} {base}{}        # service {}",
            route.path_prefix, route.service
        );
    }
    println!("  for i in 1 2 3 4 5 6; do curl -s {base}/ | head -1; done   # watch the rotation");
    println!(
        "  curl http://{}/admin/status   # the admin API\n",
        running.admin_address()
    );
    println!("Stop with Ctrl-C.\n");
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => {
                tracing::warn!("SIGHUP received; live reload is not available in this version, restart to apply changes");
            }
        }
    }
}
