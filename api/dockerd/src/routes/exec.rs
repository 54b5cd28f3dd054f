//! `docker exec`: `POST /containers/{id}/exec` (create), `POST /exec/{id}/start` (hijacked
//! like attach, or detached), `POST /exec/{id}/resize` and `GET /exec/{id}/json`.
//!
//! As with dockerd, the stream is upgraded before the process starts: a program that cannot
//! run is reported inside the stream, and its exit code (127, 126) in the exec's inspect,
//! which is where the Docker CLI takes its own exit code from.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use engine::container::exec::ExecIo;
use engine::container::logs::Stream;

use super::containers::encode;
use super::hijack::{
    hung_up, scan_input, stream_permit, switching_protocols, upgraded_socket, AbortOnDrop,
};
use crate::http::{channel_body, json, read_body, status, ApiError, ApiResult, Query};
use crate::router::{not_found, State, Version};

/// `/exec/...`.
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
    match (req.method().clone(), segs.as_slice()) {
        (Method::POST, ["exec", id, "start"]) => start(state, req, id, version).await,
        (Method::POST, ["exec", id, "resize"]) => {
            let h = q.int::<u16>("h")?.unwrap_or(0);
            let w = q.int::<u16>("w")?.unwrap_or(0);
            state.engine.containers.exec_resize(id, h, w).await?;
            Ok(status(StatusCode::OK))
        }
        (Method::GET, ["exec", id, "json"]) => inspect(state, id).await,
        _ => Err(not_found()),
    }
}

/// A JSON body that may be empty (`{}` then).
async fn body_object(body: Incoming) -> Result<Value, ApiError> {
    let bytes = read_body(body, crate::http::MAX_JSON_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))
}

/// `POST /containers/{id}/exec`.
pub async fn create(state: &Arc<State>, req: Request<Incoming>, container: &str) -> ApiResult {
    let body = body_object(req.into_body()).await?;
    let id = state
        .engine
        .containers
        .exec_create(container, &body)
        .await?;
    json(StatusCode::CREATED, &json!({ "Id": id }))
}

async fn inspect(state: &Arc<State>, id: &str) -> ApiResult {
    let exec = state.engine.containers.exec_get(id)?;
    let s = exec.state();
    let cfg = &exec.config;
    json(
        StatusCode::OK,
        &json!({
            "ID": exec.id,
            "Running": s.running,
            "ExitCode": s.exit_code,
            "ProcessConfig": {
                "tty": cfg.tty,
                "entrypoint": cfg.argv.first(),
                "arguments": cfg.argv.get(1..).unwrap_or_default(),
                "privileged": cfg.privileged,
                "user": cfg.user,
            },
            "OpenStdin": cfg.attach_stdin,
            "OpenStderr": cfg.attach_stderr,
            "OpenStdout": cfg.attach_stdout,
            "CanRemove": false,
            "ContainerID": exec.container_id,
            "DetachKeys": cfg.detach_keys,
            "Pid": s.pid,
        }),
    )
}

fn flag(body: &Value, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!("{key}: expected a boolean"))),
    }
}

async fn start(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    id: &str,
    version: Version,
) -> ApiResult {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body = body_object(req.into_body()).await?;
    let detach = flag(&body, "Detach")?;
    let exec = state.engine.containers.exec_get(id)?;
    if detach {
        state.engine.containers.exec_start(&exec.id, true).await?;
        return Ok(status(StatusCode::OK));
    }
    let s = exec.state();
    if s.exit_code.is_some() || s.started {
        // Refused before the stream is up, so the client hears why.
        state.engine.containers.exec_start(&exec.id, false).await?;
    }
    let tty = exec.config.tty;
    let scanner = match tty {
        true => Some(berthd::detach::Scanner::new(
            berthd::detach::parse(&exec.config.detach_keys).map_err(ApiError::bad_request)?,
        )),
        false => None,
    };
    let content_type = if !tty && version >= Version(1, 42) {
        "application/vnd.docker.multiplexed-stream"
    } else {
        "application/vnd.docker.raw-stream"
    };
    let Some(on_upgrade) = on_upgrade else {
        // Plain HTTP: output only, no input.
        let io = state.engine.containers.exec_start(&exec.id, false).await?;
        let (body, tx) = channel_body();
        tokio::spawn(async move {
            let mut output = merge_output(io.stdout, io.stderr);
            while let Some((stream, data)) = output.recv().await {
                let frame = Frame::data(Bytes::from(encode(tty, stream, &data)));
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            exec.exited().await;
        });
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        return Ok(resp);
    };
    let permit = stream_permit(state)?;
    let st = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let Some((socket, early)) = upgraded_socket(on_upgrade, "exec").await else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let (reader, mut writer) = socket.into_split();
        let io = match st.engine.containers.exec_start(&exec.id, false).await {
            Ok(io) => io,
            Err(e) => {
                // As dockerd: the error is the stream's last words.
                let text = format!("{e}\r\n");
                let _ = writer
                    .write_all(&encode(tty, Stream::Stdout, text.as_bytes()))
                    .await;
                let _ = writer.shutdown().await;
                return;
            }
        };
        let ExecIo {
            stdin,
            stdout,
            stderr,
        } = io;
        let reader = std::io::Cursor::new(early).chain(reader);
        let detached = Arc::new(tokio::sync::Notify::new());
        let pump = stdin.map(|sink| {
            let detached = detached.clone();
            tokio::spawn(async move {
                if pump_input(reader, sink, scanner).await {
                    detached.notify_one();
                }
            })
        });
        let _stop_pump = AbortOnDrop(pump);
        let mut output = merge_output(stdout, stderr);
        let mut client_gone = false;
        loop {
            let next = tokio::select! {
                next = output.recv() => next,
                () = hung_up(fd) => { client_gone = true; None }
                // Detached: the process runs on, as under dockerd, its output dropped.
                () = detached.notified() => { client_gone = true; None }
            };
            let Some((stream, data)) = next else { break };
            if writer.write_all(&encode(tty, stream, &data)).await.is_err() {
                client_gone = true;
                break;
            }
        }
        if client_gone {
            // The process goes on, as under dockerd; its output is dropped.
            return;
        }
        // Its exit code is recorded before the stream ends.
        tokio::select! {
            _ = exec.exited() => {}
            () = hung_up(fd) => return,
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    });
    switching_protocols(content_type)
}

/// The process's output streams as one channel of chunks, ending when both have ended.
fn merge_output(
    stdout: Option<tokio::net::UnixStream>,
    stderr: Option<tokio::net::UnixStream>,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    let (tx, rx) = mpsc::channel(16);
    for (stream, source) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
        let Some(mut source) = source else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = match source.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Copies the client's input to the process's stdin; the end of the input closes it (an
/// exec's stdin is closed with its client's, as under dockerd). Returns `true` when the
/// client typed the detach keys (`scanner`, on a terminal).
async fn pump_input<R: AsyncRead + Unpin>(
    mut reader: R,
    mut sink: tokio::net::UnixStream,
    mut scanner: Option<berthd::detach::Scanner>,
) -> bool {
    let mut buf = vec![0u8; 32 << 10];
    let mut passed = Vec::with_capacity(buf.len());
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let detach = scan_input(scanner.as_mut(), &buf[..n], &mut passed);
        if sink.write_all(&passed).await.is_err() {
            return false;
        }
        if detach {
            return true;
        }
    }
    let _ = sink.shutdown().await;
    false
}
