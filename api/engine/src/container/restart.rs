//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`), as dockerd applies
//! them: after each exit the policy decides; a restart waits out a backoff that starts at
//! 100 ms and doubles up to a minute (reset by a run of 10 s or more); a `docker stop` or
//! `kill` is never undone by the policy, and is remembered across berthd restarts for
//! `unless-stopped`. When berthd starts, every container whose policy says so and that has
//! run before is started again.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::record::Status;
use super::{lock_std, spec, Container, Containers};
use crate::{EngineError, Result};

/// The first backoff.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// What a container's policy keeps between its runs (in memory: a berthd restart starts the
/// backoff over, as a dockerd restart does).
#[derive(Debug, Default)]
pub(super) struct RestartState {
    backoff: Duration,
    /// The next exit is a client's doing (`docker stop`, `kill`): no restart after it.
    pub exit_on_next: bool,
}

impl RestartState {
    /// The wait before the next restart of a container that ran for `ran`.
    fn next_backoff(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.backoff = Duration::ZERO;
        }
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        self.backoff
    }
}

impl Containers {
    /// A client stops or kills the container: its policy must not start it again after this
    /// exit, and `unless-stopped` remembers. Not when berthd itself stops it at shutdown.
    pub(super) async fn stopped_by_client(&self, c: &Container, ends_it: bool) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        if ends_it {
            lock_std(&c.restart).exit_on_next = true;
        }
        let mut r = c.record.lock().await;
        if !r.state.manually_stopped {
            r.state.manually_stopped = true;
            if let Err(e) = c.save(&r).await {
                log::warn!("container {}: {e}", c.id);
            }
        }
    }

    /// Called by the exit watcher as it records the exit, under the same record lock, so
    /// that no one sees the container exited and not restarting when its policy will start
    /// it again (a stop in between would find nothing to stop, and lose to the restart):
    /// decides by the policy, counts the restart and marks the container restarting.
    /// Returns the backoff to wait, once the VM is off, before `schedule_restart`.
    pub(super) fn decide_restart(
        &self,
        c: &Container,
        r: &mut super::record::Record,
        exit_code: i32,
    ) -> Option<Duration> {
        let exit_on_next = std::mem::take(&mut lock_std(&c.restart).exit_on_next);
        if exit_on_next
            || self.shutting_down.load(Ordering::SeqCst)
            || r.host_config.auto_remove
            || !r
                .host_config
                .should_restart(exit_code, r.restart_count, r.state.manually_stopped)
        {
            return None;
        }
        let ran = match (r.state.started_at, r.state.finished_at) {
            (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let delay = lock_std(&c.restart).next_backoff(ran);
        r.restart_count = r.restart_count.saturating_add(1);
        r.state.restarting = true;
        Some(delay)
    }

    /// Starts the container again after `delay`, unless a client cancels the restart
    /// meanwhile.
    pub(super) fn schedule_restart(&self, c: &Container, delay: Duration) {
        log::debug!(
            "container {}: its restart policy starts it in {delay:?}",
            c.id
        );
        let this = self.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.restart_now(&id).await;
        });
    }

    /// Starts a container its policy restarts, unless a client cancelled that meanwhile
    /// (stop, start, rm).
    async fn restart_now(&self, id: &str) {
        let Ok(c) = self.get(id).await else { return };
        if self.shutting_down.load(Ordering::SeqCst) || !c.record.lock().await.state.restarting {
            return;
        }
        if let Err(e) = self.start_by_policy(id).await {
            log::warn!("container {id}: its restart policy could not start it: {e}");
            let mut r = c.record.lock().await;
            if r.state.restarting {
                r.state.restarting = false;
                r.state.error = format!("restart failed: {e}");
                r.state.finished_at = Some(SystemTime::now());
                if let Err(e) = c.save(&r).await {
                    log::warn!("container {id}: {e}");
                }
            }
        }
    }

    /// Cancels a pending restart; whether there was one.
    pub(super) async fn cancel_restart(&self, c: &Container) -> Result<bool> {
        let mut r = c.record.lock().await;
        if !r.state.restarting {
            return Ok(false);
        }
        r.state.restarting = false;
        c.save(&r).await?;
        Ok(true)
    }

    /// At berthd's start: starts every container whose policy says so, as dockerd does
    /// when it starts (only containers that have run before; `always` even after a
    /// `docker stop`). Each start runs on its own.
    pub async fn restart_by_policy(&self) {
        let mut due = Vec::new();
        for c in self.all().await {
            let mut r = c.record.lock().await;
            let was_waiting = std::mem::take(&mut r.state.restarting);
            if r.state.status == Status::Exited
                && r.state.started_at.is_some()
                && (was_waiting
                    || r.host_config.should_restart(
                        r.state.exit_code,
                        r.restart_count,
                        r.state.manually_stopped,
                    ))
            {
                r.state.restarting = true;
                due.push(c.id.clone());
            }
            if was_waiting || r.state.restarting {
                if let Err(e) = c.save(&r).await {
                    log::warn!("container {}: {e}", c.id);
                }
            }
        }
        for id in due {
            let this = self.clone();
            tokio::spawn(async move { this.restart_now(&id).await });
        }
    }
}

