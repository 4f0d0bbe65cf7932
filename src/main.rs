//! The `tenant-gateway` command line: `run`, `check`, `demo`, `dev-certs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tenant_gateway::gateway::{Gateway, Running};
use tenant_gateway::signing::Verifier;
use tenant_gateway::{config, demo, devcerts};

/// jemalloc: about a twentieth less CPU per proxied request than glibc's malloc, and the memory
/// an idle connection gives up is returned to the system by its background thread instead of
/// staying in the heap (docs/performance.md has both figures).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tenant-gateway", version, about = "Multi-tenant edge proxy")]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Async worker threads [default: one per core].
    #[arg(long, global = true, env = "GATEWAY_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Serve.
    Run {
        /// Config file [default: $GATEWAY_CONFIG, else config/gateway.yaml]
        #[arg(long, env = "GATEWAY_CONFIG", default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Load, validate and compile the config without serving.
    Check {
        #[arg(long, env = "GATEWAY_CONFIG", default_value = "config/gateway.yaml")]
        config: PathBuf,
        /// Also print, per tenant, which path prefix goes to which upstream under which
        /// requirements (tenant routes first, global requirements included).
        #[arg(long)]
        explain: bool,
    },
    /// Print the public signing keys (Ed25519) as a JWKS, as the admin listener serves them at
    /// /.well-known/tenant-signing-keys.
    SigningKeys {
        #[arg(long, env = "GATEWAY_CONFIG", default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Sum a usage export file (`usage.export`) per tenant.
    Usage {
        /// Intervals starting at or after this time: RFC 3339 or Unix seconds.
        #[arg(long)]
        since: String,
        /// The export file [default: usage.export.path of --config].
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, env = "GATEWAY_CONFIG", default_value = "config/gateway.yaml")]
        config: PathBuf,
        /// One JSON object per tenant instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Demo upstreams, dev certificates and config/demo.yaml, with curl lines to try.
    Demo {
        #[arg(long, default_value = "config/demo.yaml")]
        config: PathBuf,
    },
    /// Write a dev CA and per-tenant leaf certificates (never for production).
    DevCerts {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        #[arg(long, default_value = "gw.localhost")]
        domain: String,
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check { config, explain } => return check(&config, explain),
        Command::SigningKeys { config } => return signing_keys(&config),
        Command::Usage {
            since,
            file,
            config,
            json,
        } => usage(&since, file, &config, json),
        Command::DevCerts {
            out,
            domain,
            tenants,
        } => dev_certs(&out, &domain, &tenants),
        Command::Run { config } => {
            runtimes(cli.workers).and_then(|(rt, workers)| rt.block_on(run(&config, &workers)))
        }
        Command::Demo { config } => {
            runtimes(cli.workers).and_then(|(rt, workers)| rt.block_on(run_demo(&config, &workers)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets plain
    // text (and NO_COLOR turns it off everywhere, https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The async runtimes: one per worker (by default one per core the process may run on), each a
/// current-thread runtime on its own thread, with no work-stealing queues and no cross-thread
/// wake-ups (about a quarter less CPU per request than a one-worker multi-thread runtime,
/// docs/performance.md). The first is the main one: it also runs the admin API, reloads and
/// background work. Each traffic listener has one socket per runtime (`SO_REUSEPORT`), so a
/// connection is accepted and served on one thread from start to end, as in nginx's workers.
fn runtimes(
    workers: Option<usize>,
) -> anyhow::Result<(tokio::runtime::Runtime, Vec<tokio::runtime::Handle>)> {
    let n = workers
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let build = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    let main = build()?;
    let mut others = Vec::with_capacity(n - 1);
    for i in 1..n {
        let rt = build()?;
        others.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .context("cannot start a worker thread")?;
    }
    Ok((main, others))
}

fn check(path: &Path, explain: bool) -> ExitCode {
    match config::load(path) {
        Ok(snap) => {
            println!(
                "{}: ok ({} tenants, {} routes, {} upstreams, {} certificates)",
                path.display(),
                snap.tenants.len(),
                snap.route_count(),
                snap.upstreams.len(),
                snap.certs.len()
            );
            if explain {
                print!("{}", explain_routes(&snap));
            }
            if let Err(msg) = check_store(&snap) {
                eprintln!("{}: {msg}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(errors) => print_errors(path, &errors),
    }
}

/// `check` asks the cluster store's server, when it answers, whether it is a Redis Cluster
/// node (refused). A server that does not answer is not an error: the gateway starts and
/// serves per `on_error` while Redis is down.
fn check_store(snap: &tenant_gateway::snapshot::Snapshot) -> Result<(), String> {
    let Some(settings) = snap.cluster.clone() else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = tenant_gateway::cluster::RedisStore::new(settings)?;
        match store.refuse_cluster().await? {
            true => println!("rate-limit store {}: standalone Redis, ok", store.settings.url),
            false => println!(
                "rate-limit store {}: no answer (not checked; the gateway serves per on_error while it is down)",
                store.settings.url
            ),
        }
        Ok(())
    })
}

/// Every config error with its YAML path, one a line; exit 1.
fn print_errors(path: &Path, errors: &config::ConfigErrors) -> ExitCode {
    eprintln!("{}: {} error(s)", path.display(), errors.0.len());
    for e in &errors.0 {
        println!("{e}");
    }
    ExitCode::FAILURE
}

/// `check --explain`: per tenant, each prefix with its upstream and requirements.
fn explain_routes(snap: &tenant_gateway::snapshot::Snapshot) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for tenant in &snap.tenants {
        let _ = writeln!(out, "tenant {} (plan {})", tenant.name, tenant.plan);
        for e in tenant_gateway::route::explain(snap, tenant) {
            let mut req = Vec::new();
            if e.requirements.token {
                req.push("token");
            }
            if e.requirements.apikey {
                req.push("apikey");
            }
            let _ = writeln!(
                out,
                "  {:<24} -> {:<20} require: {:<14} ({} route)",
                e.prefix,
                e.upstream,
                if req.is_empty() {
                    "-".to_owned()
                } else {
                    req.join(",")
                },
                if e.own_route { "tenant" } else { "global" }
            );
        }
    }
    out
}

fn signing_keys(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(snap) => {
            let jwks = tenant_gateway::signing::jwks(snap.signing.keys.iter().map(|k| &**k));
            println!("{jwks:#}");
            ExitCode::SUCCESS
        }
        Err(errors) => print_errors(path, &errors),
    }
}

/// `usage --since`: totals per tenant from an export file.
fn usage(since: &str, file: Option<PathBuf>, config: &Path, json: bool) -> anyhow::Result<()> {
    use tenant_gateway::usage;
    let since = usage::parse_since(since).map_err(anyhow::Error::msg)?;
    let file = match file {
        Some(f) => f,
        None => {
            let text = tenant_gateway::files::read_text(config)
                .with_context(|| format!("reading {}", config.display()))?;
            let raw = config::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            raw.usage
                .and_then(|u| u.export)
                .map(|e| e.path)
                .context("no --file and no usage.export.path in the config")?
        }
    };
    let (totals, bad) = usage::sum_export_file(&file, since)
        .with_context(|| format!("reading {}", file.display()))?;
    if bad > 0 {
        eprintln!("{}: {bad} unreadable line(s) skipped", file.display());
    }
    if json {
        for (tenant, t) in &totals {
            let mut v = serde_json::to_value(t)?;
            v["tenant"] = serde_json::Value::from(tenant.as_str());
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14} {:>14}",
        "tenant", "requests", "1xx", "2xx", "3xx", "4xx", "5xx", "bytes_in", "bytes_out"
    );
    for (tenant, t) in &totals {
        let c = |k: &str| t.by_status.get(k).copied().unwrap_or(0);
        println!(
            "{:<24} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>14} {:>14}",
            tenant,
            t.requests,
            c("1xx"),
            c("2xx"),
            c("3xx"),
            c("4xx"),
            c("5xx"),
            t.bytes_in,
            t.bytes_out
        );
    }
    Ok(())
}

fn dev_certs(out: &Path, domain: &str, tenants: &[String]) -> anyhow::Result<()> {
    let made = devcerts::write(out, domain, tenants)?;
    println!(
        "dev CA: {} (trust it for testing only)",
        made.ca_cert.display()
    );
    println!(
        "default: {} (*.{domain}, {domain})",
        made.default_cert.display()
    );
    for (t, c, _) in &made.tenants {
        println!("{t}: {} ({t}.{domain})", c.display());
    }
    Ok(())
}

fn load_gateway(path: &Path) -> anyhow::Result<Arc<Gateway>> {
    Gateway::from_file(path)
        .map_err(|errors| anyhow::anyhow!("{} is not valid:\n{errors}", path.display()))
}

async fn run(path: &Path, workers: &[tokio::runtime::Handle]) -> anyhow::Result<()> {
    let gw = load_gateway(path)?;
    log_open_files(gw.snapshot().limits.max_connections as u64);
    let running = gw.start_on(workers).await?;
    let _watch = tenant_gateway::watch::spawn(gw.clone())
        .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; reload with SIGHUP or POST /reload"))
        .ok();
    serve_until_signalled(gw, running).await
}

/// Raises the open-files limit to the hard limit and says how many clients fit.
fn log_open_files(max_connections: u64) {
    use tenant_gateway::fdlimit;
    match fdlimit::raise() {
        Some((before, after)) => {
            let capacity = fdlimit::capacity(after);
            tracing::info!(
                open_files = after,
                raised_from = before,
                client_connections = capacity,
                max_connections,
                "open-files limit"
            );
            if capacity < max_connections {
                tracing::warn!(
                    capacity,
                    max_connections,
                    "limits.max_connections is above what the open-files limit allows; accepts will fail with EMFILE first (raise `ulimit -Hn` or LimitNOFILE)"
                );
            }
        }
        None => tracing::warn!("could not read the open-files limit"),
    }
}

/// Reloads on SIGHUP; drains and returns on SIGTERM or SIGINT.
async fn serve_until_signalled(gw: Arc<Gateway>, running: Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Compiling may read many certificate files: keep it off the async workers.
                let g = gw.clone();
                let _ = tokio::task::spawn_blocking(move || g.reload()).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

async fn run_demo(path: &Path, workers: &[tokio::runtime::Handle]) -> anyhow::Result<()> {
    let certs = Path::new("certs");
    let domain = "gw.localhost";
    if demo::ensure_certs(certs, domain, &["acme".into(), "globex".into()])? {
        println!("made throwaway dev certificates in certs/ (never use them in production)");
    }
    let gw = load_gateway(path)?;
    let snap = gw.snapshot();
    let mut verifier = Verifier::new();
    let secret = std::fs::read(certs.join("signing.key")).context("reading certs/signing.key")?;
    verifier = verifier.with_key(snap.signing.active.id(), secret.trim_ascii());

    // One echo upstream per loopback endpoint named in the config.
    let verifier = Arc::new(verifier);
    let mut started = std::collections::HashSet::new();
    for (pool, upstream) in &snap.upstreams {
        for ep in upstream.endpoints() {
            let Ok(addr) = ep.authority.as_str().parse::<SocketAddr>() else {
                continue;
            };
            if !addr.ip().is_loopback() || !started.insert(addr) {
                continue;
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("demo upstream {pool} on {addr}"))?;
            tokio::spawn(demo::serve_echo(
                listener,
                format!("{pool} ({addr})"),
                verifier.clone(),
            ));
        }
    }
    let running = gw.start_on(workers).await?;
    let http = running
        .addr("http")
        .context("demo config needs a listener named http")?;
    let https = running
        .addr("https")
        .context("demo config needs a listener named https")?;
    println!("\ntenant-gateway demo is up. Try:\n");
    print!("{}", demo::curl_lines(http, https, "certs/ca.crt", domain));
    println!("Ctrl-C stops the demo.");
    serve_until_signalled(gw, running).await
}
