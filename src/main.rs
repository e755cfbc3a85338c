//! The `switchyard` command.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use http::Method;
use switchyard::config::history::ChangeSource;
use switchyard::config::{self, Config};
use switchyard::server::{LiveOptions, Running};
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
    Run(RunArgs),
    /// Check a config file offline and print every problem found (like
    /// `nginx -t`); `--connect` also tests the Consul and etcd connections.
    Check(CheckArgs),
    /// Start echo upstreams on loopback and the proxy in front of them.
    Demo,
    /// Look at and roll back the config history of a running proxy; push
    /// a new version to its fleet.
    Config(ConfigArgs),
    /// Look at the fleet a running proxy belongs to.
    Fleet(FleetArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Also test that the Consul agent and the fleet's etcd (when the
    /// config uses them) answer.
    #[arg(long)]
    connect: bool,
}

#[derive(clap::Args)]
struct FleetArgs {
    /// The admin API address (default: `admin.address` of the config file).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The admin token (default: `SWITCHYARD_ADMIN_TOKEN`, then the config
    /// file's admin token).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: FleetAction,
}

#[derive(Subcommand)]
enum FleetAction {
    /// Every node: the version it serves, what it refused, last contact
    /// with etcd, the revision it has seen, stale or not.
    Status,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where config versions are kept (default: `<config>.versions` next to
    /// the config file).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How many config versions to keep.
    #[arg(long, default_value_t = switchyard::config::history::DEFAULT_RETENTION)]
    keep_versions: usize,
    /// Do not reload when the config file changes (SIGHUP and the admin API
    /// still reload).
    #[arg(long)]
    no_watch: bool,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            state_dir: None,
            keep_versions: switchyard::config::history::DEFAULT_RETENTION,
            no_watch: false,
        }
    }
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The admin API address (default: `admin.address` of the config file).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The admin token (default: `SWITCHYARD_ADMIN_TOKEN`, then the config
    /// file's admin token).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// List the config versions.
    Versions,
    /// Print the YAML of a version.
    Show {
        /// The version number.
        version: u64,
    },
    /// Show what changed from version A to version B (default: current).
    Diff {
        /// The older version.
        from: u64,
        /// The newer version (default: the one serving now).
        to: Option<u64>,
    },
    /// Make an earlier version current again (recorded as a new version).
    Rollback {
        /// The version to restore.
        version: u64,
        /// End a running config guard early (keeping its change) instead
        /// of being refused.
        #[arg(long)]
        force: bool,
    },
    /// Write FILE as the proxy's config and apply it; with --guard, watch
    /// the traffic for --for and restore the previous version if a guard
    /// trips. Exit code 0: kept; 3: rolled back.
    Apply {
        /// The YAML to apply.
        file: PathBuf,
        /// A guard, e.g. `error_rate < 1%`, `web: p99 < 300ms`,
        /// `p99 < 1.5x baseline`, `error_rate < baseline + 0.5%`
        /// (repeatable).
        #[arg(long = "guard", value_name = "EXPR")]
        guards: Vec<String>,
        /// How long the guards watch (default 60s).
        #[arg(long = "for", value_name = "DURATION")]
        window: Option<String>,
        /// Fewest requests in the window for a verdict (default 100).
        #[arg(long)]
        min_requests: Option<u64>,
        /// End a running config guard early (keeping its change) instead
        /// of being refused.
        #[arg(long)]
        force: bool,
    },
    /// Validate FILE and push it to the fleet as the next version (fleet
    /// mode); every node applies it.
    Push {
        /// The YAML to push (the shared config, without the node-local
        /// `fleet`, `admin` and `workers` sections).
        file: PathBuf,
        /// Refuse unless this version is still the current one.
        #[arg(long)]
        base: Option<u64>,
    },
}

