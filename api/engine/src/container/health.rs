//! Health checks (`--health-*`, an image's HEALTHCHECK): a probe run in the container's
//! namespaces inside its VM through the agent, as `docker exec` runs a process, every
//! interval while the container runs; `State.Health` and the `health_status` events follow
//! dockerd's rules (retries, start period, the last five results, output cut to 4 KiB).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_client::StdioStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::record::Status;
use super::{process_spec, vm, watcher, Container, Containers};
use crate::{EngineError, Result};

/// Docker's defaults, and its bounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
const MIN_INTERVAL_NS: i64 = 1_000_000;
/// dockerd keeps this much of a probe's output, and this many results.
const MAX_OUTPUT: usize = 4096;
const MAX_LOG_ENTRIES: usize = 5;
/// At most this many words in a probe's command: it is stored in the record.
const MAX_TEST_WORDS: usize = 4096;

pub const STARTING: &str = "starting";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// Docker's `Healthcheck` config, durations in nanoseconds (0: the default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Healthcheck {
    /// The probe's argv: `None` when health checks are off (`NONE`, `--no-healthcheck`)
    /// or none is configured.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self.test.first().map(String::as_str) {
            Some("CMD") if self.test.len() > 1 => Some(self.test[1..].to_vec()),
            Some("CMD-SHELL") if self.test.len() > 1 => Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                self.test[1..].join(" "),
            ]),
            _ => None,
        }
    }

    fn duration(ns: i64, default: Duration) -> Duration {
        if ns > 0 {
            Duration::from_nanos(ns as u64)
        } else {
            default
        }
    }

    pub fn interval(&self) -> Duration {
        Self::duration(self.interval, DEFAULT_INTERVAL)
    }

    pub fn timeout(&self) -> Duration {
        Self::duration(self.timeout, DEFAULT_TIMEOUT)
    }

    pub fn start_period(&self) -> Duration {
        Self::duration(self.start_period, Duration::ZERO)
    }

    pub fn retries(&self) -> u32 {
        if self.retries > 0 {
            u32::try_from(self.retries).unwrap_or(u32::MAX)
        } else {
            DEFAULT_RETRIES
        }
    }
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(message.into())
}

/// Reads a `Healthcheck` of a create request (or an image config), with dockerd's checks.
pub fn parse(v: Option<&Value>) -> Result<Option<Healthcheck>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("Healthcheck must be an object"))?;
    let mut check = Healthcheck::default();
    for (k, v) in obj {
        match k.as_str() {
            "Test" => {
                if v.is_null() {
                    continue;
                }
                let words = v
                    .as_array()
                    .ok_or_else(|| bad("Healthcheck.Test must be a list of strings"))?;
                if words.len() > MAX_TEST_WORDS {
                    return Err(bad(format!(
                        "Healthcheck.Test has more than {MAX_TEST_WORDS} words"
                    )));
                }
                check.test = words
                    .iter()
                    .map(|w| {
                        w.as_str()
                            .map(String::from)
                            .ok_or_else(|| bad("Healthcheck.Test must be a list of strings"))
                    })
                    .collect::<Result<_>>()?;
            }
            "Interval" | "Timeout" | "StartPeriod" | "Retries" => {
                if v.is_null() {
                    continue;
                }
                let n = v
                    .as_i64()
                    .ok_or_else(|| bad(format!("Healthcheck.{k} must be an integer")))?;
                match k.as_str() {
                    "Interval" => check.interval = n,
                    "Timeout" => check.timeout = n,
                    "StartPeriod" => check.start_period = n,
                    _ => check.retries = n,
                }
            }
            "StartInterval" if v.is_null() || v.as_i64() == Some(0) => {}
            other => {
                return Err(bad(format!(
                    "berth does not support Healthcheck.{other}: API 1.41 has no such field"
                )))
            }
        }
    }
    // dockerd's own wording.
    for (name, ns) in [
        ("Interval", check.interval),
        ("Timeout", check.timeout),
        ("StartPeriod", check.start_period),
    ] {
        if ns != 0 && ns < MIN_INTERVAL_NS {
            return Err(bad(format!(
                "{name} in Healthcheck cannot be less than 1ms"
            )));
        }
    }
    if check.retries < 0 {
        return Err(bad("Retries in Healthcheck cannot be negative"));
    }
    match check.test.first().map(String::as_str) {
        None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
        Some(other) => {
            return Err(bad(format!(
                "unknown type for Healthcheck.Test: {other} (CMD, CMD-SHELL or NONE)"
            )))
        }
    }
    Ok(Some(check))
}

