//! `docker exec`: more processes in a running container, run by the agent of its VM in the
//! container's root and namespaces, beside its main process.
//!
//! An exec instance is created (its configuration kept, nothing runs), then started once.
//! Each start opens a control connection of its own to the agent: it creates, attaches and
//! starts the process on it, then leaves the one `wait_process` request on it and reads the
//! answer asynchronously, so a long-running exec holds no thread and never blocks the
//! container's shared connection. The exit code is recorded before the exec's output
//! streams are handed back closed, so a client that inspects the exec when its stream ends
//! (the Docker CLI does, for its own exit code) always finds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_client::{ErrorCode, StdioStream, TtySize};
use serde_json::Value;
use tokio::sync::watch;

use super::record::Status;
use super::{lock_std, process_spec, vm, watcher, Container, Containers};
use crate::{ids, EngineError, Result};

/// Most exec instances kept per container; past it the oldest finished ones are forgotten
/// (dockerd keeps them until the container goes), and a container whose instances all
/// still run or wait to start refuses more.
pub const MAX_EXECS_PER_CONTAINER: usize = 256;
/// Longest `DetachKeys` kept.
const MAX_DETACH_KEYS_LEN: usize = 64;

/// What `POST /containers/{id}/exec` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecConfig {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub privileged: bool,
    pub detach_keys: String,
    /// Rows and columns at start (`ConsoleSize`), with a tty.
    pub console_size: Option<TtySize>,
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(message.into())
}

fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| {
                i.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad(format!("{field}: expected strings")))
            })
            .collect(),
        Some(_) => Err(bad(format!("{field}: expected a list of strings"))),
    }
}

fn text(v: Option<&Value>, field: &str) -> Result<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("{field}: expected a string"))),
    }
}

fn flag(v: Option<&Value>, field: &str) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{field}: expected a boolean"))),
    }
}

/// Reads an exec create request. Fields berth does not know are refused when set, as in
/// `docker create`: nothing a client asks for is silently dropped.
pub fn parse(body: &Value) -> Result<ExecConfig> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("the request body is not a JSON object"))?;
    for (k, v) in obj {
        let known = matches!(
            k.as_str(),
            "AttachStdin"
                | "AttachStdout"
                | "AttachStderr"
                | "DetachKeys"
                | "Tty"
                | "ConsoleSize"
                | "Env"
                | "Cmd"
                | "Privileged"
                | "User"
                | "WorkingDir"
                // Sent by the CLI, meaningless for an exec (dockerd ignores them too).
                | "Detach"
                | "Container"
        );
        if !known && !v.is_null() && v != &Value::Bool(false) && v != &Value::String(String::new())
        {
            return Err(EngineError::InvalidArgument(format!(
                "berth does not support the exec option {k}"
            )));
        }
    }
    let argv = strings(obj.get("Cmd"), "Cmd")?;
    if argv.is_empty() {
        return Err(bad("No exec command specified"));
    }
    let env = strings(obj.get("Env"), "Env")?;
    for e in &env {
        if e.is_empty() || e.starts_with('=') || e.contains('\0') {
            return Err(bad(format!("invalid environment variable: {e:?}")));
        }
    }
    let working_dir = text(obj.get("WorkingDir"), "WorkingDir")?;
    if !working_dir.is_empty() && !working_dir.starts_with('/') {
        return Err(bad(format!(
            "the working directory '{working_dir}' is invalid, it needs to be an absolute path"
        )));
    }
    let detach_keys = text(obj.get("DetachKeys"), "DetachKeys")?;
    if detach_keys.len() > MAX_DETACH_KEYS_LEN {
        return Err(bad("DetachKeys: too long"));
    }
    let tty = flag(obj.get("Tty"), "Tty")?;
    let console_size = match obj.get("ConsoleSize") {
        Some(Value::Array(a)) if a.len() == 2 => {
            let dim = |v: &Value| v.as_u64().map(|n| n.min(u64::from(u16::MAX)) as u16);
            match (dim(&a[0]), dim(&a[1])) {
                (Some(rows), Some(cols)) if tty && rows > 0 && cols > 0 => {
                    Some(TtySize { rows, cols })
                }
                (Some(_), Some(_)) => None,
                _ => return Err(bad("ConsoleSize: expected two numbers")),
            }
        }
        None | Some(Value::Null) => None,
        Some(_) => return Err(bad("ConsoleSize: expected [height, width]")),
    };
    Ok(ExecConfig {
        argv,
        env,
        user: text(obj.get("User"), "User")?,
        working_dir,
        tty,
        attach_stdin: flag(obj.get("AttachStdin"), "AttachStdin")?,
        attach_stdout: flag(obj.get("AttachStdout"), "AttachStdout")?,
        attach_stderr: flag(obj.get("AttachStderr"), "AttachStderr")?,
        privileged: flag(obj.get("Privileged"), "Privileged")?,
        detach_keys,
        console_size,
    })
}