// mimalloc: the request path allocates small, short-lived buffers on every
// request (hyper's read and write buffers, header values); glibc malloc
// showed up as ~4% of the proxy's CPU in profiles, mimalloc halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The proxy.yaml shipped with switchyard, used by `demo` when no file is
/// found.
const SHIPPED_CONFIG: &str = include_str!("../proxy.yaml");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Check(args)) => return check(&cli.config, args.connect),
        Some(Command::Config(args)) => {
            match runtime().and_then(|rt| rt.block_on(config_command(&cli.config, args))) {
                Ok(code) => return code,
                Err(error) => Err(error),
            }
        }
        Some(Command::Fleet(args)) => {
            runtime().and_then(|rt| rt.block_on(fleet_command(&cli.config, args)))
        }
        command => {
            let _log_writer = match telemetry::init(cli.log_format, &cli.log_level) {
                Ok(guard) => guard,
                Err(error) => {
                    eprintln!("switchyard: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let default = RunArgs::default();
            let (args, demo) = match command {
                Some(Command::Run(args)) => (args, false),
                Some(Command::Demo) => (&default, true),
                _ => (&default, false),
            };
            let result = run(&cli.config, args, demo);
            if let Err(error) = &result {
                tracing::error!("{}", config::one_line(&describe(error)));
            }
            result
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchyard: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: our own error
/// types already end their message with their cause.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &Path, connect: bool) -> ExitCode {
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
            for warning in switchyard::traffic::matcher::route_warnings(&config.routes) {
                println!("{warning}");
            }
            check_dns(&config);
            // Offline by default, like `nginx -t`: a valid file is valid
            // whether or not Consul and etcd answer right now.
            if !connect {
                return ExitCode::SUCCESS;
            }
            if let Some(fleet) = &config.fleet {
                if !check_etcd(fleet) {
                    return ExitCode::FAILURE;
                }
            }
            let Some(consul) = &config.consul else {
                return ExitCode::SUCCESS;
            };
            let leader = runtime()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(switchyard::discovery::consul::leader(consul)));
            match leader {
                Ok(leader) => {
                    println!("consul at {}: ok (leader {leader})", consul.address);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("consul at {}: {error}", consul.address);
                    ExitCode::FAILURE
                }
            }
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

/// Resolves every instance host name once and warns about those that do
/// not resolve now. Never a failure: the proxy starts anyway, and the
/// instances appear when the name resolves.
fn check_dns(config: &config::Config) {
    use switchyard::discovery::dns::{self, Resolution};
    let named: Vec<(String, &config::NamedInstance)> = config
        .services
        .iter()
        .flat_map(|(name, service)| {
            service
                .named
                .iter()
                .map(move |entry| (format!("services.{name}.instances"), entry))
        })
        .collect();
    if named.is_empty() {
        return;
    }
    let outcome = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let resolver = dns::resolver(&config.dns)?;
            let mut lines = Vec::new();
            for (path, entry) in &named {
                let line = match dns::resolve(&resolver, &entry.host).await {
                    Resolution::Found(addresses, _) => {
                        println!("{path}: {} resolves to {} address(es)", entry.host, addresses.len());
                        continue;
                    }
                    Resolution::Gone => format!("{path}: warning: `{}` does not resolve (no such name, or no A/AAAA record); its instances appear when it does", entry.host),
                    Resolution::Failed(error) => format!("{path}: warning: cannot resolve `{}` now ({error}); its instances appear when it resolves", entry.host),
                };
                lines.push(line);
            }
            Ok::<_, String>(lines)
        })
    });
    match outcome {
        Ok(lines) => lines.iter().for_each(|line| eprintln!("{line}")),
        Err(error) => eprintln!("dns: warning: {error}"),
    }
}

/// Whether the fleet's etcd answers; says what it has.
fn check_etcd(fleet: &config::FleetConfig) -> bool {
    let endpoints = fleet.etcd.endpoints.join(", ");
    let answer = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let store = switchyard::fleet::store::connect(fleet).await?;
            store.current().await
        })
        .map_err(|e| e.to_string())
    });
    match answer {
        Ok(Some(current)) => {
            println!(
                "etcd at {endpoints}: ok (fleet {} at version {}, node {})",
                fleet.prefix, current.version.info.version, fleet.node
            );
            true
        }
        Ok(None) => {
            println!(
                "etcd at {endpoints}: ok (fleet {} has no version yet, node {})",
                fleet.prefix, fleet.node
            );
            true
        }
        Err(error) => {
            eprintln!("etcd at {endpoints}: {error}");
            false
        }
    }
}

