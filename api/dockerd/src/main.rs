#![recursion_limit = "256"]

//! berthd: the Docker Engine API on a Unix socket, in front of berth's engine. The
//! unmodified Docker CLI and SDKs drive it; every container runs in its own microVM.

mod conns;
mod http;
mod router;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: berthd [--host unix://PATH] [--data-root DIR] [--exec-root DIR]
              [--vmm PATH] [--kernel PATH] [--initrd PATH] [--boot-retries N]
              [--start clone|cold] [--prebuild-template] [--blocking-threads N]
              [--netns PATH] [--bridge-subnet CIDR] [--debug]
              [--insecure-registry CIDR|HOST[:PORT]]... [--registry-mirror URL]...
              [--allow-registry CIDR|HOST[:PORT]]... [--secure-registry HOST[:PORT]]...
              [--registry-certs-dir DIR] [--allow-fetch CIDR|HOST[:PORT]]...";

/// berthd's command line.
struct Options {
    socket: PathBuf,
    engine: engine::EngineConfig,
    /// The most threads blocking work (file system, VM launches) may take at once: a
    /// running container holds none of them.
    blocking_threads: usize,
    debug: bool,
}

fn beside_binary(relative: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(relative)))
        .unwrap_or_else(|| PathBuf::from(relative))
}

fn parse_options() -> Result<Options> {
    let mut socket = PathBuf::from("/run/berth/docker.sock");
    let mut data_root = PathBuf::from("/var/lib/berth");
    let mut exec_root = PathBuf::from("/run/berth/exec");
    let mut vmm = beside_binary("berth-vmm");
    let mut kernel = beside_binary("../guest/vmlinux");
    let mut initrd = beside_binary("../guest/initramfs.cpio");
    let mut debug = false;
    let mut boot_retries = 0;
    let mut start = engine::StartPath::default();
    let mut blocking_threads = 512;
    let mut prebuild_template = false;
    let mut netns = None;
    let mut bridge_subnet = None;
    let mut registries = engine::image::registry::RegistryOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "-H" | "--host" => {
                let host = value()?;
                let Some(path) = host.strip_prefix("unix://") else {
                    bail!("--host {host}: only unix:// sockets are supported (TCP needs TLS client certificates, which berth does not offer yet)");
                };
                socket = PathBuf::from(path);
            }
            "--data-root" => data_root = PathBuf::from(value()?),
            "--exec-root" => exec_root = PathBuf::from(value()?),
            "--vmm" => vmm = PathBuf::from(value()?),
            "--kernel" => kernel = PathBuf::from(value()?),
            "--initrd" => initrd = PathBuf::from(value()?),
            "--boot-retries" => {
                let v = value()?;
                boot_retries = v
                    .parse()
                    .with_context(|| format!("--boot-retries {v:?}: a number expected"))?;
            }
            // How containers' VMs start: clones of a template (the default) or cold boots.
            // A container overrides it with the annotation io.berth.start.
            "--start" => {
                let v = value()?;
                start = v
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--start {e}"))?;
            }
            // The default size's template at start, not at the first container's start.
            "--prebuild-template" => prebuild_template = true,
            // A network namespace for berth's bridges and taps, which berthd uses and
            // leaves in place; without it berthd makes one of its own.
            "--netns" => netns = Some(PathBuf::from(value()?)),
            "--bridge-subnet" => {
                let v = value()?;
                bridge_subnet = Some(
                    v.parse::<engine::network::ipam::Subnet>()
                        .map_err(|e| anyhow::anyhow!("--bridge-subnet {v}: {e}"))?,
                );
            }
            "--blocking-threads" => {
                let v = value()?;
                blocking_threads =
                    v.parse().ok().filter(|&n: &usize| n > 0).with_context(|| {
                        format!("--blocking-threads {v:?}: a positive number expected")
                    })?;
            }
            "--insecure-registry" => registries.insecure.push(value()?),
            "--registry-mirror" => registries.mirrors.push(value()?),
            "--allow-registry" => registries.allowed.push(value()?),
            "--secure-registry" => registries.secure.push(value()?),
            "--registry-certs-dir" => registries.certs_dir = PathBuf::from(value()?),
            "--allow-fetch" => registries.fetch_allowed.push(value()?),
            "-D" | "--debug" => debug = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    // Checked here, so a bad one is the command line's error.
    engine::image::registry::Registries::new(&registries)?;
    Ok(Options {
        socket,
        engine: engine::EngineConfig {
            data_root,
            exec_root,
            vmm,
            kernel,
            initrd,
            boot_retries,
            start,
            prebuild_template,
            netns,
            bridge_subnet,
            registries,
        },
        blocking_threads,
        debug,
    })
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "berthd {} {} {}: {}",
                engine::time::rfc3339(std::time::SystemTime::now()),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> std::process::ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(if options.debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(options.blocking_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(options: Options) -> Result<()> {
    let engine = engine::Engine::open(options.engine.clone())
        .await
        .context("cannot open the engine")?;
    // Found (and, where missing, said) now rather than at the first container's start.
    let _ = engine::container::hostcg::global();

    let listener = bind(&options.socket)?;
    log::info!(
        "berthd listening on unix://{} (data root {}, exec root {})",
        options.socket.display(),
        options.engine.data_root.display(),
        options.engine.exec_root.display()
    );
    let nofile = conns::raise_nofile_limit();
    let cap = conns::cap_for(nofile);
    let stream_cap = conns::stream_cap_for(nofile);
    log::debug!(
        "serving up to {cap} connections and {stream_cap} attached streams (descriptor limit {nofile})"
    );
    let state = Arc::new(router::State::new(engine, stream_cap));
    let table = conns::Table::new(cap);
    let mut accept_errors = conns::Limited::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        // Room first, then the connection: while berthd is full, clients wait in the
        // listen backlog, costing it nothing.
        let slot = tokio::select! {
            slot = table.slot() => slot,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_errors.warn(format_args!(
                    "cannot accept a connection ({} being served): {e}",
                    table.len()
                ));
                drop(slot);
                tokio::time::sleep(conns::accept_backoff(&e)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let conn = slot.conn.clone();
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let busy = conn.busy();
                let state = state.clone();
                async move {
                    let resp = router::handle(state, req).await?;
                    Ok::<_, std::convert::Infallible>(resp.map(|b| conns::guarded(b, busy)))
                }
            });
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(conns::HEADER_TIMEOUT)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::select! {
                r = serving => {
                    if let Err(e) = r {
                        log::debug!("connection ended: {e}");
                    }
                }
                _ = slot.conn.asked_to_close() => {
                    log::debug!("an idle connection was closed to make room");
                }
            }
            drop(slot);
        });
    }
    log::info!("berthd shutting down");
    drop(listener);
    let _ = std::fs::remove_file(&options.socket);
    state.engine.shutdown().await;
    Ok(())
}

fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers on it; a stale socket from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another daemon", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    // root and the `berth` group, as dockerd does with `docker`.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group_id("berth") {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: chown(2) on a NUL-terminated path that outlives the call; -1 keeps the owner.
        unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) };
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}
