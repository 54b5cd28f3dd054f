//! The container endpoints: create, start, attach (hijacked), wait, logs, stop, kill,
//! remove, list, inspect, rename, resize, prune, diff, export, archive (`docker cp`); and clear refusals for the ones berth does
//! not have yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use engine::container::logs::{Entry, LogOptions, LogReader, Stream};
use engine::container::record::{Record, Status};
use engine::container::{Container, CreateOptions, WaitCondition};
use engine::time::{parse_api_time, rfc3339, unix_secs, ZERO_TIME};

use super::hijack::{
    hung_up, scan_input, stream_permit, switching_protocols, upgraded_socket, AbortOnDrop,
};
use crate::http::{channel_body, json, json_body, status, ApiError, ApiResult, Query, Resp};
use crate::router::{not_found, State, Version};

pub async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
    version: Version,
) -> ApiResult {
    let q = Query::parse(req.uri().query());
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(crate::http::percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::POST, ["containers", "create"]) => create(state, req, &q).await,
        (Method::GET, ["containers", "json"]) => list(state, &q).await,
        (Method::POST, ["containers", "prune"]) => prune(state, &q).await,
        (Method::GET, ["containers", id, "json"]) => inspect(state, id, q.flag("size")).await,
        (Method::POST, ["containers", id, "start"]) => {
            match state.engine.containers.start(id).await {
                Ok(()) => Ok(status(StatusCode::NO_CONTENT)),
                Err(engine::EngineError::NotModified(_)) => Ok(status(StatusCode::NOT_MODIFIED)),
                Err(e) => Err(e.into()),
            }
        }
        (Method::POST, ["containers", id, "stop"]) => {
            let t = q.int::<i64>("t")?;
            match state.engine.containers.stop(id, t).await {
                Ok(()) => Ok(status(StatusCode::NO_CONTENT)),
                Err(engine::EngineError::NotModified(_)) => Ok(status(StatusCode::NOT_MODIFIED)),
                Err(e) => Err(e.into()),
            }
        }
        (Method::POST, ["containers", id, "restart"]) => {
            let t = q.int::<i64>("t")?;
            state.engine.containers.restart(id, t).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["containers", id, "kill"]) => {
            state.engine.containers.kill(id, q.get("signal")).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["containers", id, "wait"]) => wait(state, id, &q).await,
        (Method::DELETE, ["containers", id]) => {
            if q.flag("link") {
                // `docker rm --link` removes a link, never the container it names.
                return Err(ApiError::bad_request(
                    "berth does not support links: containers on a user-defined network find each other by name",
                ));
            }
            state
                .engine
                .containers
                .remove(id, q.flag("force"), q.flag("v"))
                .await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["containers", id, "rename"]) => {
            let name = q.get("name").unwrap_or_default();
            if name.is_empty() {
                return Err(ApiError::bad_request(
                    "Neither old nor new names may be empty",
                ));
            }
            state.engine.containers.rename(id, name).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["containers", id, "resize"]) => {
            let h = q.int::<u16>("h")?.unwrap_or(0);
            let w = q.int::<u16>("w")?.unwrap_or(0);
            state.engine.containers.resize(id, h, w).await?;
            Ok(status(StatusCode::OK))
        }
        (Method::POST, ["containers", id, "attach"]) => attach(state, req, id, &q, version).await,
        (Method::POST, ["containers", id, "exec"]) => super::exec::create(state, req, id).await,
        (Method::POST, ["containers", id, "update"]) => {
            let body: Value = json_body(req.into_body()).await?;
            state.engine.containers.update(id, &body).await?;
            json(StatusCode::OK, &json!({ "Warnings": null }))
        }
        (Method::POST, ["containers", id, "pause"]) => {
            state.engine.containers.pause(id).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["containers", id, "unpause"]) => {
            state.engine.containers.unpause(id).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::GET, ["containers", id, "logs"]) => logs(state, id, &q).await,
        (Method::GET, ["containers", id, "top"]) => super::stats::top(state, id, &q).await,
        (Method::GET, ["containers", id, "stats"]) => super::stats::stats(state, id, &q).await,
        (Method::GET, ["containers", id, "changes"]) => changes(state, id).await,
        (Method::GET, ["containers", id, "export"]) => export(state, id).await,
        (Method::HEAD, ["containers", id, "archive"]) => {
            let stat = state
                .engine
                .containers
                .stat_path(id, archive_path_param(&q)?)
                .await?;
            let mut r = status(StatusCode::OK);
            r.headers_mut()
                .insert(PATH_STAT_HEADER, path_stat_header(&stat)?);
            Ok(r)
        }
        (Method::GET, ["containers", id, "archive"]) => archive(state, id, &q).await,
        (Method::PUT, ["containers", id, "archive"]) => extract(state, req, id, &q).await,
        (_, ["containers", id, what, ..]) => {
            // Docker endpoints berth does not implement: refused by name, never faked.
            let Some((_, command)) = UNSUPPORTED.iter().find(|(w, _)| w == what) else {
                return Err(not_found());
            };
            state.engine.containers.get(id).await?;
            Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("berth does not support {command} yet"),
            ))
        }
        _ => Err(not_found()),
    }
}

