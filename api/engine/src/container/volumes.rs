//! Containers and the volume store (crate::volume) together: a container's volumes made
//! or found when it is created, which containers use a volume, a volume's removal refused
//! while one does (`docker volume rm`, `prune`), anonymous volumes removed with their
//! container (`rm -v`, `--rm`), and a new volume filled from the image's files at its
//! destination on the container's first start, as dockerd fills one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::mounts::MountPoint;
use super::Containers;
use crate::events::Kind;
use crate::volume::{CreateVolume, Volume, ANONYMOUS_LABEL};
use crate::{EngineError, Result};

/// What `docker volume prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub names: Vec<String>,
    pub bytes: u64,
}

impl Containers {
    /// Makes or finds each volume of `mounts` (an anonymous one gets its name now) and
    /// records its directory in the mount. Returns the names of the volumes made, for
    /// [`Containers::forget_volumes`] if the container's creation fails after this. The
    /// caller holds the volume store's guard.
    pub(super) fn resolve_volumes(&self, mounts: &mut [MountPoint]) -> Result<Vec<String>> {
        let mut made = Vec::new();
        for m in mounts.iter_mut() {
            let MountPoint::Volume {
                name,
                source,
                labels,
                ..
            } = m
            else {
                continue;
            };
            let mut labels = std::mem::take(labels);
            if name.is_empty() {
                labels.insert(ANONYMOUS_LABEL.to_string(), String::new());
            }
            let created = self.volumes.create(CreateVolume {
                name: name.clone(),
                labels,
                ..Default::default()
            });
            let (volume, new) = match created {
                Ok(v) => v,
                Err(e) => {
                    self.forget_volumes(&made);
                    return Err(e);
                }
            };
            if new {
                self.volume_event(&volume, "create");
                made.push(volume.record.name.clone());
            }
            *name = volume.record.name.clone();
            *source = volume.mountpoint.to_string_lossy().into_owned();
        }
        Ok(made)
    }

    /// Removes volumes made for a container whose creation then failed.
    pub(super) fn forget_volumes(&self, names: &[String]) {
        for name in names {
            if let Err(e) = self.volumes.remove(name) {
                log::warn!("volume {name}: {e}");
            }
        }
    }

    fn volume_event(&self, v: &Volume, action: &str) {
        self.events.emit(
            Kind::Volume,
            action,
            v.record.name.clone(),
            BTreeMap::from([("driver".to_string(), crate::volume::LOCAL.to_string())]),
        );
    }

    /// Every volume name some container (of any state) mounts, with the ids of those
    /// containers.
    pub async fn volume_users(&self) -> BTreeMap<String, Vec<String>> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in self.all().await {
            let r = c.record.lock().await;
            for m in &r.host_config.mounts {
                if let MountPoint::Volume { name, .. } = m {
                    users.entry(name.clone()).or_default().push(r.id.clone());
                }
            }
        }
        users
    }

    /// `docker volume create`.
    pub async fn create_volume(&self, req: CreateVolume) -> Result<Volume> {
        let _guard = self.volumes.guard().await;
        let (volume, new) = self.volumes.create(req)?;
        if new {
            self.volume_event(&volume, "create");
        }
        Ok(volume)
    }

    /// `docker volume rm [-f]`: refused while a container uses it; with `force`, a volume
    /// that is not there is no error (as dockerd's).
    pub async fn remove_volume(&self, name: &str, force: bool) -> Result<()> {
        let _guard = self.volumes.guard().await;
        let volume = match self.volumes.get(name) {
            Ok(v) => v,
            Err(EngineError::NotFound(_)) if force => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(ids) = self.volume_users().await.get(name) {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                ids.join(", ")
            )));
        }
        self.volumes.remove(name)?;
        self.volume_event(&volume, "destroy");
        Ok(())
    }

    /// `docker volume prune`: every volume no container uses that `keep` does not keep
    /// (anonymous ones only, unless `all`).
    pub async fn prune_volumes(&self, all: bool, keep: impl Fn(&Volume) -> bool) -> Result<Pruned> {
        let _guard = self.volumes.guard().await;
        let users = self.volume_users().await;
        let mut pruned = Pruned::default();
        for v in self.volumes.list() {
            if users.contains_key(&v.record.name) || (!all && !v.record.anonymous()) || keep(&v) {
                continue;
            }
            let bytes = self.volumes.size(&v.record.name);
            match self.volumes.remove(&v.record.name) {
                Ok(()) => {
                    self.volume_event(&v, "destroy");
                    pruned.bytes = pruned.bytes.saturating_add(bytes);
                    pruned.names.push(v.record.name.clone());
                }
                Err(e) => log::warn!("volume {}: {e}", v.record.name),
            }
        }
        Ok(pruned)
    }

    /// A removed container's anonymous volumes, removed unless another container uses them
    /// (`docker rm -v`, `--rm`).
    pub async fn remove_anonymous_volumes(&self, mounts: &[MountPoint]) {
        let names: BTreeSet<&str> = mounts
            .iter()
            .filter_map(|m| match m {
                MountPoint::Volume { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return;
        }
        let _guard = self.volumes.guard().await;
        let users = self.volume_users().await;
        for name in names {
            let Ok(v) = self.volumes.get(name) else {
                continue;
            };
            if !v.record.anonymous() || users.contains_key(name) {
                continue;
            }
            match self.volumes.remove(name) {
                Ok(()) => self.volume_event(&v, "destroy"),
                Err(e) => log::warn!("volume {name}: {e}"),
            }
        }
    }

    /// The volume store.
    pub fn volume_store(&self) -> &crate::volume::Volumes {
        &self.volumes
    }
}

/// The volumes of `mounts` to fill from the container's root before it starts: each
/// volume's destination and directory, unless `nocopy`.
pub(super) fn to_fill(mounts: &[MountPoint]) -> Vec<(String, PathBuf)> {
    mounts
        .iter()
        .filter_map(|m| match m {
            MountPoint::Volume {
                source,
                destination,
                nocopy: false,
                ..
            } => Some((destination.clone(), PathBuf::from(source))),
            _ => None,
        })
        .collect()
}

/// Fills the empty volume `volume` with what the container's root `root` (its mounted
/// overlay) has at `destination`, as dockerd fills a new volume from the image: files,
/// owners, modes and times, the directory's own included; symlinks copied as they are. A
/// volume with anything in it is left as it is; so is one whose destination is missing or
/// not a directory in the root. Resolved confined to the root, as the guest would.
pub(super) fn fill(root: &Path, destination: &str, volume: &Path) -> Result<(), String> {
    let empty = std::fs::read_dir(volume)
        .map_err(|e| format!("volume {}: {e}", volume.display()))?
        .next()
        .is_none();
    if !empty {
        return Ok(());
    }
    super::archive::copy_dir(root, destination, volume).map_err(|e| {
        format!(
            "cannot fill the volume at {destination} from the image: {}",
            vmm_launcher::chain(&e)
        )
    })
}