/// Where an exec instance is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    /// Set once it has ended (or failed to start: 126, 127).
    pub exit_code: Option<i32>,
    /// Its pid in the guest while it runs.
    pub pid: u32,
}

/// One exec instance.
pub struct Exec {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    created: SystemTime,
    state: watch::Sender<ExecState>,
}

impl Exec {
    pub fn state(&self) -> ExecState {
        *self.state.borrow()
    }

    /// Waits until it has ended, and returns its exit code.
    pub async fn exited(&self) -> i32 {
        let mut rx = self.state.subscribe();
        loop {
            if let Some(code) = rx.borrow_and_update().exit_code {
                return code;
            }
            if rx.changed().await.is_err() {
                return self.state().exit_code.unwrap_or(-1);
            }
        }
    }

    /// The agent's id of its process.
    fn process_id(&self) -> String {
        format!("exec-{}", ids::short(&self.id))
    }
}

/// A started exec's streams, as asked at create (none when detached). Output streams end
/// when the process has ended and its output is drained.
pub struct ExecIo {
    pub stdin: Option<tokio::net::UnixStream>,
    pub stdout: Option<tokio::net::UnixStream>,
    pub stderr: Option<tokio::net::UnixStream>,
}

/// Every exec instance of this engine, by id.
pub type ExecTable = Arc<std::sync::Mutex<HashMap<String, Arc<Exec>>>>;

fn no_such_exec(id: &str) -> EngineError {
    EngineError::NotFound(format!("No such exec instance: {id}"))
}

fn can_exec(c: &Container, status: Status, paused: bool) -> Result<()> {
    if status != Status::Running {
        return Err(EngineError::Conflict(format!(
            "Container {} is not running",
            c.id
        )));
    }
    if paused {
        return Err(EngineError::Conflict(format!(
            "Container {} is paused, unpause the container before exec",
            c.id
        )));
    }
    Ok(())
}

fn to_std(s: std::os::unix::net::UnixStream) -> Result<tokio::net::UnixStream> {
    s.set_nonblocking(true)
        .map_err(|e| EngineError::internal("exec stream", e))?;
    tokio::net::UnixStream::from_std(s).map_err(|e| EngineError::internal("exec stream", e))
}

/// `env` with `over`'s variables replacing those of the same name, then appended: Docker's
/// merge of an exec's `-e` over the container's environment.
fn merge_env(env: &mut Vec<String>, over: &[String]) {
    for e in over {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => slot.clone_from(e),
            None => env.push(e.clone()),
        }
    }
}

