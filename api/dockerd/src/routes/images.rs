//! The image endpoints: list, inspect, history, tag, remove, prune, load, save, import,
//! pull, push, search and build, in Docker's JSON shapes and progress streams for API 1.41.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use bytes::Bytes;
use engine::build::{BuildEvent, BuildOptions};
use engine::image::archive::{import_config, ImportOptions, LoadEvent};
use engine::image::pull::{Credentials, TransferEvent};
use engine::image::reference::Reference;
use engine::image::{DeleteItem, ImageDetails, ImageStore, ImageUsers, ListOptions};
use engine::EngineError;
use hyper::body::Frame;

use crate::http::{
    channel_body, full, json, percent_decode, spool_body, streamed_body, ApiError, ApiResult,
    BodyWriter, Query,
};
use crate::router::{not_found, State, Version};

pub async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
    _version: Version,
) -> ApiResult {
    let method = req.method().clone();
    let query = Query::parse(req.uri().query());
    if path == "/build" {
        if method != Method::POST {
            return Err(not_found());
        }
        return build(state, req, &query).await;
    }
    let rest = path.strip_prefix("/images").unwrap_or(path);
    match (&method, rest) {
        (&Method::GET, "/json") => list(state, &query),
        (&Method::POST, "/load") => load(state, req, &query),
        (&Method::GET, "/get") => save(state, query.all("names").to_vec()),
        (&Method::POST, "/create") => create(state, req, &query).await,
        (&Method::POST, "/prune") => prune(state, &query).await,
        (&Method::GET, "/search") => search(state, &req, &query).await,
        _ => {
            let Some(named) = rest.strip_prefix('/') else {
                return Err(not_found());
            };
            if method == Method::DELETE {
                return delete(state, &percent_decode(named), &query).await;
            }
            let (name, action) = match named.rsplit_once('/') {
                Some((n, a)) => (percent_decode(n), a),
                None => return Err(not_found()),
            };
            match (&method, action) {
                (&Method::GET, "json") => inspect(state, &name),
                (&Method::GET, "history") => history(state, &name),
                (&Method::GET, "get") => save(state, vec![name]),
                (&Method::POST, "tag") => tag(state, &name, &query).await,
                (&Method::POST, "push") => push(state, &req, &query, &name).await,
                _ => Err(not_found()),
            }
        }
    }
}

fn unsupported(message: impl Into<String>) -> ApiError {
    ApiError::from(EngineError::Unsupported(message.into()))
}

/// Runs a blocking store operation off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> engine::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("image task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

fn null_if_empty(v: &[String]) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        json!(v)
    }
}

fn list(state: &Arc<State>, q: &Query) -> ApiResult {
    let opts = ListOptions {
        all: q.flag("all"),
        filters: q.filters()?,
    };
    let images = state.engine.images.list(&opts)?;
    let out: Vec<Value> = images
        .iter()
        .map(|d| {
            // API < 1.43 shows untagged images as <none>.
            let (tags, digests) = if d.repo_tags.is_empty() && d.repo_digests.is_empty() {
                (json!(["<none>:<none>"]), json!(["<none>@<none>"]))
            } else {
                (null_if_empty(&d.repo_tags), null_if_empty(&d.repo_digests))
            };
            json!({
                "Containers": -1,
                "Created": d.created_unix,
                "Id": d.id,
                "Labels": d.config.config.as_ref().and_then(|c| c.labels.clone()),
                "ParentId": d.parent,
                "RepoDigests": digests,
                "RepoTags": tags,
                "SharedSize": -1,
                "Size": d.size,
                "VirtualSize": d.size,
            })
        })
        .collect();
    json(StatusCode::OK, &out)
}

