//! Containers: records, lifecycle, and the microVM each one runs in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::RwLock;

use crate::{Counts, EngineConfig, Result};

/// Every container this engine knows.
pub struct Containers {
    config: EngineConfig,
    by_id: RwLock<HashMap<String, Arc<()>>>,
}

impl Containers {
    /// Loads every container record under the data root.
    pub async fn open(config: &EngineConfig) -> Result<Containers> {
        Ok(Containers {
            config: config.clone(),
            by_id: RwLock::new(HashMap::new()),
        })
    }

    /// Container counts by state.
    pub async fn counts(&self) -> Counts {
        Counts {
            containers: self.by_id.read().await.len(),
            ..Counts::default()
        }
    }

    /// Image ids that containers (of any state) use: those images may not be removed.
    pub async fn images_in_use(&self) -> HashSet<String> {
        let _ = &self.config;
        HashSet::new()
    }

    /// Stops every running container.
    pub async fn shutdown(&self) {}
}