fn run(path: &Path, args: &RunArgs, demo: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let running = if demo && !path.exists() {
            tracing::info!(
                "{} not found; using the shipped demo config (no live reload)",
                path.display()
            );
            let config =
                config::parse(SHIPPED_CONFIG).context("the shipped proxy.yaml is invalid")?;
            start_demo_upstreams(&config).await?;
            switchyard::server::start(config).await?
        } else {
            if demo {
                start_demo_upstreams(&config::load(path)?.0).await?;
            }
            let mut options = LiveOptions::new(path);
            options.state_dir = args.state_dir.clone();
            options.keep_versions = args.keep_versions;
            options.watch = !args.no_watch;
            switchyard::server::start_live(options).await?
        };
        if demo {
            print_demo_help(&running.registry().config(), &running);
        }
        wait_for_shutdown(&running).await?;
        let drain_timeout = running.registry().config().drain_timeout;
        tracing::info!(
            ?drain_timeout,
            "shutting down: no new connections, draining in-flight requests"
        );
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

fn print_demo_help(config: &Config, running: &Running) {
    let Some(listener) = running.listeners().into_iter().next() else {
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
        let services: Vec<&str> = route
            .policy
            .backends
            .iter()
            .map(|b| b.service.as_str())
            .collect();
        println!(
            "  curl{host} {base}{}        # service {}",
            route.path_prefix,
            services.join(", ")
        );
    }
    println!("  for i in 1 2 3 4 5 6; do curl -s {base}/ | head -1; done   # watch the rotation");
    println!(
        "  curl http://{}/admin/status   # the admin API\n",
        running.admin_address()
    );
    println!("Stop with Ctrl-C.\n");
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the config file; SIGUSR1
/// reopens the access-log file (logrotate's convention, as nginx's).
async fn wait_for_shutdown(running: &Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut user1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => match running.reloader() {
                // The outcome is logged and shown in the admin status.
                Some(reloader) => { let _ = reloader.reload(ChangeSource::Signal, "SIGHUP").await; }
                None => tracing::warn!("SIGHUP received, but this proxy runs without a config file"),
            },
            _ = user1.recv() => {
                let access_log = std::sync::Arc::clone(running.access_log());
                match tokio::task::spawn_blocking(move || access_log.reopen()).await {
                    Ok(Ok(Some(path))) => tracing::info!(path = %path.display(), "SIGUSR1: access log reopened"),
                    Ok(Ok(None)) => tracing::info!("SIGUSR1: the access log goes to stderr; nothing to reopen"),
                    Ok(Err(error)) => tracing::error!(%error, "SIGUSR1: cannot reopen the access log; still writing to the old file"),
                    Err(error) => tracing::error!(%error, "SIGUSR1: reopening the access log failed"),
                }
            },
        }
    }
}

/// The admin API to call and the token to send: `--admin`, else the config
/// file's `admin.address`; `--token` (or `SWITCHYARD_ADMIN_TOKEN`), else the
/// config file's admin token.
fn admin_target(
    path: &Path,
    admin: Option<SocketAddr>,
    token: Option<&str>,
) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let file = config::load(path).map(|(config, _)| config.admin);
    let file_token = || {
        file.as_ref()
            .ok()
            .and_then(|admin| admin.token.as_ref())
            .map(|token| token.0.clone())
    };
    let token = token.map(str::to_string).or_else(file_token);
    let address = match (admin, file) {
        (Some(address), _) => address,
        (None, Ok(admin)) => admin.address,
        (None, Err(error)) => {
            return Err(anyhow::Error::new(error)
                .context("cannot find the admin address in the config; pass --admin ADDRESS"))
        }
    };
    Ok((address, token))
}