impl Containers {
    /// `docker update`: its restart policy. The VM's size is fixed when it starts, so CPU
    /// and memory changes are refused by name, as is every other resource field.
    pub async fn update(&self, name_or_id: &str, body: &serde_json::Value) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let obj = body.as_object().ok_or_else(|| {
            EngineError::InvalidArgument("the request body is not a JSON object".into())
        })?;
        for (k, v) in obj {
            if k != "RestartPolicy" && !spec::is_unset_value(v) {
                return Err(EngineError::InvalidArgument(format!(
                    "berth does not support updating {k}: a container's VM keeps the CPUs and memory it started with"
                )));
            }
        }
        // An empty name leaves the policy as it is (the CLI sends one with every update).
        let Some(policy) = obj
            .get("RestartPolicy")
            .filter(|v| v.get("Name").is_some_and(|n| n != "" && !n.is_null()))
        else {
            return Ok(());
        };
        let (name, max) = spec::parse_restart_policy(Some(policy))?;
        let mut r = c.record.lock().await;
        if r.host_config.auto_remove && name != super::record::restart::NO {
            return Err(EngineError::InvalidArgument(
                "Restart policy cannot be updated because AutoRemove is enabled for the container"
                    .into(),
            ));
        }
        r.host_config.restart_policy = name;
        r.host_config.restart_max_retries = max;
        c.save(&r).await?;
        self.event(&r, "update", &[]);
        Ok(())
    }

    /// `docker restart`: stop (if running), then start, as one event.
    pub async fn restart(&self, name_or_id: &str, timeout: Option<i64>) -> Result<()> {
        match self.stop(name_or_id, timeout).await {
            Ok(()) | Err(EngineError::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(name_or_id).await?;
        let c = self.get(name_or_id).await?;
        self.event(&c.record().await, "restart", &[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::record::HostConfig;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets_after_a_long_run() {
        let mut s = RestartState::default();
        let short = Duration::from_secs(1);
        let waits: Vec<u64> = (0..12)
            .map(|_| s.next_backoff(short).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]
        );
        assert_eq!(s.next_backoff(RESET_AFTER), FIRST_BACKOFF);
    }

    #[test]
    fn policies_decide_as_dockerd() {
        let policy = |name: &str, max: i64| HostConfig {
            restart_policy: name.into(),
            restart_max_retries: max,
            ..HostConfig::default()
        };
        assert!(!policy("no", 0).should_restart(1, 0, false));
        assert!(policy("always", 0).should_restart(0, 9, true));
        assert!(policy("unless-stopped", 0).should_restart(0, 9, false));
        assert!(!policy("unless-stopped", 0).should_restart(1, 0, true));
        assert!(policy("on-failure", 0).should_restart(1, 1000, false));
        assert!(!policy("on-failure", 0).should_restart(0, 0, false));
        assert!(policy("on-failure", 2).should_restart(3, 1, false));
        assert!(!policy("on-failure", 2).should_restart(3, 2, false));
    }
}