fn inspect_json(d: &ImageDetails) -> Value {
    let c = &d.config;
    let mut lower: Vec<String> = d
        .layer_dirs
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    lower.dedup();
    json!({
        "Id": d.id,
        "RepoTags": d.repo_tags,
        "RepoDigests": d.repo_digests,
        "Parent": d.parent,
        "Comment": c.comment,
        "Created": c.created.clone().unwrap_or_else(|| engine::time::ZERO_TIME.to_string()),
        "Container": c.container,
        "ContainerConfig": c.container_config.clone().unwrap_or_default(),
        "DockerVersion": c.docker_version,
        "Author": c.author,
        "Config": c.config,
        "Architecture": c.architecture,
        "Variant": if c.variant.is_empty() { Value::Null } else { json!(c.variant) },
        "Os": c.os,
        "Size": d.size,
        "VirtualSize": d.size,
        "GraphDriver": {
            "Name": "overlayfs",
            "Data": { "LowerDir": lower.join(":") },
        },
        "RootFS": { "Type": "layers", "Layers": c.rootfs.diff_ids },
        "Metadata": {
            "LastTagTime": d.last_tag_time.clone().unwrap_or_else(|| engine::time::ZERO_TIME.to_string()),
        },
    })
}

fn inspect(state: &Arc<State>, name: &str) -> ApiResult {
    let d = state.engine.images.inspect(name)?;
    let mut v = inspect_json(&d);
    if v["Variant"].is_null() {
        if let Some(o) = v.as_object_mut() {
            o.remove("Variant");
        }
    }
    json(StatusCode::OK, &v)
}

fn history(state: &Arc<State>, name: &str) -> ApiResult {
    let items = state.engine.images.history(name)?;
    let out: Vec<Value> = items
        .iter()
        .map(|h| {
            json!({
                "Comment": h.comment,
                "Created": h.created,
                "CreatedBy": h.created_by,
                "Id": h.id,
                "Size": h.size,
                "Tags": null_if_empty(&h.tags),
            })
        })
        .collect();
    json(StatusCode::OK, &out)
}

async fn tag(state: &Arc<State>, name: &str, q: &Query) -> ApiResult {
    let (st, name) = (state.clone(), name.to_string());
    let repo = q.get("repo").unwrap_or("").to_string();
    let tag = q.get("tag").unwrap_or("").to_string();
    blocking(move || st.engine.images.tag(&name, &repo, &tag)).await?;
    Ok(crate::http::status(StatusCode::CREATED))
}

/// Who uses which image, for rmi's conflict rules.
async fn image_users(state: &Arc<State>) -> ImageUsers {
    state.engine.containers.image_users().await
}

fn delete_json(items: &[DeleteItem]) -> Vec<Value> {
    items
        .iter()
        .map(|i| match i {
            DeleteItem::Untagged(r) => json!({ "Untagged": r }),
            DeleteItem::Deleted(id) => json!({ "Deleted": id }),
        })
        .collect()
}

async fn delete(state: &Arc<State>, name: &str, q: &Query) -> ApiResult {
    let users = image_users(state).await;
    let force = q.flag("force");
    let prune = !q.flag("noprune");
    let (st, name) = (state.clone(), name.to_string());
    let items = blocking(move || st.engine.images.delete(&name, force, prune, &users)).await?;
    json(StatusCode::OK, &delete_json(&items))
}