/// One admin call; the body of a success, the errors of a failure.
async fn admin_call(
    admin: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<(&str, bytes::Bytes)>,
) -> anyhow::Result<String> {
    let (status, body) = switchyard::admin_client::call_raw(admin, method, path, token, body)
        .await
        .map_err(anyhow::Error::msg)?;
    if !status.is_success() {
        bail!("{}", failure_text(&body));
    }
    Ok(body)
}

async fn config_command(path: &Path, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let (admin, token) = admin_target(path, args.admin, args.token.as_deref())?;
    let get = |path: String| {
        let token = token.clone();
        async move { admin_call(admin, token.as_deref(), Method::GET, &path, None).await }
    };
    match &args.action {
        ConfigAction::Push { file, base } => {
            let query: Vec<String> = base.iter().map(|b| format!("base={b}")).collect();
            let json = post_config(admin, token.as_deref(), file, &query).await?;
            match json["version"].as_u64() {
                Some(version) => println!(
                    "pushed {} as version {version}; every node applies it",
                    file.display()
                ),
                None => println!(
                    "{} is the current version already; nothing pushed",
                    file.display()
                ),
            }
        }
        ConfigAction::Versions => print_versions(&get("/admin/config/versions".into()).await?)?,
        ConfigAction::Show { version } => {
            print!(
                "{}",
                get(format!("/admin/config/versions/{version}")).await?
            );
        }
        ConfigAction::Diff { from, to } => {
            let to = to.map(|to| format!("&to={to}")).unwrap_or_default();
            print_diff(&get(format!("/admin/config/diff?from={from}{to}")).await?);
        }
        ConfigAction::Rollback { version, force } => {
            let force = if *force { "?force=true" } else { "" };
            let path = format!("/admin/config/rollback/{version}{force}");
            let body = admin_call(admin, token.as_deref(), Method::POST, &path, None).await?;
            print_rollback(*version, &body)?;
        }
        ConfigAction::Apply {
            file,
            guards,
            window,
            min_requests,
            force,
        } => {
            let mut query: Vec<String> = guards
                .iter()
                .map(|g| format!("guard={}", url_encode(g)))
                .collect();
            if let Some(window) = window {
                query.push(format!("for={}", url_encode(window)));
            }
            if let Some(n) = min_requests {
                query.push(format!("min_requests={n}"));
            }
            if *force {
                query.push("force=true".into());
            }
            let json = post_config(admin, token.as_deref(), file, &query).await?;
            return apply_verdict(admin, token.as_deref(), file, &json).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST /admin/config?QUERY` with `file` as the body; the JSON answer.
async fn post_config(
    admin: SocketAddr,
    token: Option<&str>,
    file: &Path,
    query: &[String],
) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let path = if query.is_empty() {
        "/admin/config".to_string()
    } else {
        format!("/admin/config?{}", query.join("&"))
    };
    let body = admin_call(
        admin,
        token,
        Method::POST,
        &path,
        Some(("application/yaml", text.into())),
    )
    .await?;
    serde_json::from_str(&body).context("unexpected answer from the admin API")
}

/// Exit code of `config apply` when a guard rolled the change back.
const EXIT_ROLLED_BACK: u8 = 3;

/// Prints what `config apply` did and, for a guarded change, the guard's
/// progress until its verdict; the exit code says the verdict.
async fn apply_verdict(
    admin: SocketAddr,
    token: Option<&str>,
    file: &Path,
    json: &serde_json::Value,
) -> anyhow::Result<ExitCode> {
    let version = json["version"].as_u64();
    match (json["result"].as_str(), version) {
        (Some("pushed"), Some(v)) => {
            println!(
                "pushed {} as version {v}; every node applies it",
                file.display()
            );
            if json["guard"].is_null() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        (Some("applied"), Some(v)) => println!("applied {} as version {v}", file.display()),
        (Some("applied"), None) => {
            println!(
                "applied {} (the history could not record it)",
                file.display()
            )
        }
        _ => {
            println!(
                "{} is what is serving already; nothing changed",
                file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    for change in json["changes"].as_array().into_iter().flatten() {
        println!("  {}", change.as_str().unwrap_or(""));
    }
    let guard = &json["guard"];
    if guard.is_null() {
        return Ok(ExitCode::SUCCESS);
    }
    let window = guard["window_seconds"].as_u64().unwrap_or(60);
    println!(
        "guarding version {} for {window}s (restores version {} if a guard trips): {}",
        guard["version"],
        guard["previous"],
        guard["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Bounded: the window, plus time for the verdict and a rollback.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(window + 60);
    let mut last_elapsed = None;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let body = admin_call(admin, token, Method::GET, "/admin/config/guard", None).await?;
        let state: serde_json::Value =
            serde_json::from_str(&body).context("unexpected answer from the admin API")?;
        let report = &state["current"];
        if report["version"] != guard["version"] {
            bail!(
                "the guard of version {} is no longer known to the proxy",
                guard["version"]
            );
        }
        let elapsed = report["elapsed_seconds"].as_u64();
        if elapsed != last_elapsed {
            last_elapsed = elapsed;
            println!(
                "  {}s/{window}s  {}",
                elapsed.unwrap_or(0),
                progress_line(report)
            );
        }
        match report["state"].as_str() {
            // Tripped: the previous version is being restored.
            Some("running" | "rolling_back") | None => continue,
            Some(verdict) => {
                println!("verdict: {}", report["verdict"].as_str().unwrap_or(verdict));
                return Ok(match verdict {
                    "rolled_back" => {
                        if let Some(restored) = report["rollback_version"].as_u64() {
                            println!(
                                "version {} restored as version {restored}",
                                report["previous"]
                            );
                        }
                        ExitCode::from(EXIT_ROLLED_BACK)
                    }
                    "rollback_failed" => ExitCode::FAILURE,
                    _ => ExitCode::SUCCESS,
                });
            }
        }
    }
    bail!("no verdict from the guard in time; see GET /admin/config/guard")
}

/// The figures of a running guard, overall: `412 requests, error_rate
/// 0.2%, p99 12.0ms (before: 380 requests, 0%, 11.0ms)`.
fn progress_line(report: &serde_json::Value) -> String {
    let Some(all) = report["figures"].as_array().and_then(|f| f.first()) else {
        return "waiting for figures".into();
    };
    let describe = |w: &serde_json::Value| {
        let requests = w["requests"].as_u64().unwrap_or(0);
        let errors = w["errors"].as_u64().unwrap_or(0);
        let rate = if requests == 0 {
            0.0
        } else {
            errors as f64 * 100.0 / requests as f64
        };
        let p99 = w["p99"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
        format!("{requests} requests, error_rate {rate:.2}%, p99 {p99}")
    };
    let nodes = match report["fleet"]["nodes"].as_array().map(Vec::len) {
        Some(1) => " over 1 node".to_string(),
        Some(n) => format!(" over {n} nodes"),
        None => String::new(),
    };
    format!(
        "all{nodes}: {} (before: {})",
        describe(&all["window"]),
        describe(&all["baseline"])
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn fleet_command(path: &Path, args: &FleetArgs) -> anyhow::Result<()> {
    let (admin, token) = admin_target(path, args.admin, args.token.as_deref())?;
    let FleetAction::Status = args.action;
    let body = admin_call(admin, token.as_deref(), Method::GET, "/admin/fleet", None).await?;
    let json: serde_json::Value =
        serde_json::from_str(&body).context("unexpected answer from the admin API")?;
    println!(
        "fleet current version: {}",
        json["current_version"]
            .as_u64()
            .map_or("unknown (etcd unreachable?)".to_string(), |v| v.to_string())
    );
    if let Some(error) = json["etcd_error"].as_str() {
        println!("etcd: {error} (only this node is shown)");
    }
    println!(
        "{:<20} {:>7}  {:<6}  {:>9}  {:<24}  REFUSED",
        "NODE", "APPLIED", "STALE", "REVISION", "LAST CONTACT"
    );
    for node in json["nodes"].as_array().into_iter().flatten() {
        let refused = match node["refused"].as_object() {
            Some(refused) => format!(
                "version {}: {}",
                refused.get("version").and_then(|v| v.as_u64()).unwrap_or(0),
                refused
                    .get("reason")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .replace('\n', " ")
            ),
            None => "-".into(),
        };
        println!(
            "{:<20} {:>7}  {:<6}  {:>9}  {:<24}  {}",
            node["node"].as_str().unwrap_or("?"),
            node["applied_version"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string()),
            node["stale"].as_bool().unwrap_or(true),
            node["revision"].as_i64().unwrap_or(0),
            node["last_contact"].as_str().unwrap_or("never"),
            refused
        );
        if let Some(conflict) = node["name_conflict"].as_str() {
            println!("{:<20} error: {conflict}", "");
        }
    }
    Ok(())
}

fn failure_text(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) => json["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|| body.trim().to_string()),
        Err(_) => body.trim().to_string(),
    }
}

fn print_versions(body: &str) -> anyhow::Result<()> {
    let json: serde_json::Value =
        serde_json::from_str(body).context("unexpected answer from the admin API")?;
    let current = json["current"].as_u64();
    println!(
        "{:>3} {:>7}  {:<24}  {:<8}  {:<12}  {:<11}  CAUSE",
        "", "VERSION", "CREATED", "SOURCE", "SHA256", "GUARD"
    );
    for version in json["versions"].as_array().into_iter().flatten() {
        let number = version["version"].as_u64().unwrap_or(0);
        let mut cause = version["cause"].as_str().unwrap_or("").to_string();
        if let Some(from) = version["rolled_back_from"].as_u64() {
            cause = format!("{cause} (restores version {from})");
        }
        let guard = match version["guard"]["state"].as_str() {
            Some("running" | "rolling_back") => "guarded",
            Some("kept" | "ended_by_force") => "kept",
            Some("not_enough_traffic") => "kept (few)",
            Some("rolled_back") => "rolled back",
            Some("rollback_failed") => "tripped",
            _ => "-",
        };
        println!(
            "{:>3} {:>7}  {:<24}  {:<8}  {:<12}  {:<11}  {}",
            if Some(number) == current { "*" } else { "" },
            number,
            version["created_at"].as_str().unwrap_or(""),
            version["source"].as_str().unwrap_or(""),
            version["sha256"]
                .as_str()
                .unwrap_or("")
                .get(..12)
                .unwrap_or(""),
            guard,
            cause
        );
    }
    for broken in json["unreadable"].as_array().into_iter().flatten() {
        println!(
            "unreadable entry {}: {}",
            broken["file"].as_str().unwrap_or("?"),
            broken["problem"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn print_diff(diff: &str) {
    if diff.is_empty() {
        println!("(no differences)");
        return;
    }
    let colour = std::io::stdout().is_terminal();
    for line in diff.lines() {
        let code = match line.as_bytes().first() {
            _ if !colour => None,
            Some(b'+') if !line.starts_with("+++") => Some("32"),
            Some(b'-') if !line.starts_with("---") => Some("31"),
            Some(b'@') => Some("36"),
            _ => None,
        };
        match code {
            Some(code) => println!("\x1b[{code}m{line}\x1b[0m"),
            None => println!("{line}"),
        }
    }
}

fn print_rollback(version: u64, body: &str) -> anyhow::Result<()> {
    let json: serde_json::Value =
        serde_json::from_str(body).context("unexpected answer from the admin API")?;
    match json["result"].as_str() {
        Some("pushed") => println!(
            "rolled back to version {version}: pushed to the fleet as version {}",
            json["version"].as_u64().unwrap_or(0)
        ),
        Some("applied") => match json["version"].as_u64() {
            Some(new) => {
                println!("rolled back to version {version}; it is now serving as version {new}")
            }
            None => println!("rolled back to version {version} (the history could not record it)"),
        },
        _ => println!("version {version} is already serving; nothing changed"),
    }
    Ok(())
}
