//! Named volumes with the `local` driver, kept as dockerd keeps them: a directory per
//! volume under the data root (`volumes/NAME/_data`, which a container's VM gets as a
//! virtio-fs share of its own, as a bind's host directory), its record beside it
//! (`volumes/NAME/volume.json`). Anonymous volumes (`-v /path`, an image's `VOLUME`) are
//! volumes with a random name and the label `com.docker.volume.anonymous`.
//!
//! Which containers use a volume is read from their records when it matters (removal,
//! prune, `dangling`): the engine holds [`Volumes::guard`] while it creates a container
//! that uses volumes and while it removes volumes, so no volume goes away under a
//! container being created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{fsutil, ids, EngineError, Result};

/// The label an anonymous volume carries, as dockerd sets it.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// The only driver berth has.
pub const LOCAL: &str = "local";

/// Most labels one volume has (each is stored and shown in every listing).
const MAX_LABELS: usize = 256;

/// One volume as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub created: SystemTime,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl VolumeRecord {
    pub fn anonymous(&self) -> bool {
        self.labels.contains_key(ANONYMOUS_LABEL)
    }
}

/// A volume and where its files are on the host.
#[derive(Clone, Debug)]
pub struct Volume {
    pub record: VolumeRecord,
    pub mountpoint: PathBuf,
}

/// What `docker volume create` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateVolume {
    pub name: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// The volume store.
pub struct Volumes {
    root: PathBuf,
    by_name: Mutex<BTreeMap<String, VolumeRecord>>,
    /// Held while a container that uses volumes is created, and while volumes are removed.
    guard: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_such(name: &str) -> EngineError {
    EngineError::NotFound(format!("get {name}: no such volume"))
}

/// Docker's rule for a local volume's name.
pub fn check_name(name: &str) -> Result<()> {
    if ids::valid_name(name) {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )))
    }
}

/// The driver a request names: `local` (or nothing) only.
pub fn check_driver(driver: &str) -> Result<()> {
    match driver {
        "" | LOCAL => Ok(()),
        // Not dockerd's 404: the CLI takes a 404 from a create for a missing image, and
        // would try to pull one.
        other => Err(EngineError::InvalidArgument(format!(
            "error looking up volume plugin {other}: plugin \"{other}\" not found: berth has only the local driver"
        ))),
    }
}

/// The local driver's options (`type`, `device`, `o`: a file system mounted on the host)
/// are refused: berth mounts nothing on the host for a volume, and would need the host's
/// root to.
pub fn check_driver_opts(opts: &BTreeMap<String, String>) -> Result<()> {
    match opts.keys().next() {
        None => Ok(()),
        Some(k) => Err(EngineError::InvalidArgument(format!(
            "berth does not support local volume options ({k}): berth keeps each volume in its data root and mounts nothing on the host for one; bind a host directory (-v /host/dir:/path) to use a mounted file system"
        ))),
    }
}

impl Volumes {
    /// Opens (or makes) the store under `data_root`, reading every volume's record.
    pub fn open(data_root: &Path) -> Result<Volumes> {
        let root = data_root.join("volumes");
        std::fs::create_dir_all(&root)
            .map_err(|e| EngineError::internal(format!("cannot create {}", root.display()), e))?;
        let mut by_name = BTreeMap::new();
        let entries = std::fs::read_dir(&root)
            .map_err(|e| EngineError::internal(format!("cannot read {}", root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path().join("volume.json");
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.name == name && entry.path().join("_data").is_dir() => {
                    by_name.insert(name, r);
                }
                // A creation cut short (no record yet), or a record that is not this
                // volume's: left on disk for the operator, not offered to containers.
                Ok(_) => log::warn!("volume {name}: its record does not match; ignored"),
                Err(e) => log::warn!("volume {name}: {}: {e}; ignored", path.display()),
            }
        }
        Ok(Volumes {
            root,
            by_name: Mutex::new(by_name),
            guard: tokio::sync::Mutex::new(()),
        })
    }

    /// Serialises container creation with volume removal (see the module's comment).
    pub async fn guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.guard.lock().await
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where a volume's files are.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir(name).join("_data")
    }

    fn volume(&self, record: VolumeRecord) -> Volume {
        Volume {
            mountpoint: self.mountpoint(&record.name),
            record,
        }
    }

    /// `docker volume create`: a new volume, or the one of that name already there (as
    /// dockerd answers), and whether it was made now.
    pub fn create(&self, req: CreateVolume) -> Result<(Volume, bool)> {
        check_driver(&req.driver)?;
        check_driver_opts(&req.driver_opts)?;
        if req.labels.len() > MAX_LABELS {
            return Err(EngineError::InvalidArgument(format!(
                "too many labels ({}, at most {MAX_LABELS})",
                req.labels.len()
            )));
        }
        let name = if req.name.is_empty() {
            ids::new_id()
        } else {
            check_name(&req.name)?;
            req.name
        };
        let mut by_name = lock(&self.by_name);
        if let Some(r) = by_name.get(&name) {
            return Ok((self.volume(r.clone()), false));
        }
        let record = VolumeRecord {
            name: name.clone(),
            created: SystemTime::now(),
            labels: req.labels,
        };
        let dir = self.dir(&name);
        let made = std::fs::create_dir_all(dir.join("_data")).and_then(|()| {
            let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
            fsutil::atomic_write(&dir.join("volume.json"), &json)
        });
        if let Err(e) = made {
            let _ = fsutil::remove_tree(&dir);
            return Err(EngineError::internal(format!("create {name}"), e));
        }
        by_name.insert(name, record.clone());
        Ok((self.volume(record), true))
    }

    /// A volume by name.
    pub fn get(&self, name: &str) -> Result<Volume> {
        let r = lock(&self.by_name).get(name).cloned();
        r.map(|r| self.volume(r)).ok_or_else(|| no_such(name))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let all: Vec<VolumeRecord> = lock(&self.by_name).values().cloned().collect();
        all.into_iter().map(|r| self.volume(r)).collect()
    }

    /// Removes a volume and its files. The caller holds [`Volumes::guard`] and has checked
    /// that no container uses it.
    pub fn remove(&self, name: &str) -> Result<()> {
        if lock(&self.by_name).remove(name).is_none() {
            return Err(no_such(name));
        }
        // The record goes first: a removal cut short leaves no half volume behind that
        // `open` would offer again.
        let dir = self.dir(name);
        let _ = std::fs::remove_file(dir.join("volume.json"));
        fsutil::remove_tree(&dir).map_err(|e| EngineError::internal(format!("remove {name}"), e))
    }

    /// The bytes in a volume (`docker system df -v`).
    pub fn size(&self, name: &str) -> u64 {
        fsutil::tree_size(&self.mountpoint(name))
    }
}

#[cfg(test)]
mod tests;