/// `docker image prune`: dangling images (or, with `dangling=false`, every image no
/// container uses), narrowed by `label` and `until`.
async fn prune(state: &Arc<State>, q: &Query) -> ApiResult {
    let mut filters = q.filters()?;
    let dangling_only = match filters.remove("dangling").as_deref() {
        None | Some([]) => true,
        Some(v) if v.iter().all(|x| x == "true" || x == "1") => true,
        Some(v) if v.iter().all(|x| x == "false" || x == "0") => false,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid filter 'dangling=[{}]'",
                v.join(" ")
            )))
        }
    };
    for key in filters.keys() {
        if key != "label" && key != "until" {
            return Err(ApiError::bad_request(format!("Invalid filter '{key}'")));
        }
    }
    if dangling_only {
        filters.insert("dangling".into(), vec!["true".into()]);
    }
    let users = image_users(state).await;
    let st = state.clone();
    let (deleted, reclaimed) = blocking(move || {
        let candidates = st.engine.images.list(&ListOptions { all: true, filters })?;
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        for img in candidates {
            if users.contains_key(&img.id) {
                continue;
            }
            match st
                .engine
                .images
                .delete(&img.id, !dangling_only, true, &users)
            {
                Ok(items) => {
                    reclaimed += img.size;
                    deleted.extend(items);
                }
                Err(EngineError::Conflict(_)) | Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((deleted, reclaimed))
    })
    .await?;
    json(
        StatusCode::OK,
        &json!({
            "ImagesDeleted": if deleted.is_empty() { Value::Null } else { json!(delete_json(&deleted)) },
            "SpaceReclaimed": reclaimed,
        }),
    )
}

/// Docker's `quiet` default for load is true: only an explicit false shows progress.
fn quiet(q: &Query) -> bool {
    !matches!(q.get("quiet"), Some("0" | "false" | "False" | "FALSE"))
}

/// Docker's byte counts: decimal units, four significant digits (`32.77kB`, `2.13MB`).
fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let int_digits = if v < 1.0 {
        1
    } else {
        (v.log10().floor() as usize) + 1
    };
    let decimals = 4usize.saturating_sub(int_digits);
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[unit])
}

/// The progress bar Docker puts in `progress`.
fn progress_bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    // A length not known: the count alone, as Docker's progress shows it.
    if total == 0 {
        return format!("{:>8}", human_size(current));
    }
    let bars = (current.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}>{}] {:>8}/{}",
        "=".repeat(bars as usize),
        " ".repeat((WIDTH - bars) as usize),
        human_size(current),
        human_size(total)
    )
}

fn json_line(out: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    bytes.extend_from_slice(b"\r\n");
    out.write_all(&bytes)
}

fn error_line(message: &str) -> Value {
    json!({ "errorDetail": { "message": message }, "error": message })
}

