//! `/_ping`, `/version`, `/info`, and the answers the CLI expects from areas berth does not
//! have yet (volumes, plugins): truthful, in Docker's shapes.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::http::{full, json, ApiError, ApiResult};
use crate::router::{not_found, State, Version, API_VERSION, MIN_API_VERSION};

/// `GET|HEAD /_ping`: cheap, unversioned, with the headers the CLI negotiates from.
pub fn ping(req: &Request<Incoming>) -> ApiResult {
    let body = if req.method() == Method::HEAD {
        ""
    } else {
        "OK"
    };
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(
        "Content-Type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("Pragma", HeaderValue::from_static("no-cache"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    // The classic builder: a BuildKit-advertising daemon would push the CLI onto /session.
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    Ok(r)
}

pub async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
    _version: Version,
) -> ApiResult {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET | Method::HEAD, ["_ping"]) => ping(&req),
        (Method::GET, ["version"]) => version(state),
        (Method::GET, ["info"]) => info(state).await,
        (Method::POST, ["commit"]) => commit(state, req).await,
        (Method::POST, ["auth"]) => auth(state, req).await,
        (Method::GET, ["events"]) => {
            super::events::events(state, &crate::http::Query::parse(req.uri().query())).await
        }
        (Method::GET, ["system", "df"]) => super::df::df(state).await,
        (Method::GET, ["plugins"]) => json(StatusCode::OK, &Vec::<()>::new()),
        (Method::GET, ["plugins", name, "json"]) => Err(ApiError::not_found(format!(
            "plugin {} not found",
            crate::http::percent_decode(name)
        ))),
        _ => Err(not_found()),
    }
}

/// `POST /auth`: `docker login`. The credentials are checked against the registry; the CLI
/// keeps them and sends them with each pull (`X-Registry-Auth`), as with dockerd.
async fn auth(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    #[derive(serde::Deserialize)]
    struct Login {
        #[serde(default)]
        serveraddress: String,
        #[serde(flatten)]
        credentials: engine::image::pull::Credentials,
    }
    let body = crate::http::read_body(req.into_body(), crate::http::MAX_JSON_BODY).await?;
    let login: Login = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid login request: {e}")))?;
    if login.credentials.username.is_empty() {
        return Err(ApiError::bad_request(
            "berth logs in with a username and password only (no identity token)",
        ));
    }
    match engine::image::pull::login(
        state.engine.images.registries(),
        &login.serveraddress,
        &login.credentials,
    )
    .await
    {
        Ok(()) => json(
            StatusCode::OK,
            &json!({ "Status": "Login Succeeded", "IdentityToken": "" }),
        ),
        Err(engine::image::pull::LoginError::Refused(m)) => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, m))
        }
        Err(engine::image::pull::LoginError::Other(e)) => Err(e.into()),
    }
}

/// `POST /commit`: `docker commit`. The query names the container and the image; the body,
/// if any, is a container config to start from.
async fn commit(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    let q = crate::http::Query::parse(req.uri().query());
    let body = crate::http::read_body(req.into_body(), crate::http::MAX_JSON_BODY).await?;
    let config = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))?;
        (!v.is_null()).then_some(v)
    };
    let opts = engine::container::CommitOptions {
        container: q.get("container").unwrap_or_default().to_string(),
        repo: q.get("repo").unwrap_or_default().to_string(),
        tag: q.get("tag").unwrap_or_default().to_string(),
        comment: q.get("comment").unwrap_or_default().to_string(),
        author: q.get("author").unwrap_or_default().to_string(),
        // Docker pauses unless told not to.
        pause: q
            .get("pause")
            .is_none_or(|p| !matches!(p, "0" | "false" | "False")),
        changes: q.all("changes").to_vec(),
        config,
    };
    let id = state.engine.containers.commit(opts).await?;
    json(StatusCode::CREATED, &json!({ "Id": id }))
}

fn uname() -> (String, String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (release.trim().to_string(), hostname.trim().to_string())
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".to_string())
}