impl Containers {
    /// `POST /containers/{id}/exec`: an exec instance of a running container.
    pub async fn exec_create(&self, name_or_id: &str, body: &Value) -> Result<String> {
        let c = self.get(name_or_id).await?;
        let config = parse(body)?;
        {
            let r = c.record.lock().await;
            can_exec(&c, r.state.status, r.state.paused)?;
        }
        let id = ids::new_id();
        let exec = Arc::new(Exec {
            id: id.clone(),
            container_id: c.id.clone(),
            config,
            created: SystemTime::now(),
            state: watch::channel(ExecState::default()).0,
        });
        let live: std::collections::HashSet<String> =
            self.registry.read().await.by_id.keys().cloned().collect();
        let action = format!("exec_create: {}", exec.config.argv.join(" "));
        {
            let mut table = lock_std(&self.execs);
            // Instances of removed containers go with them.
            table.retain(|_, e| live.contains(&e.container_id));
            let mut mine: Vec<(SystemTime, String, bool)> = table
                .values()
                .filter(|e| e.container_id == c.id)
                .map(|e| (e.created, e.id.clone(), e.state().exit_code.is_some()))
                .collect();
            if mine.len() >= MAX_EXECS_PER_CONTAINER {
                mine.sort();
                let excess = mine.len() + 1 - MAX_EXECS_PER_CONTAINER;
                let finished: Vec<String> = mine
                    .into_iter()
                    .filter(|(_, _, done)| *done)
                    .map(|(_, id, _)| id)
                    .take(excess)
                    .collect();
                if finished.len() < excess {
                    return Err(EngineError::Conflict(format!(
                    "container {} already has {MAX_EXECS_PER_CONTAINER} exec instances running or waiting to start",
                    c.id
                )));
                }
                for id in finished {
                    table.remove(&id);
                }
            }
            table.insert(id.clone(), exec);
        }
        self.event(&c.record().await, &action, &[("execID", id.clone())]);
        Ok(id)
    }

    /// An exec instance by id (or unique prefix).
    pub fn exec_get(&self, id: &str) -> Result<Arc<Exec>> {
        let table = lock_std(&self.execs);
        if let Some(e) = table.get(id) {
            return Ok(e.clone());
        }
        if ids::is_hex_prefix(id) {
            let mut found = table.values().filter(|e| e.id.starts_with(id));
            if let (Some(e), None) = (found.next(), found.next()) {
                return Ok(e.clone());
            }
        }
        Err(no_such_exec(id))
    }

    /// The ids of a container's exec instances (`ExecIDs` in its inspect), oldest first.
    pub fn exec_ids(&self, container_id: &str) -> Vec<String> {
        let mut mine: Vec<(SystemTime, String)> = lock_std(&self.execs)
            .values()
            .filter(|e| e.container_id == container_id)
            .map(|e| (e.created, e.id.clone()))
            .collect();
        mine.sort();
        mine.into_iter().map(|(_, id)| id).collect()
    }

    /// `POST /exec/{id}/start`: runs it. `detach`: no stream is attached (the output goes
    /// nowhere, as with dockerd). A program that cannot be run is an error worded as
    /// dockerd words it, and the exec's exit code is Docker's 127 or 126.
    pub async fn exec_start(&self, id: &str, detach: bool) -> Result<ExecIo> {
        let exec = self.exec_get(id)?;
        {
            let mut refused = None;
            exec.state.send_if_modified(|s| {
                if s.exit_code.is_some() {
                    refused = Some(format!("Error: Exec command {} has already run", exec.id));
                    false
                } else if s.started {
                    refused = Some(format!(
                        "Error: Exec command {} is already running",
                        exec.id
                    ));
                    false
                } else {
                    s.started = true;
                    true
                }
            });
            if let Some(message) = refused {
                return Err(EngineError::Conflict(message));
            }
        }
        let started = self.exec_launch(&exec, detach).await;
        match started {
            Ok(io) => Ok(io),
            Err((code, e)) => {
                exec.state.send_modify(|s| {
                    s.running = false;
                    s.exit_code = Some(code);
                });
                Err(e)
            }
        }
    }

