//! The image store: content-addressed blobs, image configs and manifests, tags, and layers
//! unpacked once (confined) and shared by every container of an image.
//!
//! What containers need from it is [`ImageStore::resolve`]: an image's identity, the runtime
//! part of its config, and its unpacked layer directories for overlayfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// The parts of an image's config that shape a container (Docker's `Config` in the image
/// config JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRuntimeConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// An image, ready to run a container from.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// `sha256:<64 hex>`.
    pub id: String,
    pub config: ImageRuntimeConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// The image store.
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens the store under `root`, creating it if needed.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| EngineError::internal(format!("cannot create {}", root.display()), e))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        0
    }

    /// Finds an image by name[:tag], full or short id, or digest.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        Err(EngineError::NotFound(format!("No such image: {reference}")))
    }
}