fn version(state: &Arc<State>) -> ApiResult {
    let (kernel, _) = uname();
    let runtime = state.engine.runtime_info();
    json(
        StatusCode::OK,
        &json!({
            "Platform": { "Name": "berth" },
            "Components": [
                {
                    "Name": "Engine",
                    "Version": env!("CARGO_PKG_VERSION"),
                    "Details": {
                        "ApiVersion": API_VERSION,
                        "MinAPIVersion": MIN_API_VERSION,
                        "Os": "linux",
                        "Arch": "amd64",
                        "KernelVersion": kernel,
                        "Isolation": "microVM (KVM), one per container",
                    }
                },
                { "Name": "berth-vmm", "Version": runtime.vmm_version, "Details": { "Path": runtime.vmm_path } },
                { "Name": "guest kernel", "Version": runtime.guest_kernel, "Details": { "Path": runtime.kernel_path } },
            ],
            "Version": env!("CARGO_PKG_VERSION"),
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "n/a (Rust)",
            "Os": "linux",
            "Arch": "amd64",
            "KernelVersion": kernel,
            "BuildTime": "",
        }),
    )
}

async fn info(state: &Arc<State>) -> ApiResult {
    let (kernel, hostname) = uname();
    let counts = state.engine.counts().await;
    let runtime = state.engine.runtime_info();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let mut warnings = vec![];
    if let Some(w) = &runtime.host_warning {
        warnings.push(format!("berth: {w}"));
    }
    let host_cgroups = engine::container::hostcg::global();
    if let Some(w) = host_cgroups.unavailable() {
        warnings.push(format!("berth: {w}"));
    }
    json(
        StatusCode::OK,
        &json!({
            "ID": state.engine.daemon_id(),
            "Containers": counts.containers,
            "ContainersRunning": counts.running,
            "ContainersPaused": counts.paused,
            "ContainersStopped": counts.stopped,
            "Images": counts.images,
            "Driver": "overlayfs over virtio-fs",
            "DriverStatus": [["Guest root filesystem", "virtio-fs share of the host overlay"]],
            "Plugins": { "Volume": ["local"], "Network": ["null"], "Authorization": null, "Log": ["json-file", "local"] },
            "MemoryLimit": true,
            "SwapLimit": false,
            "KernelMemory": false,
            "CpuCfsPeriod": true,
            "CpuCfsQuota": true,
            "CPUShares": true,
            "CPUSet": true,
            "PidsLimit": true,
            "IPv4Forwarding": false,
            "BridgeNfIptables": false,
            "BridgeNfIp6tables": false,
            "Debug": log::max_level() >= log::LevelFilter::Debug,
            "NFd": 0,
            "OomKillDisable": false,
            "NGoroutines": 0,
            "SystemTime": engine::time::rfc3339(std::time::SystemTime::now()),
            "LoggingDriver": "json-file",
            // The VMMs' host cgroups (berth's own subtree, written directly).
            "CgroupDriver": if host_cgroups.unavailable().is_none() { "cgroupfs" } else { "none" },
            "CgroupVersion": "2",
            "NEventsListener": 0,
            "KernelVersion": kernel,
            "OperatingSystem": os_name(),
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": state.engine.images.registries().info(),
            "NCPU": ncpu,
            "MemTotal": mem_total,
            "GenericResources": null,
            "DockerRootDir": state.engine.config().data_root,
            "HttpProxy": "",
            "HttpsProxy": "",
            "NoProxy": "",
            "Name": hostname,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": { "berth": { "path": runtime.vmm_path } },
            "DefaultRuntime": "berth",
            "Swarm": { "NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null },
            "LiveRestoreEnabled": false,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": { "ID": "", "Expected": "" },
            "RuncCommit": { "ID": "", "Expected": "" },
            "InitCommit": { "ID": "", "Expected": "" },
            "SecurityOptions": ["name=microvm"],
            "Warnings": warnings,
        }),
    )
}