/// `docker load`: always 200 with a JSON stream; errors arrive in the stream, as with
/// dockerd.
fn load(state: &Arc<State>, req: Request<Incoming>, q: &Query) -> ApiResult {
    let quiet = quiet(q);
    let scratch = state.engine.images.scratch_file()?;
    let upload = req.into_body();
    let (body, mut writer) = streamed_body();
    let st = state.clone();
    tokio::spawn(async move {
        let input = match spool_body(upload, scratch).await {
            Ok(file) => file,
            Err(e) => {
                log::info!("docker load failed: cannot receive the archive: {e}");
                let message = format!("cannot receive the archive: {e}");
                let _ = tokio::task::spawn_blocking(move || {
                    json_line(&mut writer, &error_line(&message))
                })
                .await;
                return;
            }
        };
        let _ = tokio::task::spawn_blocking(move || load_spooled(&st, input, quiet, writer)).await;
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The blocking half of `docker load`, on an archive already received.
fn load_spooled(st: &State, input: std::fs::File, quiet: bool, mut writer: BodyWriter) {
    {
        let result = {
            let mut emit = |e: LoadEvent| {
                let v = match e {
                    LoadEvent::Progress { .. } if quiet => return,
                    LoadEvent::Progress { id, current, total } => json!({
                        "status": "Loading layer",
                        "progressDetail": { "current": current, "total": total },
                        "progress": progress_bar(current, total),
                        "id": id,
                    }),
                    LoadEvent::Line(line) => json!({ "stream": line }),
                };
                // A client that went away stops seeing progress; the load goes on.
                let _ = json_line(&mut writer, &v);
            };
            st.engine
                .images
                .load(std::io::BufReader::new(input), &mut emit)
        };
        if let Err(e) = result {
            log::info!("docker load failed: {e}");
            let _ = json_line(&mut writer, &error_line(&e.to_string()));
        }
    }
}

/// `docker save`: names are checked before the archive starts streaming.
fn save(state: &Arc<State>, names: Vec<String>) -> ApiResult {
    let plan = state.engine.images.save_plan(&names)?;
    let (body, writer) = streamed_body();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut buffered = std::io::BufWriter::with_capacity(256 << 10, writer);
        let result = st.engine.images.save(&plan, &mut buffered);
        match (result, buffered.into_inner()) {
            (Ok(()), _) => {}
            (Err(e), Ok(writer)) => {
                log::warn!("docker save failed: {e}");
                writer.fail(std::io::Error::other(e.to_string()));
            }
            (Err(e), Err(_)) => log::warn!("docker save failed: {e}"),
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

/// `POST /images/create`: `docker import` (fromSrc), or `docker pull` (fromImage).
async fn create(state: &Arc<State>, req: Request<Incoming>, q: &Query) -> ApiResult {
    if let Some(image) = q.get("fromImage").filter(|s| !s.is_empty()) {
        return pull(state, &req, q, image).await;
    }
    let src = q.get("fromSrc").unwrap_or("");
    if src != "-" {
        return Err(unsupported(format!(
            "berth cannot import from {src:?}: only an archive sent with the request (`docker import FILE` or `docker import -`) is supported"
        )));
    }
    if let Some(p) = q.get("platform").filter(|p| !p.is_empty()) {
        if p != "linux" && p != "linux/amd64" {
            return Err(ApiError::bad_request(format!(
                "berth runs linux/amd64 images only, not {p}"
            )));
        }
    }
    let tag = ImageStore::repo_tag(q.get("repo").unwrap_or(""), q.get("tag").unwrap_or(""))?;
    let config = match import_config(q.all("changes")) {
        Ok(config) => config,
        Err(e) => {
            // Read the upload first, so the client sees the error rather than a broken pipe.
            use http_body_util::BodyExt;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            return Err(e.into());
        }
    };
    let comment = q
        .get("message")
        .filter(|m| !m.is_empty())
        .map(String::from)
        .unwrap_or_else(|| format!("Imported from {src}"));
    let opts = ImportOptions {
        tag,
        comment,
        config,
    };
    let scratch = state.engine.images.scratch_file()?;
    let input = spool_body(req.into_body(), scratch)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot receive the archive: {e}")))?;
    let st = state.clone();
    let id = blocking(move || {
        st.engine
            .images
            .import(std::io::BufReader::new(input), &opts)
    })
    .await?;
    let mut body = serde_json::to_vec(&json!({ "status": id })).unwrap_or_default();
    body.extend_from_slice(b"\r\n");
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The reference a pull names: `fromImage` with `tag` (a tag, or a digest).
fn pull_reference(image: &str, tag: &str) -> Result<Reference, ApiError> {
    let image = image.trim_end_matches(':');
    let base =
        Reference::parse_normalized(image).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if tag.is_empty() {
        return Ok(base);
    }
    if tag.contains(':') {
        if !engine::image::reference::valid_digest(tag) {
            return Err(ApiError::bad_request(format!("invalid digest {tag:?}")));
        }
        return Ok(Reference {
            tag: None,
            digest: Some(tag.to_string()),
            ..base
        });
    }
    base.with_tag(tag)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `GET /images/search`: `docker search`, asked of the registry the term names.
async fn search(state: &Arc<State>, req: &Request<Incoming>, q: &Query) -> ApiResult {
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {s:?}")))?,
        ),
        None => None,
    };
    let filters = q.filters()?;
    let credentials = registry_auth(req)?;
    let results = engine::image::search::search(
        state.engine.images.registries(),
        &engine::image::search::SearchOptions {
            term: q.get("term").unwrap_or(""),
            limit,
            filters: &filters,
            credentials: credentials.as_ref(),
        },
    )
    .await?;
    json(StatusCode::OK, &results)
}

/// The credentials of `X-Registry-Auth` (base64url JSON, padded or not), if any.
fn registry_auth(req: &Request<Incoming>) -> Result<Option<Credentials>, ApiError> {
    use base64::Engine as _;
    let Some(value) = req.headers().get("X-Registry-Auth") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let trimmed = text.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| ApiError::bad_request("X-Registry-Auth is not base64"))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) || bytes == b"{}" || bytes == b"null" {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("X-Registry-Auth is not valid: {e}")))
}

/// One pull event as a line of dockerd's progress stream.
fn transfer_line(e: &TransferEvent) -> Value {
    match e {
        TransferEvent::Status {
            id: Some(id),
            status,
        } => {
            json!({ "status": status, "progressDetail": {}, "id": id })
        }
        TransferEvent::Status { id: None, status } => json!({ "status": status }),
        TransferEvent::Pushed { tag, digest, size } => json!({
            "progressDetail": {},
            "aux": { "Tag": tag, "Digest": digest, "Size": size },
        }),
        TransferEvent::Progress {
            id,
            action,
            current,
            total,
        } => {
            let mut line = json!({
                "status": action,
                "progressDetail": { "current": current, "total": total },
                "progress": progress_bar(*current, *total),
            });
            // A download of the whole build's (ADD's URLs) has no id, and dockerd's line
            // then has none.
            if !id.is_empty() {
                line["id"] = json!(id);
            }
            line
        }
    }
}

fn line_bytes(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.extend_from_slice(b"\r\n");
    Bytes::from(bytes)
}

/// `docker pull`: a JSON progress stream. A pull that fails before it has anything to say
/// (a missing tag, refused credentials, a registry berth cannot reach) is an HTTP error, as
/// with dockerd; a later failure arrives in the stream.
async fn pull(state: &Arc<State>, req: &Request<Incoming>, q: &Query, image: &str) -> ApiResult {
    let r = pull_reference(image, q.get("tag").unwrap_or(""))?;
    let credentials = registry_auth(req)?;
    let platform = q.get("platform").map(String::from);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let images = state.engine.images.clone();
    let task = tokio::spawn(async move {
        images
            .pull(&r, platform.as_deref(), credentials, &tx)
            .await
            .map(Some)
    });
    transfer_stream("pull", rx, task).await
}

/// `docker push` (`POST /images/{name}/push?tag=`): every tag of the repository when the
/// request names none, as `docker push --all-tags` asks.
async fn push(state: &Arc<State>, req: &Request<Incoming>, q: &Query, name: &str) -> ApiResult {
    let r = pull_reference(name, q.get("tag").unwrap_or(""))?;
    let credentials = registry_auth(req)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let images = state.engine.images.clone();
    let task = tokio::spawn(async move { images.push(&r, credentials, &tx).await.map(|()| None) });
    transfer_stream("push", rx, task).await
}

/// A pull's or push's events as dockerd's JSON progress stream, ended by its last status
/// line (when it has one) or its error.
async fn transfer_stream(
    what: &'static str,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<TransferEvent>,
    task: tokio::task::JoinHandle<engine::Result<Option<String>>>,
) -> ApiResult {
    // The sender lives in the task: the channel yields what it said, then ends with it.
    let first = rx.recv().await;
    let Some(first) = first else {
        // The task's sender went without a word: it ended, and its end is the answer.
        let done = task
            .await
            .map_err(|e| EngineError::Internal(format!("the {what} failed: {e}")))?;
        let status = done?;
        return Err(ApiError::from(EngineError::Internal(format!(
            "the {what} ended without a word ({})",
            status.unwrap_or_default()
        ))));
    };
    let (body, out) = channel_body();
    tokio::spawn(async move {
        let _ = out
            .send(Ok(Frame::data(line_bytes(&transfer_line(&first)))))
            .await;
        while let Some(e) = rx.recv().await {
            let _ = out
                .send(Ok(Frame::data(line_bytes(&transfer_line(&e)))))
                .await;
        }
        let last = last_line(what, task.await, |status| {
            status.map(|s| json!({ "status": s }))
        });
        if let Some(last) = last {
            let _ = out.send(Ok(Frame::data(line_bytes(&last)))).await;
        }
    });
    Ok(json_stream(body))
}

/// The line a JSON progress stream ends with: what `ok` makes of the task's result, or its
/// error (logged) in Docker's error shape.
fn last_line<T>(
    what: &str,
    done: Result<engine::Result<T>, tokio::task::JoinError>,
    ok: impl FnOnce(T) -> Option<Value>,
) -> Option<Value> {
    match done {
        Ok(Ok(v)) => ok(v),
        Ok(Err(e)) => {
            log::info!("docker {what} failed: {e}");
            Some(error_line(&e.to_string()))
        }
        Err(e) => Some(error_line(&format!("the {what} failed: {e}"))),
    }
}

fn json_stream(body: crate::http::Body) -> Response<crate::http::Body> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The options of `POST /build` (the classic builder's; BuildKit's are refused by name).
fn build_options(req: &Request<Incoming>, q: &Query) -> Result<(BuildOptions, bool), ApiError> {
    if q.get("version").is_some_and(|v| v == "2") {
        return Err(unsupported(
            "berth has the classic builder only (no BuildKit): build with DOCKER_BUILDKIT=0",
        ));
    }
    if q.get("remote").is_some_and(|v| !v.is_empty()) {
        return Err(unsupported(
            "berth builds from an uploaded context only, not from a remote URL or Git repository",
        ));
    }
    if q.flag("squash") {
        return Err(unsupported("berth does not squash builds"));
    }
    let run_host_config = run_host_config(q)?;
    for key in ["cgroupparent", "cachefrom", "outputs"] {
        if q.get(key)
            .is_some_and(|v| !matches!(v, "" | "[]" | "null" | "{}"))
        {
            return Err(unsupported(format!("berth's builder does not take {key}")));
        }
    }
    if q.get("isolation")
        .is_some_and(|v| !matches!(v, "" | "default"))
    {
        return Err(unsupported("berth's builder does not take isolation"));
    }
    let json_map = |key: &str| -> Result<BTreeMap<String, Option<String>>, ApiError> {
        match q.get(key).filter(|v| !v.is_empty() && *v != "null") {
            None => Ok(BTreeMap::new()),
            Some(v) => serde_json::from_str(v)
                .map_err(|e| ApiError::bad_request(format!("invalid {key}: {e}"))),
        }
    };
    let mut tags = Vec::new();
    for t in q.all("t") {
        let r = Reference::parse_normalized(t)
            .map_err(|e| ApiError::bad_request(format!("invalid reference format: {t}: {e}")))?;
        if r.digest.is_some() {
            return Err(ApiError::bad_request(format!(
                "invalid reference format: {t}: a build tags, it cannot name a digest"
            )));
        }
        tags.push(r);
    }
    let platform = q.get("platform").unwrap_or("");
    if !matches!(platform, "" | "linux" | "linux/amd64") {
        return Err(unsupported(format!(
            "berth builds linux/amd64 images only, not {platform}"
        )));
    }
    let credentials = registry_config(req)?;
    let opts = BuildOptions {
        dockerfile: q.get("dockerfile").unwrap_or("").to_string(),
        tags,
        build_args: json_map("buildargs")?,
        labels: json_map("labels")?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        no_cache: q.flag("nocache"),
        remove: q
            .get("rm")
            .is_none_or(|v| matches!(v, "1" | "true" | "True")),
        force_remove: q.flag("forcerm"),
        pull: q.flag("pull"),
        target: q.get("target").unwrap_or("").to_string(),
        network_mode: q.get("networkmode").unwrap_or("").to_string(),
        run_host_config,
        credentials,
    };
    Ok((opts, q.flag("q")))
}

/// The resources and hosts `docker build` gives its RUN steps (`-m`, `--memory-swap`,
/// `--cpu-*`, `--cpuset-*`, `--shm-size`, `--ulimit`, `--add-host`), as the HostConfig
/// fields of each step's container; the CLI sends only those set. The container's create
/// checks them as it checks `docker run`'s.
fn run_host_config(q: &Query) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut hc = serde_json::Map::new();
    for (key, field) in [
        ("memory", "Memory"),
        ("memswap", "MemorySwap"),
        ("cpushares", "CpuShares"),
        ("cpuperiod", "CpuPeriod"),
        ("cpuquota", "CpuQuota"),
        ("shmsize", "ShmSize"),
    ] {
        let Some(v) = q.get(key).filter(|v| !v.is_empty() && *v != "0") else {
            continue;
        };
        let n: i64 = v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid {key}: {v:?} is not a number")))?;
        hc.insert(field.to_string(), n.into());
    }
    for (key, field) in [("cpusetcpus", "CpusetCpus"), ("cpusetmems", "CpusetMems")] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            hc.insert(field.to_string(), v.into());
        }
    }
    if let Some(v) = q
        .get("ulimits")
        .filter(|v| !matches!(*v, "" | "null" | "[]"))
    {
        let ulimits: Value = serde_json::from_str(v)
            .map_err(|e| ApiError::bad_request(format!("invalid ulimits: {e}")))?;
        hc.insert("Ulimits".to_string(), ulimits);
    }
    let hosts: Vec<Value> = q
        .all("extrahosts")
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| Value::from(h.to_string()))
        .collect();
    if !hosts.is_empty() {
        hc.insert("ExtraHosts".to_string(), Value::Array(hosts));
    }
    Ok(hc)
}

