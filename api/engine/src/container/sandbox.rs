//! A container's sandbox: its root filesystem mounted, its VM started (a clone of the VM
//! template of its size, or a boot) and its process started in it, with the boot retries the
//! daemon allows; nothing left behind when it fails. Blocking: run on a blocking thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::template::{Templates, TemplatesError};
use super::vm::{self, LaunchError, LaunchSpec, Streams, Vm};
use crate::{EngineConfig, StartPath};

/// Boots retried in this daemon, for its log.
static BOOT_RETRIES: AtomicU64 = AtomicU64::new(0);

/// What a sandbox is made of.
pub struct SandboxSpec {
    /// The image's layers, lowest first (the container's init layer goes above them).
    pub layers: Vec<PathBuf>,
    /// The container's directory (its writable layer is there).
    pub dir: PathBuf,
    pub launch: LaunchSpec,
    pub start: StartPath,
    /// Volumes to fill from the root before the VM starts, if empty: each one's
    /// destination and directory.
    pub fill: Vec<(String, PathBuf)>,
}

/// Mounts the root filesystem and starts the VM and the container's process in it. On
/// failure nothing stays mounted and the VM's run directory is gone.
pub fn create(
    cfg: &EngineConfig,
    templates: &Templates,
    spec: &SandboxSpec,
) -> Result<(Vm, Streams, u32), LaunchError> {
    let launch = &spec.launch;
    let init = super::initlayer::prepare(&spec.dir, &spec.layers)
        .map_err(|e| LaunchError::Failed(vmm_launcher::chain(&e)))?;
    let mut layers = spec.layers.clone();
    layers.push(init);
    vm::mount_rootfs(
        &layers,
        &spec.dir.join("upper"),
        &spec.dir.join("work"),
        &launch.rootfs,
        &spec.dir.join("empty"),
    )
    .map_err(LaunchError::Failed)?;
    for (destination, volume) in &spec.fill {
        if let Err(e) = super::volumes::fill(&launch.rootfs, destination, volume) {
            vm::unmount_rootfs(&launch.rootfs);
            return Err(LaunchError::Failed(e));
        }
    }
    if launch.readonly_rootfs {
        let made = super::mounts::make_mountpoints(
            &launch.rootfs,
            launch
                .container
                .mounts
                .iter()
                .map(|m| (m.destination.as_str(), m.file.is_some())),
        );
        if let Err(e) = made {
            vm::unmount_rootfs(&launch.rootfs);
            return Err(LaunchError::Failed(format!(
                "cannot make the mount points in the read-only root: {e}"
            )));
        }
    }
    let result = with_boot_retries(
        cfg.boot_retries,
        |timeout| start_vm(cfg, templates, launch, spec.start, timeout),
        |attempt, why| {
            // A template's failure carries its own console's end; a container's VM's console
            // is its own file.
            let tail = vmm_launcher::console_tail(&launch.console_log, 10);
            let total = BOOT_RETRIES.fetch_add(1, Ordering::Relaxed) + 1;
            let console = if tail.is_empty() {
                String::new()
            } else {
                format!("; its console ended: {tail:?}")
            };
            log::warn!(
                "boot retry {attempt} of {} ({total} in this daemon): {why}{console}",
                cfg.boot_retries
            );
        },
    );
    let result = match result {
        Err(LaunchError::SilentBootFailure(why)) => {
            let tail = vmm_launcher::console_tail(&launch.console_log, 5);
            Err(LaunchError::SilentBootFailure(if tail.is_empty() {
                why
            } else {
                format!("{why}; its console ended: {}", tail.join(" | "))
            }))
        }
        other => other,
    };
    if result.is_err() {
        vm::unmount_rootfs(&launch.rootfs);
        vm::remove_run_dir(&launch.run_dir);
    }
    result
}