/// What a container runs: its own check, with what it leaves unset taken from its image's,
/// as dockerd merges them.
pub fn merge(user: Option<Healthcheck>, image: Option<Healthcheck>) -> Option<Healthcheck> {
    match (user, image) {
        (None, image) => image,
        (Some(user), None) => Some(user),
        (Some(mut user), Some(image)) => {
            if user.test.is_empty() {
                user.test = image.test;
            }
            if user.interval == 0 {
                user.interval = image.interval;
            }
            if user.timeout == 0 {
                user.timeout = image.timeout;
            }
            if user.start_period == 0 {
                user.start_period = image.start_period;
            }
            if user.retries == 0 {
                user.retries = image.retries;
            }
            Some(user)
        }
    }
}

/// One probe's result (Docker's `HealthcheckResult`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: SystemTime,
    pub end: SystemTime,
    pub exit_code: i32,
    pub output: String,
}

/// Docker's `State.Health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<Probe>,
}

impl Health {
    pub fn starting() -> Health {
        Health {
            status: STARTING.into(),
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    /// Takes a probe's result in; `in_start_period`: failures do not count yet while the
    /// container has not been healthy once. Returns whether the status changed.
    pub fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) -> bool {
        let before = self.status.clone();
        if probe.exit_code == 0 {
            self.failing_streak = 0;
            self.status = HEALTHY.into();
        } else if !(in_start_period && self.status == STARTING) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= retries {
                self.status = UNHEALTHY.into();
            }
        }
        self.log.push(probe);
        if self.log.len() > MAX_LOG_ENTRIES {
            let excess = self.log.len() - MAX_LOG_ENTRIES;
            self.log.drain(..excess);
        }
        self.status != before
    }
}

/// Keeps the first `MAX_OUTPUT` bytes of what a probe wrote, reading (and dropping) the
/// rest so that the probe never blocks on a full pipe, until EOF or `deadline`.
fn drain(mut s: UnixStream, deadline: Instant) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

impl Containers {
    /// Starts the health monitor of a container that has just started, if it has a check.
    pub(super) async fn start_health_monitor(&self, c: &Arc<Container>) {
        let (check, started_at) = {
            let mut r = c.record.lock().await;
            let Some(check) = r.config.healthcheck.clone().filter(|h| h.argv().is_some()) else {
                r.state.health = None;
                return;
            };
            r.state.health = Some(Health::starting());
            if let Err(e) = c.save(&r).await {
                log::warn!("container {}: cannot save its health: {e}", c.id);
            }
            (check, r.state.started_at)
        };
        let this = self.clone();
        let c = c.clone();
        tokio::spawn(async move { this.monitor(c, check, started_at).await });
    }