const UNSUPPORTED: &[(&str, &str)] = &[("checkpoints", "checkpoints")];

/// The header `HEAD` and `GET /containers/{id}/archive` describe the path in.
const PATH_STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

/// The archive endpoints' `path`, required as dockerd requires it.
fn archive_path_param(q: &Query) -> Result<&str, ApiError> {
    match q.get("path") {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(ApiError::bad_request("Path cannot be empty")),
    }
}

fn path_stat_header(stat: &engine::container::archive::PathStat) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&stat.header_value())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `docker cp CONTAINER:PATH ...`: the path is found and opened, and its stat sent in the
/// header, before the tar streams; a failure after that ends the stream early.
async fn archive(state: &Arc<State>, id: &str, q: &Query) -> ApiResult {
    let source = state
        .engine
        .containers
        .archive_path(id, archive_path_param(q)?)
        .await?;
    let header = path_stat_header(&source.stat)?;
    let (body, writer) = crate::http::streamed_body();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let mut buffered = std::io::BufWriter::with_capacity(256 << 10, writer);
        let result = source.write_to(&mut buffered);
        match (result, buffered.into_inner()) {
            (Ok(()), _) => {}
            (Err(e), Ok(writer)) => {
                log::warn!("docker cp from {id} failed: {e}");
                writer.fail(std::io::Error::other(e.to_string()));
            }
            (Err(e), Err(_)) => log::warn!("docker cp from {id} failed: {e}"),
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    r.headers_mut().insert(PATH_STAT_HEADER, header);
    Ok(r)
}

/// `docker cp ... CONTAINER:PATH`: the archive is received whole into a scratch file first
/// (a stalled client holds no thread and no lock of the container), then extracted.
async fn extract(state: &Arc<State>, req: Request<Incoming>, id: &str, q: &Query) -> ApiResult {
    let path = archive_path_param(q)?.to_string();
    // The container is looked up before its upload is received, as dockerd answers a
    // missing one at once.
    state.engine.containers.get(id).await?;
    let opts = engine::container::archive::ExtractOptions {
        no_overwrite_dir_non_dir: q.flag("noOverwriteDirNonDir"),
        copy_uid_gid: q.flag("copyUIDGID"),
    };
    let scratch = state.engine.images.scratch_file()?;
    let input = crate::http::spool_body(req.into_body(), scratch)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot receive the archive: {e}")))?;
    state
        .engine
        .containers
        .extract_to_dir(id, &path, opts, input)
        .await?;
    Ok(status(StatusCode::OK))
}

/// `docker diff`: `[{"Path", "Kind"}]`, or `null` when nothing changed (as dockerd answers).
async fn changes(state: &Arc<State>, id: &str) -> ApiResult {
    let changes = state.engine.containers.changes(id).await?;
    if changes.is_empty() {
        return json(StatusCode::OK, &Value::Null);
    }
    let out: Vec<Value> = changes
        .iter()
        .map(|c| json!({ "Path": c.path, "Kind": c.kind as u8 }))
        .collect();
    json(StatusCode::OK, &out)
}

/// `docker export`: the container is found and its layers opened before the tar streams;
/// a failure after that ends the stream early (the client sees a truncated archive).
async fn export(state: &Arc<State>, id: &str) -> ApiResult {
    let source = state.engine.containers.export(id).await?;
    let (body, writer) = crate::http::streamed_body();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let mut buffered = std::io::BufWriter::with_capacity(256 << 10, writer);
        let result = source.write_to(&mut buffered);
        match (result, buffered.into_inner()) {
            (Ok(()), _) => {}
            (Err(e), Ok(writer)) => {
                log::warn!("docker export {id} failed: {e}");
                writer.fail(std::io::Error::other(e.to_string()));
            }
            (Err(e), Err(_)) => log::warn!("docker export {id} failed: {e}"),
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

async fn create(state: &Arc<State>, req: Request<Incoming>, q: &Query) -> ApiResult {
    let body: Value = json_body(req.into_body()).await?;
    log::debug!("create: {body}");
    let opts = CreateOptions {
        name: q.get("name").map(String::from),
    };
    let (id, warnings) = state.engine.containers.create(&body, opts).await?;
    json(
        StatusCode::CREATED,
        &json!({ "Id": id, "Warnings": warnings }),
    )
}

/// Docker's human durations ("3 seconds", "About a minute", ...).
fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

fn since(t: Option<SystemTime>) -> std::time::Duration {
    t.and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

pub(crate) fn status_text(r: &Record) -> String {
    match r.state.status {
        _ if r.state.restarting => format!(
            "Restarting ({}) {} ago",
            r.state.exit_code,
            human_duration(since(r.state.finished_at))
        ),
        Status::Running if r.state.paused => {
            format!("Up {} (Paused)", human_duration(since(r.state.started_at)))
        }
        Status::Running => {
            let health = match r.state.health.as_ref().map(|h| h.status.as_str()) {
                None => String::new(),
                Some("starting") => " (health: starting)".into(),
                Some(other) => format!(" ({other})"),
            };
            format!("Up {}{health}", human_duration(since(r.state.started_at)))
        }
        Status::Exited if r.state.finished_at.is_some() => format!(
            "Exited ({}) {} ago",
            r.state.exit_code,
            human_duration(since(r.state.finished_at))
        ),
        Status::Exited | Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

pub(crate) fn command_text(r: &Record) -> String {
    r.config
        .argv()
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The creation times `before` and `since` filters name (containers by name or id).
type Bounds = (Option<SystemTime>, Option<SystemTime>);

async fn filter_bounds(
    state: &Arc<State>,
    filters: &HashMap<String, Vec<String>>,
) -> Result<Bounds, ApiError> {
    let mut bounds = (None, None);
    for (key, slot) in [("before", &mut bounds.0), ("since", &mut bounds.1)] {
        if let Some(reference) = filters.get(key).and_then(|v| v.last()) {
            let c = state.engine.containers.get(reference).await?;
            *slot = Some(c.record().await.created);
        }
    }
    Ok(bounds)
}

fn matches_filters(
    r: &Record,
    filters: &HashMap<String, Vec<String>>,
    (before, since): Bounds,
) -> Result<bool, ApiError> {
    if before.is_some_and(|t| r.created >= t) || since.is_some_and(|t| r.created <= t) {
        return Ok(false);
    }
    for (key, values) in filters {
        if values.is_empty() || key == "before" || key == "since" {
            continue;
        }
        let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
        let ok = match key.as_str() {
            "status" => {
                for v in values {
                    if ![
                        "created",
                        "restarting",
                        "running",
                        "removing",
                        "paused",
                        "exited",
                        "dead",
                    ]
                    .contains(&v.as_str())
                    {
                        return Err(ApiError::bad_request(format!(
                            "Invalid filter 'status={v}'"
                        )));
                    }
                }
                any(&|v| v == r.state.docker_status())
            }
            "name" => any(&|v| {
                let v = v.strip_prefix('/').unwrap_or(v);
                r.name.contains(v)
            }),
            "id" => any(&|v| r.id.starts_with(v)),
            "label" => labels_match(&r.config.labels, values),
            "exited" => any(&|v| {
                r.state.status == Status::Exited
                    && v.parse::<i32>().is_ok_and(|c| c == r.state.exit_code)
            }),
            "ancestor" => any(&|v| {
                r.image == v
                    || r.image_id
                        .trim_start_matches("sha256:")
                        .starts_with(v.trim_start_matches("sha256:"))
            }),
            "isolation" => any(&|v| v == "default"),
            "health" => {
                for v in values {
                    if !["starting", "healthy", "unhealthy", "none"].contains(&v.as_str()) {
                        return Err(ApiError::bad_request(format!(
                            "Unrecognised filter value for health: {v}"
                        )));
                    }
                }
                let status = r
                    .state
                    .health
                    .as_ref()
                    .map_or("none", |h| h.status.as_str());
                any(&|v| v == status)
            }
            other => return Err(ApiError::bad_request(format!("Invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn list(state: &Arc<State>, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    let all = q.flag("all");
    let limit = q.int::<i64>("limit")?.filter(|l| *l > 0);
    let with_size = q.flag("size");
    let bounds = filter_bounds(state, &filters).await?;
    let mut records = Vec::new();
    for c in state.engine.containers.all().await {
        let r = c.record().await;
        let explicit_status = filters.contains_key("status");
        if !all
            && limit.is_none()
            && !explicit_status
            && r.state.status != Status::Running
            && !r.state.restarting
        {
            continue;
        }
        if !matches_filters(&r, &filters, bounds)? {
            continue;
        }
        records.push(r);
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.created));
    if let Some(l) = limit {
        records.truncate(l as usize);
    }
    let mut sizes = HashMap::new();
    if with_size {
        for r in &records {
            sizes.insert(r.id.clone(), state.engine.containers.sizes(&r.id).await?);
        }
    }
    let out: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut v = json!({
                "Id": r.id,
                "Names": [format!("/{}", r.name)],
                "Image": r.image,
                "ImageID": r.image_id,
                "Command": command_text(r),
                "Created": unix_secs(r.created),
                "Ports": super::networks::ps_ports(r),
                "Labels": r.config.labels,
                "State": r.state.docker_status(),
                "Status": status_text(r),
                "HostConfig": { "NetworkMode": r.host_config.network_mode },
                "NetworkSettings": super::networks::ps_networks(r),
                "Mounts": r.host_config.mounts.iter().map(|m| m.inspect()).collect::<Vec<_>>(),
            });
            if let Some((rw, root)) = sizes.get(&r.id) {
                v["SizeRw"] = json!(rw);
                v["SizeRootFs"] = json!(root);
            }
            v
        })
        .collect();
    json(StatusCode::OK, &out)
}

fn time_or_zero(t: Option<SystemTime>) -> String {
    t.map(rfc3339).unwrap_or_else(|| ZERO_TIME.to_string())
}

async fn inspect(state: &Arc<State>, id: &str, with_size: bool) -> ApiResult {
    let c = state.engine.containers.get(id).await?;
    let r = c.record().await;
    let argv = r.config.argv();
    let st = &r.state;
    let exec_ids = {
        let ids = state.engine.containers.exec_ids(&r.id);
        (!ids.is_empty()).then_some(ids)
    };
    let mut v = json!({
        "Id": r.id,
        "Created": rfc3339(r.created),
        "Path": argv.first().cloned().unwrap_or_default(),
        "Args": argv.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": st.docker_status(),
            "Running": st.status == Status::Running || st.restarting,
            "Paused": st.paused,
            "Restarting": st.restarting,
            "OOMKilled": st.oom_killed,
            "Dead": st.status == Status::Dead,
            "Pid": st.pid,
            "ExitCode": st.exit_code,
            "Error": st.error,
            "StartedAt": time_or_zero(st.started_at),
            "FinishedAt": time_or_zero(st.finished_at),
        },
        "Image": r.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": c.shown_log_path().await,
        "Name": format!("/{}", r.name),
        "RestartCount": r.restart_count,
        "Driver": "overlayfs over virtio-fs",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": exec_ids,
        "HostConfig": {
            "Binds": if r.host_config.binds.is_empty() { Value::Null } else { json!(r.host_config.binds) },
            "Mounts": if r.host_config.mount_requests.is_empty() { Value::Null } else { json!(r.host_config.mount_requests) },
            "Tmpfs": if r.host_config.tmpfs.is_empty() { Value::Null } else { json!(r.host_config.tmpfs) },
            "ReadonlyRootfs": r.host_config.readonly_rootfs,
            "ShmSize": if r.host_config.shm_size > 0 { r.host_config.shm_size } else { 64 << 20 },
            "ContainerIDFile": "",
            "LogConfig": { "Type": r.host_config.log_type, "Config": r.host_config.log_options },
            "NetworkMode": r.host_config.network_mode,
            "PortBindings": super::networks::port_bindings(&r),
            "PublishAllPorts": r.host_config.publish_all_ports,
            "CapAdd": if r.host_config.cap_add.is_empty() { Value::Null } else { json!(r.host_config.cap_add) },
            "CapDrop": if r.host_config.cap_drop.is_empty() { Value::Null } else { json!(r.host_config.cap_drop) },
            "CgroupnsMode": "private",
            "GroupAdd": if r.host_config.group_add.is_empty() { Value::Null } else { json!(r.host_config.group_add) },
            "Ulimits": if r.host_config.ulimits.is_empty() { Value::Null } else { json!(r.host_config.ulimits) },
            "SecurityOpt": if r.host_config.security_opt.is_empty() { Value::Null } else { json!(r.host_config.security_opt) },
            "Dns": r.host_config.dns,
            "DnsSearch": r.host_config.dns_search,
            "DnsOptions": r.host_config.dns_options,
            "ExtraHosts": if r.host_config.extra_hosts.is_empty() { Value::Null } else { json!(r.host_config.extra_hosts) },
            "RestartPolicy": {
                "Name": r.host_config.restart_policy,
                "MaximumRetryCount": r.host_config.restart_max_retries,
            },
            "AutoRemove": r.host_config.auto_remove,
            "Privileged": r.host_config.privileged,
            "Memory": r.host_config.memory,
            "NanoCpus": r.host_config.nano_cpus,
            "MemoryReservation": r.host_config.limits.memory_reservation,
            "MemorySwap": r.host_config.limits.memory_swap,
            "CpuShares": r.host_config.limits.cpu_shares,
            "CpuPeriod": r.host_config.limits.cpu_period,
            "CpuQuota": r.host_config.limits.cpu_quota,
            "CpusetCpus": r.host_config.limits.cpuset_cpus,
            "PidsLimit": r.host_config.limits.pids_limit,
            "Sysctls": if r.host_config.limits.sysctls.is_empty() { Value::Null } else { json!(r.host_config.limits.sysctls) },
            "Init": r.host_config.init,
            "ConsoleSize": r.host_config.console_size,
            "Isolation": "",
            "Runtime": engine::container::spec::RUNTIME,
        },
        "GraphDriver": { "Name": "overlay", "Data": null },
        "Mounts": r.host_config.mounts.iter().map(|m| m.inspect()).collect::<Vec<_>>(),
        "Config": {
            "Hostname": r.config.hostname,
            "Domainname": r.config.domainname,
            "User": r.config.user,
            "AttachStdin": r.config.attach_stdin,
            "AttachStdout": r.config.attach_stdout,
            "AttachStderr": r.config.attach_stderr,
            "Tty": r.config.tty,
            "OpenStdin": r.config.open_stdin,
            "StdinOnce": r.config.stdin_once,
            "Env": r.config.env,
            "Cmd": r.config.cmd,
            "Image": r.image,
            "Volumes": if r.config.volumes.is_empty() { Value::Null } else { json!(r.config.volumes) },
            "WorkingDir": r.config.working_dir,
            "Entrypoint": r.config.entrypoint,
            "OnBuild": null,
            "Labels": r.config.labels,
            "StopSignal": r.config.stop_signal,
            "StopTimeout": r.config.stop_timeout,
            "ExposedPorts": if r.config.exposed_ports.is_empty() { Value::Null } else { json!(r.config.exposed_ports) },
        },
        "NetworkSettings": super::networks::network_settings(&r)
    });
    if let Some(h) = &st.health {
        v["State"]["Health"] = json!({
            "Status": h.status,
            "FailingStreak": h.failing_streak,
            "Log": h.log.iter().map(|p| json!({
                "Start": rfc3339(p.start),
                "End": rfc3339(p.end),
                "ExitCode": p.exit_code,
                "Output": p.output,
            })).collect::<Vec<_>>(),
        });
    }
    if let Some(check) = &r.config.healthcheck {
        v["Config"]["Healthcheck"] = json!(check);
    }
    if with_size {
        let (rw, root) = state.engine.containers.sizes(&r.id).await?;
        v["SizeRw"] = json!(rw);
        v["SizeRootFs"] = json!(root);
    }
    json(StatusCode::OK, &v)
}

async fn wait(state: &Arc<State>, id: &str, q: &Query) -> ApiResult {
    let condition = match q.get("condition").unwrap_or("not-running") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid condition: {other:?}"
            )))
        }
    };
    // Resolve now so an unknown container is a 404, not a 200 with an error body.
    let c = state.engine.containers.get(id).await?;
    let id = c.id.clone();
    let (body, tx) = channel_body();
    let state = state.clone();
    // The status line goes out now; the body when the condition is met, as dockerd does
    // (the CLI sends wait before start and must know it is registered).
    tokio::spawn(async move {
        let result = state.engine.containers.wait(&id, condition).await;
        let value = match result {
            Ok(code) => json!({ "StatusCode": code, "Error": null }),
            Err(e) => json!({ "StatusCode": -1, "Error": { "Message": e.to_string() } }),
        };
        let _ = tx
            .send(Ok(Frame::data(Bytes::from(format!("{value}\n")))))
            .await;
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Docker's `label` filter on containers (moby's `MatchKVList`): every value must match,
/// `k` by the key alone, `k=v` by key and value.
fn labels_match(labels: &std::collections::BTreeMap<String, String>, values: &[String]) -> bool {
    values.iter().all(|v| match v.split_once('=') {
        Some((k, val)) => labels.get(k).is_some_and(|x| x == val),
        None => labels.contains_key(v.as_str()),
    })
}

/// Whether `docker container prune`'s filters let it remove a container with `labels`
/// created at `created` (dockerd's `label`, `label!` and `until`).
fn prunable(
    labels: &std::collections::BTreeMap<String, String>,
    created: SystemTime,
    filters: &HashMap<String, Vec<String>>,
    until: Option<SystemTime>,
) -> bool {
    if until.is_some_and(|u| created > u) {
        return false;
    }
    let label = filters.get("label").map_or(&[][..], Vec::as_slice);
    if !labels_match(labels, label) {
        return false;
    }
    match filters.get("label!").filter(|v| !v.is_empty()) {
        Some(not) => !labels_match(labels, not),
        None => true,
    }
}

/// `docker container prune`: every container not running that the filters let through;
/// the space reclaimed is their writable layers', as dockerd counts it.
async fn prune(state: &Arc<State>, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    if let Some(key) = filters
        .keys()
        .find(|k| !matches!(k.as_str(), "label" | "label!" | "until"))
    {
        return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
    }
    let until = match filters.get("until").map(Vec::as_slice) {
        None | Some([]) => None,
        Some([v]) => Some(
            engine::time::parse_filter_time(v, SystemTime::now())
                .ok_or_else(|| ApiError::bad_request(format!("invalid filter 'until={v}'")))?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "more than one until filter specified",
            ))
        }
    };
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for c in state.engine.containers.all().await {
        let r = c.record().await;
        if !matches!(
            r.state.status,
            Status::Created | Status::Exited | Status::Dead
        ) || !prunable(&r.config.labels, r.created, &filters, until)
        {
            continue;
        }
        // Measured before it goes; a layer that cannot be measured counts as nothing.
        let size = match state.engine.containers.sizes(&r.id).await {
            Ok((rw, _)) => rw,
            Err(_) => 0,
        };
        if state
            .engine
            .containers
            .remove(&r.id, false, false)
            .await
            .is_ok()
        {
            deleted.push(r.id);
            reclaimed = reclaimed.saturating_add(size);
        }
    }
    json(
        StatusCode::OK,
        &json!({ "ContainersDeleted": deleted, "SpaceReclaimed": reclaimed }),
    )
}

/// Docker's multiplexed framing: stream type, three zero bytes, big-endian length.
fn frame(stream: Stream, data: &[u8]) -> Vec<u8> {
    let kind = match stream {
        Stream::Stdout => 1u8,
        Stream::Stderr => 2u8,
    };
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub(crate) fn encode(tty: bool, stream: Stream, data: &[u8]) -> Vec<u8> {
    if tty {
        data.to_vec()
    } else {
        frame(stream, data)
    }
}

async fn attach(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    id: &str,
    q: &Query,
    version: Version,
) -> ApiResult {
    let c = state.engine.containers.get(id).await?;
    let r = c.record().await;
    // Attaching to a stopped container is how `docker start -a` begins: the stream stays
    // open and carries the next run's output (the CLI's own `docker attach` refuses stopped
    // containers before it asks).
    let stream = q.flag("stream");
    let want_stdin = q.flag("stdin") && r.config.open_stdin;
    let want_stdout = q.flag("stdout");
    let want_stderr = q.flag("stderr");
    let tty = r.config.tty;
    // dockerd scans only a terminal's input for the detach keys.
    let detach_keys = berthd::detach::parse(q.get("detachKeys").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let scanner = tty.then(|| berthd::detach::Scanner::new(detach_keys));
    // Register before answering, so output produced right after start is not missed.
    let output = stream.then(|| c.attach_output(256));
    let replay = if q.flag("logs") {
        let opts = LogOptions {
            stdout: want_stdout,
            stderr: want_stderr,
            ..Default::default()
        };
        LogReader::open(&c.log_path(), &opts)
            .map(|(_, e)| e)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    let content_type = if !tty && version >= Version(1, 42) {
        "application/vnd.docker.multiplexed-stream"
    } else {
        "application/vnd.docker.raw-stream"
    };
    let want = move |s: Stream| match s {
        Stream::Stdout => want_stdout,
        Stream::Stderr => want_stderr,
    };

    if !upgrade {
        // Plain HTTP: output only, until the container stops.
        let (body, tx) = channel_body();
        tokio::spawn(async move {
            for e in replay {
                if want(e.stream) {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from(encode(
                            tty, e.stream, &e.bytes,
                        )))))
                        .await;
                }
            }
            if let Some(mut rx) = output {
                while let Some(chunk) = rx.recv().await {
                    if want(chunk.stream)
                        && tx
                            .send(Ok(Frame::data(Bytes::from(encode(
                                tty,
                                chunk.stream,
                                &chunk.data,
                            )))))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        return Ok(resp);
    }

    let permit = stream_permit(state)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stdin_once = r.config.stdin_once;
    let container = c.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let Some((stream, early)) = upgraded_socket(on_upgrade, "attach").await else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (reader, mut writer) = stream.into_split();
        // Input the client sent with its request comes first.
        let mut reader = std::io::Cursor::new(early).chain(reader);
        // Input stops with the output: when the container is gone (or never started) there
        // is nothing left to feed.
        let detached = Arc::new(tokio::sync::Notify::new());
        let pump = want_stdin.then(|| {
            let c = container.clone();
            let detached = detached.clone();
            tokio::spawn(async move {
                if pump_stdin(&c, &mut reader, stdin_once, scanner).await {
                    detached.notify_one();
                }
            })
        });
        let _stop_pump = AbortOnDrop(pump);
        for e in replay {
            if want(e.stream)
                && writer
                    .write_all(&encode(tty, e.stream, &e.bytes))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if let Some(mut rx) = output {
            loop {
                // A client that hangs up while there is no output (a created container it
                // waits on) ends the stream and gives its permit back.
                let chunk = tokio::select! {
                    chunk = rx.recv() => chunk,
                    () = hung_up(fd) => None,
                    // The client typed the detach keys: its stream ends, the container runs on.
                    () = detached.notified() => None,
                };
                let Some(chunk) = chunk else { break };
                if want(chunk.stream)
                    && writer
                        .write_all(&encode(tty, chunk.stream, &chunk.data))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    });
    switching_protocols(content_type)
}

/// Copies an attached client's input to the container's stdin; with StdinOnce, the end of
/// the client's input closes the container's stdin. Returns `true` when the client typed
/// the detach keys (`scanner`, on a terminal): then stdin stays open for a later attach.
async fn pump_stdin<R: tokio::io::AsyncRead + Unpin>(
    c: &Arc<Container>,
    reader: &mut R,
    stdin_once: bool,
    mut scanner: Option<berthd::detach::Scanner>,
) -> bool {
    let mut sinks = c.stdin();
    let sink = loop {
        if let Some(s) = sinks.borrow_and_update().clone() {
            break s;
        }
        if c.record().await.state.status == Status::Exited && c.lifecycle().borrow().exits > 0 {
            return false;
        }
        if sinks.changed().await.is_err() {
            return false;
        }
    };
    let mut buf = vec![0u8; 32 << 10];
    let mut passed = Vec::with_capacity(buf.len());
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let detach = scan_input(scanner.as_mut(), &buf[..n], &mut passed);
        let mut guard = sink.lock().await;
        let Some(stdin) = guard.as_mut() else {
            return false;
        };
        if stdin.write_all(&passed).await.is_err() {
            return false;
        }
        if detach {
            return true;
        }
    }
    if stdin_once {
        // Dropping the stream closes it: the agent sees end of input.
        if let Some(mut s) = sink.lock().await.take() {
            let _ = s.shutdown().await;
        }
    }
    false
}

async fn logs(state: &Arc<State>, id: &str, q: &Query) -> ApiResult {
    let c = state.engine.containers.get(id).await?;
    let r = c.record().await;
    let stdout = q.flag("stdout");
    let stderr = q.flag("stderr");
    if !stdout && !stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let parse_time = |key: &str| -> Result<Option<SystemTime>, ApiError> {
        match q.get(key).filter(|s| !s.is_empty() && *s != "0") {
            None => Ok(None),
            Some(v) => parse_api_time(v)
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    };
    let tail = match q.get("tail") {
        None | Some("") | Some("all") => None,
        Some(t) => Some(
            t.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid tail: {t:?}")))?,
        ),
    };
    let opts = LogOptions {
        stdout,
        stderr,
        since: parse_time("since")?,
        until: parse_time("until")?,
        tail,
    };
    let follow = q.flag("follow");
    let timestamps = q.flag("timestamps");
    let tty = r.config.tty;
    let path = c.readable_log().await?;
    let (mut reader, first) = LogReader::open(&path, &opts)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let format_entry = move |e: &Entry| -> Bytes {
        let mut data = Vec::with_capacity(e.bytes.len() + 32);
        if timestamps {
            data.extend_from_slice(rfc3339(e.time).as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(&e.bytes);
        Bytes::from(encode(tty, e.stream, &data))
    };
    let (body, tx) = channel_body();
    let mut growth = c.log_growth();
    let mut lifecycle = c.lifecycle();
    tokio::spawn(async move {
        for e in &first {
            if tx.send(Ok(Frame::data(format_entry(e)))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            let running = lifecycle.borrow_and_update().running;
            let new = reader
                .read_new()
                .map(|e| LogReader::filter(&opts, e))
                .unwrap_or_default();
            for e in &new {
                if opts.until.is_some_and(|u| e.time > u) {
                    return;
                }
                if tx.send(Ok(Frame::data(format_entry(e)))).await.is_err() {
                    return;
                }
            }
            if !running && new.is_empty() {
                return;
            }
            tokio::select! {
                _ = growth.changed() => {}
                _ = lifecycle.changed() => {}
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp: Resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        }),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_and_durations() {
        assert_eq!(
            frame(Stream::Stderr, b"hi"),
            vec![2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(
            human_duration(std::time::Duration::from_secs(3)),
            "3 seconds"
        );
        assert_eq!(
            human_duration(std::time::Duration::from_secs(90)),
            "About a minute"
        );
        assert_eq!(
            human_duration(std::time::Duration::from_secs(7300)),
            "2 hours"
        );
    }
}