/// Removes, in the background, the templates no VM of this engine can use any more
/// ([`Templates::collect`]: hashing the VMM, kernel and initramfs takes a moment); the
/// outcome is logged.
pub fn collect_templates(cfg: EngineConfig, templates: std::sync::Arc<Templates>) {
    tokio::task::spawn_blocking(move || match templates.collect(&cfg) {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => log::info!(
            "removed {} VM templates no VM can use any more: {}",
            removed.len(),
            removed.join(", ")
        ),
        Err(e) => log::warn!("cannot collect stale VM templates: {e}"),
    });
}

/// Builds, in the background, the template of berth's default VM size (`berthd
/// --prebuild-template`), with the boot retries the daemon allows; the outcome is logged.
pub fn prebuild_template(cfg: EngineConfig, templates: std::sync::Arc<Templates>) {
    use super::record::{DEFAULT_MEM_MIB, DEFAULT_VCPUS};
    tokio::task::spawn_blocking(move || {
        // Containers are on a network unless they ask for none.
        let shape = vm::vm_shape(&cfg, DEFAULT_VCPUS, DEFAULT_MEM_MIB, true);
        let built = with_boot_retries(
            cfg.boot_retries,
            |timeout| {
                templates
                    .get(&cfg, &shape, timeout)
                    .map_err(template_failure)
            },
            |attempt, why| log::warn!("template boot retry {attempt}: {why}"),
        );
        match built {
            Ok(t) => log::info!("the default VM template is ready: {}", t.dir.display()),
            Err(e) => log::warn!("cannot prebuild the default VM template: {e}"),
        }
    });
}

/// One start of the VM: a clone of its template (built first if need be), or a boot.
fn start_vm(
    cfg: &EngineConfig,
    templates: &Templates,
    launch: &LaunchSpec,
    start: StartPath,
    timeout: Duration,
) -> Result<(Vm, Streams, u32), LaunchError> {
    match start {
        StartPath::Cold => vm::launch(cfg, launch, timeout, vm::Start::Boot),
        StartPath::Clone => {
            let template = templates
                .get(cfg, &vm::boot_spec(cfg, launch), timeout)
                .map_err(template_failure)?;
            let identity = Templates::identity(&template);
            let started = vm::launch(cfg, launch, timeout, vm::Start::Clone(&template));
            if let Err(LaunchError::SilentBootFailure(why)) = &started {
                // Every clone of a template whose clone went silent has been seen to go
                // silent the same way (the emulated host's tests: all 21 starts on one
                // template): it is removed, and the next start builds it again.
                match templates.discard(&template, identity) {
                    Ok(true) => log::warn!(
                        "VM template {} discarded: a clone of it failed silently ({why})",
                        template.dir.display()
                    ),
                    Ok(false) => {}
                    Err(e) => log::warn!(
                        "cannot discard the VM template {}: {e}",
                        template.dir.display()
                    ),
                }
            }
            started
        }
    }
}

/// Runs `attempt` until it does not fail silently or `retries` more attempts are used up.
/// A boot that dies or stalls without a word is tried again only when the daemon was told
/// to (`--boot-retries`, which the tests give inside the emulated virtualization host, where
/// about one boot in a hundred does): nothing of the container has run yet, so a second
/// boot changes nothing it could observe. Every attempt but the last gets
/// [`vm::FIRST_BOOT_TIMEOUT`] (a stalled boot is cut short to be tried again), the last
/// [`vm::BOOT_TIMEOUT`]; `on_retry` hears of each retry (its number and why).
pub fn with_boot_retries<T>(
    retries: u32,
    mut attempt: impl FnMut(Duration) -> Result<T, LaunchError>,
    mut on_retry: impl FnMut(u32, &str),
) -> Result<T, LaunchError> {
    let mut done = 0;
    loop {
        let timeout = if done < retries {
            vm::FIRST_BOOT_TIMEOUT
        } else {
            vm::BOOT_TIMEOUT
        };
        let result = attempt(timeout);
        match &result {
            Err(LaunchError::SilentBootFailure(why)) if done < retries => {
                done += 1;
                on_retry(done, why);
            }
            _ => return result,
        }
    }
}