    async fn exec_launch(
        &self,
        exec: &Arc<Exec>,
        detach: bool,
    ) -> std::result::Result<ExecIo, (i32, EngineError)> {
        let internal = |e: EngineError| (126, e);
        let c = self.get(&exec.container_id).await.map_err(internal)?;
        let record = c.record().await;
        can_exec(&c, record.state.status, record.state.paused).map_err(internal)?;
        let mut spec = process_spec(&record);
        // The container's init, if it has one, is already running.
        spec.init = false;
        let cfg = &exec.config;
        spec.argv = cfg.argv.clone();
        merge_env(&mut spec.env, &cfg.env);
        if cfg.tty && !spec.env.iter().any(|e| e.starts_with("TERM=")) {
            spec.env.push("TERM=xterm".to_string());
        }
        if !cfg.working_dir.is_empty() {
            spec.cwd = cfg.working_dir.clone();
        }
        if !cfg.user.is_empty() {
            spec.user = Some(cfg.user.clone());
        }
        spec.tty = cfg.tty;
        spec.tty_size = cfg.console_size.filter(|_| cfg.tty);
        let (want_in, want_out, want_err) = if detach {
            (false, false, false)
        } else {
            (cfg.attach_stdin, cfg.attach_stdout, cfg.attach_stderr)
        };
        spec.stdin = want_in;
        if cfg.privileged {
            spec.capabilities = Some(
                agent_protocol::caps::NAMES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
        }
        let pid_name = exec.process_id();
        let argv0 = spec.argv.first().cloned().unwrap_or_default();
        let opened = c.agent(|a| a.open_control()).await;
        let mut control = match opened {
            Some(Ok(control)) => control,
            Some(Err(e)) => {
                return Err(internal(EngineError::Internal(format!(
                    "cannot reach the agent of container {}: {e}",
                    c.id
                ))))
            }
            None => {
                return Err(internal(EngineError::Conflict(format!(
                    "Container {} is not running",
                    c.id
                ))))
            }
        };
        control.set_request_timeout(Some(vm::AGENT_REQUEST_TIMEOUT));
        let launched = tokio::task::spawn_blocking(move || {
            let fail = |what: &str, e: agent_client::ClientError| {
                (126, EngineError::Internal(format!("{what}: {e}")))
            };
            control
                .create_process(&pid_name, &spec)
                .map_err(|e| fail("the guest agent refused the exec", e))?;
            let attach = |on: bool, stream: StdioStream| -> std::result::Result<_, _> {
                if !on {
                    return Ok(None);
                }
                control
                    .attach(&pid_name, stream)
                    .map(Some)
                    .map_err(|e| fail("cannot attach the exec's stream", e))
            };
            let stdin = attach(want_in, StdioStream::Stdin)?;
            let stdout = attach(want_out, StdioStream::Stdout)?;
            let stderr = attach(want_err && !spec.tty, StdioStream::Stderr)?;
            match control.start_process(&pid_name) {
                Ok(pid) => Ok((control, pid, stdin, stdout, stderr)),
                Err(e) => {
                    let _ = control.delete_process(&pid_name);
                    Err(match e.code() {
                        // Worded as dockerd words it; the exit code is what the CLI reports.
                        Some(ErrorCode::NotFound) => (
                            127,
                            EngineError::InvalidArgument(format!(
                                "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{argv0}\": executable file not found in $PATH: unknown"
                            )),
                        ),
                        Some(ErrorCode::PermissionDenied) => (
                            126,
                            EngineError::InvalidArgument(format!(
                                "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{argv0}\": permission denied: unknown"
                            )),
                        ),
                        _ => fail("cannot start the exec", e),
                    })
                }
            }
        })
        .await
        .map_err(|e| internal(EngineError::internal("exec launcher", e)))?;
        let (control, pid, stdin, stdout, stderr) = launched?;
        exec.state.send_modify(|s| {
            s.running = true;
            s.pid = pid;
        });
        self.event(
            &record,
            &format!("exec_start: {}", exec.config.argv.join(" ")),
            &[("execID", exec.id.clone())],
        );
        let io = ExecIo {
            stdin: stdin.map(to_std).transpose().map_err(internal)?,
            stdout: stdout.map(to_std).transpose().map_err(internal)?,
            stderr: stderr.map(to_std).transpose().map_err(internal)?,
        };
        let exec = exec.clone();
        let container = c.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let pid_name = exec.process_id();
            let status = watcher::wait_exit(control, &pid_name).await;
            let code = match status {
                Ok(s) => s.code,
                Err(e) => {
                    // The connection broke: the VM went down (the container stopped, and its
                    // processes with it), or stopped answering.
                    let mut lifecycle = container.lifecycle();
                    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
                        while lifecycle.borrow_and_update().running {
                            if lifecycle.changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await
                    .is_ok();
                    if stopped {
                        137
                    } else {
                        log::warn!("container {}: lost exec {}: {e}", container.id, exec.id);
                        255
                    }
                }
            };
            exec.state.send_modify(|s| {
                s.running = false;
                s.exit_code = Some(code);
            });
            this.event(
                &container.record().await,
                "exec_die",
                &[("execID", exec.id.clone()), ("exitCode", code.to_string())],
            );
            // The agent keeps an exited process until it is deleted.
            let _ = container.agent(move |a| a.delete_process(&pid_name)).await;
        });
        Ok(io)
    }

