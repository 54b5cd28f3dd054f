//! `docker pause` and `unpause`: the container's VM has its vCPUs parked and resumed by
//! its VMM (the `pause` and `resume` requests of its control socket). A paused guest runs
//! nothing at all: not its processes, not its agent. So whatever needs the agent (a stop
//! signal, a kill) resumes the VM first, as dockerd resumes a paused container to deliver
//! a signal.

use std::time::Duration;

use vmm_launcher::control::{self, Request};

use super::record::Status;
use super::{lock_std, vm, Container, Containers};
use crate::{EngineError, Result};

/// The longest a pause or resume may take: the VMM parks every vCPU within a second even
/// inside the emulated host; this bounds a VMM that stopped answering.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

impl Containers {
    /// Parks the container's vCPUs.
    pub async fn pause(&self, name_or_id: &str) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let _op = c.op.clone().lock_owned().await;
        {
            let r = c.record.lock().await;
            if r.state.status != Status::Running {
                return Err(EngineError::Conflict(format!(
                    "Container {} is not running",
                    c.id
                )));
            }
            if r.state.paused {
                return Err(EngineError::Conflict(format!(
                    "Container {} is already paused",
                    c.id
                )));
            }
        }
        self.park(&c).await
    }

    /// Pauses a running container whose lifecycle lock the caller holds.
    pub(super) async fn park(&self, c: &Container) -> Result<()> {
        let frozen = self.freeze_readings(c).await;
        *lock_std(&c.frozen) = Some(frozen);
        self.vm_request(c, Request::Pause).await?;
        let mut r = c.record.lock().await;
        r.state.paused = true;
        c.save(&r).await?;
        self.event(&r, "pause", &[]);
        Ok(())
    }

    /// Resumes the container's vCPUs.
    pub async fn unpause(&self, name_or_id: &str) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let _op = c.op.clone().lock_owned().await;
        {
            let r = c.record.lock().await;
            if r.state.status != Status::Running || !r.state.paused {
                return Err(EngineError::Conflict(format!(
                    "Container {} is not paused",
                    c.id
                )));
            }
        }
        self.resume(&c).await
    }

    /// Resumes a paused container's VM (a no-op for one that is not), for what needs its
    /// agent to answer.
    pub(super) async fn resume_if_paused(&self, c: &Container) -> Result<()> {
        if !c.record.lock().await.state.paused {
            return Ok(());
        }
        self.resume(c).await
    }

    pub(super) async fn resume(&self, c: &Container) -> Result<()> {
        self.vm_request(c, Request::Resume).await?;
        lock_std(&c.frozen).take();
        let mut r = c.record.lock().await;
        r.state.paused = false;
        c.save(&r).await?;
        self.event(&r, "unpause", &[]);
        Ok(())
    }

    async fn vm_request(&self, c: &Container, request: Request) -> Result<()> {
        let socket = vm::control_socket(&vm::run_dir(&self.config.exec_root, &c.id));
        let what = match request {
            Request::Pause => "pause",
            _ => "unpause",
        };
        tokio::task::spawn_blocking(move || control::request(&socket, &request, CONTROL_TIMEOUT))
            .await
            .map_err(|e| EngineError::internal("VMM control", e))?
            .map_err(|e| {
                EngineError::Internal(format!(
                    "cannot {what} container {}: its VMM: {}",
                    c.id,
                    vmm_launcher::chain(&e)
                ))
            })
    }
}