/// `X-Registry-Config`: credentials for the registries a build's FROM lines pull from
/// (base64 JSON, by registry host).
fn registry_config(req: &Request<Incoming>) -> Result<BTreeMap<String, Credentials>, ApiError> {
    use base64::Engine as _;
    let Some(text) = req
        .headers()
        .get("X-Registry-Config")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(BTreeMap::new());
    };
    let trimmed = text.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .map_err(|_| ApiError::bad_request("X-Registry-Config is not base64"))?;
    let all: BTreeMap<String, Credentials> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("X-Registry-Config is not valid: {e}")))?;
    Ok(all
        .into_iter()
        .map(|(k, v)| {
            let host = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            (host, v)
        })
        .collect())
}

/// `POST /build`: the classic builder. The context is received whole first (a spooled
/// file), then built; what the build says is dockerd's JSON stream. A build that fails
/// before it says anything (a bad context or Dockerfile) is the request's error.
async fn build(state: &Arc<State>, req: Request<Incoming>, q: &Query) -> ApiResult {
    let (opts, quiet) = build_options(&req, q)?;
    let scratch = state.engine.images.scratch_file()?;
    let context = spool_body(req.into_body(), scratch)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot receive the build context: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let builder = state.engine.builder();
    let task = tokio::spawn(async move { builder.build(context, opts, &tx).await });
    let line = move |e: &BuildEvent| -> Option<Value> {
        match e {
            BuildEvent::Stream(_) | BuildEvent::Pull(_) if quiet => None,
            BuildEvent::Stream(text) => Some(json!({ "stream": text })),
            BuildEvent::Pull(t) => Some(transfer_line(t)),
            BuildEvent::Built(id) => Some(json!({ "aux": { "ID": id } })),
        }
    };
    let first = rx.recv().await;
    let Some(first) = first else {
        let done = task
            .await
            .map_err(|e| EngineError::Internal(format!("the build failed: {e}")))?;
        let id = done?;
        return Err(ApiError::from(EngineError::Internal(format!(
            "the build ended without a word ({id})"
        ))));
    };
    let (body, out) = channel_body();
    tokio::spawn(async move {
        if let Some(v) = line(&first) {
            let _ = out.send(Ok(Frame::data(line_bytes(&v)))).await;
        }
        loop {
            // A client that goes away (seen even while the build says nothing: a long RUN
            // step) cancels the build: dropping the receiver tells the builder, which
            // kills the step's container, as dockerd cancels a build.
            let e = tokio::select! {
                e = rx.recv() => e,
                () = out.closed() => None,
            };
            let sent = match e.as_ref().and_then(&line) {
                Some(v) => out.send(Ok(Frame::data(line_bytes(&v)))).await.is_ok(),
                None => e.is_some(),
            };
            if e.is_none() || !sent {
                break;
            }
        }
        if out.is_closed() {
            drop(rx);
            let _ = task.await;
            return;
        }
        let last = last_line("build", task.await, |id| {
            quiet.then(|| json!({ "stream": format!("{id}\n") }))
        });
        if let Some(last) = last {
            let _ = out.send(Ok(Frame::data(line_bytes(&last)))).await;
        }
    });
    Ok(json_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bars_like_docker() {
        assert_eq!(human_size(32768), "32.77kB");
        assert_eq!(human_size(2_129_920), "2.13MB");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(
            progress_bar(32768, 2_129_920),
            "[>                                                  ]  32.77kB/2.13MB"
        );
        assert_eq!(
            progress_bar(2_129_920, 2_129_920),
            "[==================================================>]   2.13MB/2.13MB"
        );
        assert_eq!(progress_bar(32768, 0), " 32.77kB");
        let line = transfer_line(&TransferEvent::Progress {
            id: String::new(),
            action: "Downloading",
            current: 5,
            total: 10,
        });
        assert!(line.get("id").is_none(), "{line}");
        let q = Query::parse(Some("quiet=0"));
        assert!(!quiet(&q));
        assert!(quiet(&Query::parse(None)));
        assert!(quiet(&Query::parse(Some("quiet=1"))));
    }

    #[test]
    fn build_resources_become_the_run_steps_host_config() {
        // As the Docker CLI 20.10 sends `docker build -m 64m --memory-swap 128m
        // --cpu-shares 512 --cpu-quota 50000 --cpu-period 100000 --cpuset-cpus 0
        // --shm-size 32m --ulimit nofile=100:200 --add-host a:1.2.3.4 --add-host b:5.6.7.8`.
        let q = Query::parse(Some(
            "cpuperiod=100000&cpuquota=50000&cpusetcpus=0&cpushares=512&dockerfile=Dockerfile\
             &extrahosts=a%3A1.2.3.4&extrahosts=b%3A5.6.7.8&memory=67108864&memswap=134217728\
             &shmsize=33554432&ulimits=%5B%7B%22Name%22%3A%22nofile%22%2C%22Hard%22%3A200%2C\
             %22Soft%22%3A100%7D%5D&version=1",
        ));
        let hc = run_host_config(&q).unwrap();
        assert_eq!(
            Value::Object(hc),
            json!({
                "Memory": 67108864, "MemorySwap": 134217728, "CpuShares": 512,
                "CpuPeriod": 100000, "CpuQuota": 50000, "CpusetCpus": "0",
                "ShmSize": 33554432,
                "Ulimits": [{"Name": "nofile", "Hard": 200, "Soft": 100}],
                "ExtraHosts": ["a:1.2.3.4", "b:5.6.7.8"],
            })
        );
        // Left at the CLI's defaults: nothing.
        let q = Query::parse(Some("memory=0&cpushares=0&ulimits=null&cpusetcpus="));
        assert!(run_host_config(&q).unwrap().is_empty());
        // Not numbers, not JSON: refused.
        for bad in ["memory=lots", "ulimits=%5B"] {
            assert!(run_host_config(&Query::parse(Some(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn delete_items_in_docker_shape() {
        let v = delete_json(&[
            DeleteItem::Untagged("a:latest".into()),
            DeleteItem::Deleted("sha256:x".into()),
        ]);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"[{"Untagged":"a:latest"},{"Deleted":"sha256:x"}]"#
        );
    }
}