    /// `POST /exec/{id}/resize`. An exec that is about to start is waited for briefly
    /// (the Docker CLI resizes as soon as its stream is up); one that has ended has nothing
    /// to resize.
    pub async fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let exec = self.exec_get(id)?;
        let mut rx = exec.state.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let s = *rx.borrow_and_update();
                if s.running || s.exit_code.is_some() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let s = exec.state();
        if !s.running {
            if s.exit_code.is_some() {
                return Ok(());
            }
            return Err(EngineError::Conflict(format!(
                "exec {} is not running",
                exec.id
            )));
        }
        if !exec.config.tty {
            return Ok(());
        }
        let c = self.get(&exec.container_id).await?;
        let pid_name = exec.process_id();
        match c.agent(move |a| a.resize_tty(&pid_name, rows, cols)).await {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) if exec.state().exit_code.is_some() => {
                log::debug!("exec {}: resized after its end: {e}", exec.id);
                Ok(())
            }
            Some(Err(e)) => Err(EngineError::Internal(format!(
                "cannot resize exec {}: {e}",
                exec.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_request_parses() {
        let c = parse(&json!({
            "User": "nobody", "Privileged": false, "Tty": true, "ConsoleSize": [30, 100],
            "AttachStdin": true, "AttachStderr": true, "AttachStdout": true, "Detach": false,
            "DetachKeys": "ctrl-p,ctrl-q", "Env": ["A=1"], "WorkingDir": "/tmp",
            "Cmd": ["sh", "-c", "id"]
        }))
        .unwrap();
        assert_eq!(c.argv, ["sh", "-c", "id"]);
        assert_eq!(
            c.console_size,
            Some(TtySize {
                rows: 30,
                cols: 100
            })
        );
        assert!(c.tty && c.attach_stdin && !c.privileged);
        assert_eq!(
            (c.user.as_str(), c.working_dir.as_str()),
            ("nobody", "/tmp")
        );
        // No tty: the console size means nothing.
        let c = parse(&json!({"Cmd": ["true"], "ConsoleSize": [30, 100]})).unwrap();
        assert_eq!(c.console_size, None);
    }

    #[test]
    fn bad_requests_are_refused() {
        for (body, says) in [
            (json!({"Cmd": []}), "No exec command specified"),
            (json!({}), "No exec command specified"),
            (json!({"Cmd": ["x"], "WorkingDir": "rel"}), "absolute path"),
            (json!({"Cmd": ["x"], "Env": ["=x"]}), "invalid environment"),
            (json!({"Cmd": ["x"], "Tty": "yes"}), "expected a boolean"),
            (json!({"Cmd": ["x"], "ConsoleSize": "big"}), "ConsoleSize"),
            (
                json!({"Cmd": ["x"], "Future": 1}),
                "does not support the exec option Future",
            ),
            (json!(["x"]), "not a JSON object"),
        ] {
            let e = parse(&body).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn exec_env_replaces_and_extends_the_container_env() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        merge_env(&mut env, &["A=2".into(), "B=3".into(), "PATH=/x".into()]);
        assert_eq!(env, ["PATH=/x", "A=2", "B=3"]);
    }
}