    async fn monitor(&self, c: Arc<Container>, check: Healthcheck, started_at: Option<SystemTime>) {
        let mut lifecycle = c.lifecycle();
        let run = lifecycle.borrow_and_update().exits;
        let started = Instant::now();
        let mut probes: u64 = 0;
        loop {
            // The container's run ends the monitor: it stopped, or started again (a new
            // monitor took over).
            let ended = tokio::time::timeout(check.interval(), async {
                loop {
                    {
                        let l = lifecycle.borrow_and_update();
                        if !l.running || l.exits != run {
                            return;
                        }
                    }
                    if lifecycle.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await
            .is_ok();
            if ended || self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let paused = {
                let r = c.record.lock().await;
                if r.state.status != Status::Running || r.state.started_at != started_at {
                    break;
                }
                r.state.paused
            };
            if paused {
                // A paused guest runs nothing; dockerd's probes of a paused container fail
                // to start and are not counted either.
                continue;
            }
            probes += 1;
            let probe = self.probe(&c, &check, probes).await;
            let in_start_period = started.elapsed() < check.start_period();
            let mut r = c.record.lock().await;
            if r.state.status != Status::Running || r.state.started_at != started_at {
                break;
            }
            let health = r.state.health.get_or_insert_with(Health::starting);
            let changed = health.record(probe, check.retries(), in_start_period);
            let status = health.status.clone();
            if let Err(e) = c.save(&r).await {
                log::warn!("container {}: cannot save its health: {e}", c.id);
            }
            if changed {
                self.event(&r, &format!("health_status: {status}"), &[]);
            }
        }
    }

    /// Runs the probe once, within its timeout.
    async fn probe(&self, c: &Arc<Container>, check: &Healthcheck, n: u64) -> Probe {
        let start = SystemTime::now();
        let timeout = check.timeout();
        let (exit_code, output) = match self.run_probe(c, check, n, timeout).await {
            Ok(done) => done,
            Err(e) => (-1, e),
        };
        Probe {
            start,
            end: SystemTime::now(),
            exit_code,
            output,
        }
    }

    async fn run_probe(
        &self,
        c: &Arc<Container>,
        check: &Healthcheck,
        n: u64,
        timeout: Duration,
    ) -> std::result::Result<(i32, String), String> {
        let argv = check.argv().ok_or("no health check command")?;
        let record = c.record().await;
        let mut spec = process_spec(&record);
        spec.argv = argv;
        spec.init = false;
        spec.tty = false;
        spec.tty_size = None;
        spec.stdin = false;
        let id = format!("health-{n}");
        let mut control = match c.agent(|a| a.open_control()).await {
            Some(Ok(control)) => control,
            Some(Err(e)) => return Err(format!("cannot reach the container's agent: {e}")),
            None => return Err("the container is not running".into()),
        };
        control.set_request_timeout(Some(vm::AGENT_REQUEST_TIMEOUT));
        let deadline = Instant::now() + timeout;
        let pid_name = id.clone();
        let launched = tokio::task::spawn_blocking(move || {
            control
                .create_process(&pid_name, &spec)
                .map_err(|e| format!("cannot create the probe: {e}"))?;
            let out = control.attach(&pid_name, StdioStream::Stdout);
            let err = control.attach(&pid_name, StdioStream::Stderr);
            let (out, err) = match (out, err) {
                (Ok(o), Ok(e)) => (o, e),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = control.delete_process(&pid_name);
                    return Err(format!("cannot attach the probe's output: {e}"));
                }
            };
            if let Err(e) = control.start_process(&pid_name) {
                let _ = control.delete_process(&pid_name);
                return Err(format!("cannot start the probe: {e}"));
            }
            Ok((control, out, err))
        })
        .await
        .map_err(|e| format!("probe launcher: {e}"))??;
        let (control, out, err) = launched;
        // Output is read until the probe ends or its time is up, whichever is first.
        let readers = tokio::task::spawn_blocking(move || {
            let err_reader = std::thread::spawn(move || drain(err, deadline));
            let mut output = drain(out, deadline);
            output.extend(err_reader.join().unwrap_or_default());
            output.truncate(MAX_OUTPUT);
            output
        });
        let waited = tokio::time::timeout(timeout, watcher::wait_exit(control, &id)).await;
        let result = match waited {
            Ok(Ok(status)) => {
                let output = readers.await.unwrap_or_default();
                Ok((status.code, String::from_utf8_lossy(&output).into_owned()))
            }
            Ok(Err(e)) => Err(format!("lost the probe: {e}")),
            Err(_) => {
                let kill_id = id.clone();
                let _ = c.agent(move |a| a.signal(&kill_id, libc::SIGKILL)).await;
                Err(format!(
                    "Health check exceeded timeout ({})",
                    humantime_secs(timeout)
                ))
            }
        };
        let delete_id = id;
        let _ = c.agent(move |a| a.delete_process(&delete_id)).await;
        result
    }
}

/// A duration as Go prints it for whole and fractional seconds (`30s`, `1.5s`).
fn humantime_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(code: i32) -> Probe {
        Probe {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn the_cli_and_image_forms_parse() {
        let h = parse(Some(&json!({
            "Test": ["CMD-SHELL", "test -f /ready"],
            "Interval": 1_000_000_000i64,
            "Timeout": 2_000_000_000i64,
            "StartPeriod": 0,
            "Retries": 2
        })))
        .unwrap()
        .unwrap();
        assert_eq!(h.argv().unwrap(), ["/bin/sh", "-c", "test -f /ready"]);
        assert_eq!(h.interval(), Duration::from_secs(1));
        assert_eq!(h.timeout(), Duration::from_secs(2));
        assert_eq!(h.retries(), 2);
        let none = parse(Some(&json!({"Test": ["NONE"]}))).unwrap().unwrap();
        assert_eq!(none.argv(), None);
        let cmd = parse(Some(&json!({"Test": ["CMD", "true", "x"]})))
            .unwrap()
            .unwrap();
        assert_eq!(cmd.argv().unwrap(), ["true", "x"]);
        assert_eq!(cmd.interval(), DEFAULT_INTERVAL);
        assert_eq!(cmd.retries(), DEFAULT_RETRIES);
        assert_eq!(parse(Some(&Value::Null)).unwrap(), None);
    }

    #[test]
    fn bad_checks_are_refused_with_dockerds_words() {
        for (v, want) in [
            (json!({"Interval": 10}), "cannot be less than 1ms"),
            (json!({"Retries": -1}), "cannot be negative"),
            (json!({"Test": ["SHELL", "x"]}), "unknown type"),
            (json!({"Test": "true"}), "list of strings"),
            (json!({"Timeout": "1s"}), "must be an integer"),
            (json!([1]), "object"),
        ] {
            let e = parse(Some(&v)).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(parse(Some(&json!({"StartInterval": 5_000_000_000i64}))).is_err());
    }

    #[test]
    fn the_containers_check_inherits_what_it_leaves_unset() {
        let image = Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval: 5,
            retries: 7,
            ..Default::default()
        };
        let user = Healthcheck {
            interval: 9,
            ..Default::default()
        };
        let merged = merge(Some(user), Some(image.clone())).unwrap();
        assert_eq!(merged.test, image.test);
        assert_eq!(merged.interval, 9);
        assert_eq!(merged.retries, 7);
        assert_eq!(merge(None, Some(image.clone())), Some(image));
        let off = Healthcheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(merge(Some(off.clone()), None), Some(off));
    }

    #[test]
    fn retries_start_period_and_log_follow_dockerd() {
        let mut h = Health::starting();
        // Failures in the start period do not count while starting.
        assert!(!h.record(probe(1), 2, true));
        assert_eq!((h.status.as_str(), h.failing_streak), (STARTING, 0));
        assert!(h.record(probe(0), 2, true));
        assert_eq!(h.status, HEALTHY);
        // Once healthy, failures count even in the start period.
        assert!(!h.record(probe(1), 2, true));
        assert_eq!((h.status.as_str(), h.failing_streak), (HEALTHY, 1));
        assert!(h.record(probe(1), 2, false));
        assert_eq!((h.status.as_str(), h.failing_streak), (UNHEALTHY, 2));
        for _ in 0..10 {
            h.record(probe(1), 2, false);
        }
        assert_eq!(h.log.len(), MAX_LOG_ENTRIES);
        assert!(h.record(probe(0), 2, false));
        assert_eq!((h.status.as_str(), h.failing_streak), (HEALTHY, 0));
    }

    #[test]
    fn timeouts_print_as_go_does() {
        assert_eq!(humantime_secs(Duration::from_secs(30)), "30s");
        assert_eq!(humantime_secs(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humantime_secs(Duration::from_millis(200)), "200ms");
    }
}