/// A template that could not be had, as a failed start: a template VM that died or stalled
/// without a word is a silent boot failure (booted again where the daemon allows it).
fn template_failure(e: TemplatesError) -> LaunchError {
    use vmm_launcher::template::TemplateError;
    use vmm_launcher::VmmExit;
    let message = format!("cannot build the VM template: {}", vmm_launcher::chain(&e));
    match e {
        TemplatesError::Build(b)
            if matches!(
                *b,
                TemplateError::Boot {
                    source: vmm_launcher::LaunchError::Stalled(_)
                        | vmm_launcher::LaunchError::Exited(
                            VmmExit::GuestShutdown | VmmExit::GuestCrash
                        ),
                    ..
                }
            ) =>
        {
            LaunchError::SilentBootFailure(message)
        }
        _ => LaunchError::Failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent() -> LaunchError {
        LaunchError::SilentBootFailure("the guest reset itself".into())
    }

    #[test]
    fn silent_boot_failures_are_retried_as_allowed_and_each_retry_is_told() {
        let mut timeouts = vec![];
        let mut told = vec![];
        let result: Result<(), _> = with_boot_retries(
            2,
            |t| {
                timeouts.push(t);
                Err(silent())
            },
            |n, why| told.push(format!("{n}: {why}")),
        );
        assert!(matches!(result, Err(LaunchError::SilentBootFailure(_))));
        // Cut short while a retry remains; the last attempt gets the whole boot timeout.
        assert_eq!(
            timeouts,
            [
                vm::FIRST_BOOT_TIMEOUT,
                vm::FIRST_BOOT_TIMEOUT,
                vm::BOOT_TIMEOUT
            ]
        );
        assert_eq!(
            told,
            ["1: the guest reset itself", "2: the guest reset itself"]
        );
    }

    #[test]
    fn a_retry_that_boots_is_the_result_and_nothing_is_retried_by_default() {
        let mut n = 0;
        let result = with_boot_retries(
            3,
            |_| {
                n += 1;
                if n < 2 {
                    Err(silent())
                } else {
                    Ok(n)
                }
            },
            |_, _| {},
        );
        assert_eq!(result.unwrap(), 2);
        let mut attempts = 0;
        let result: Result<(), _> = with_boot_retries(
            0,
            |t| {
                attempts += 1;
                assert_eq!(t, vm::BOOT_TIMEOUT);
                Err(silent())
            },
            |_, _| panic!("no retry without --boot-retries"),
        );
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    #[test]
    fn failures_that_say_why_are_never_retried() {
        for failure in [
            LaunchError::Failed("the guest kernel panicked".into()),
            LaunchError::Exec {
                not_found: true,
                message: "not found".into(),
            },
        ] {
            let mut failure = Some(failure);
            let mut attempts = 0;
            let result: Result<(), _> = with_boot_retries(
                5,
                |_| {
                    attempts += 1;
                    Err(failure.take().expect("one attempt"))
                },
                |_, _| panic!("retried"),
            );
            assert!(result.is_err());
            assert_eq!(attempts, 1);
        }
    }

    #[test]
    fn a_template_vm_that_died_silently_is_a_silent_boot_failure() {
        use vmm_launcher::template::TemplateError;
        let silent = template_failure(TemplatesError::from(TemplateError::Boot {
            console: "/t/console.log".into(),
            tail: "Linux version".into(),
            source: vmm_launcher::LaunchError::Exited(vmm_launcher::VmmExit::GuestShutdown),
        }));
        assert!(
            matches!(&silent, LaunchError::SilentBootFailure(m)
                if m.starts_with("cannot build the VM template") && m.contains("ended: [Linux version]")),
            "{silent:?}"
        );
        let loud = template_failure(TemplatesError::from(TemplateError::Boot {
            console: "/t/console.log".into(),
            tail: String::new(),
            source: vmm_launcher::LaunchError::Exited(vmm_launcher::VmmExit::GuestPanic),
        }));
        assert!(matches!(loud, LaunchError::Failed(_)), "{loud:?}");
    }
}
