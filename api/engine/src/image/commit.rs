//! `docker commit`: an image made of a container's image and one more layer, the
//! container's changes, with the config the commit asks for and one more history entry.

use std::time::SystemTime;

use super::config::{ContainerConfig, History, ImageConfig, RootFs};
use super::reference::Reference;
use super::{internal, not_found, ImageStore};
use crate::{time, EngineError, Result};

/// What a commit records besides the layer.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    /// The container's image (its id).
    pub parent: String,
    pub container_id: String,
    /// The new image's config.
    pub config: ContainerConfig,
    /// The container's own config, as it ran.
    pub container_config: ContainerConfig,
    pub author: String,
    pub comment: String,
    /// The history entry's `created_by`: the container's command, as Docker writes it.
    pub created_by: String,
    pub tag: Option<Reference>,
}

impl ImageStore {
    /// Records the image: `layer` is the new layer's tar (`None` when the container changed
    /// nothing: an empty layer, as Docker marks it). Returns the image id.
    pub fn commit_container(
        &self,
        req: &CommitRequest,
        layer: Option<impl std::io::Read>,
    ) -> Result<String> {
        let parent = self
            .read_index()
            .images
            .get(&req.parent)
            .cloned()
            .ok_or_else(|| not_found(&req.parent))?;
        let added = match layer {
            Some(tar) => Some(self.add_layer(tar, None)?),
            None => None,
        };
        let now = time::rfc3339(SystemTime::now());
        let mut history = parent.config.history.clone();
        if history.is_empty() {
            // A parent without history: one entry per layer, as `docker history` shows it.
            history = parent
                .layers
                .iter()
                .map(|_| History {
                    created: parent.config.created.clone(),
                    ..Default::default()
                })
                .collect();
        }
        history.push(History {
            created: Some(now.clone()),
            author: req.author.clone(),
            created_by: req.created_by.clone(),
            comment: req.comment.clone(),
            empty_layer: added.is_none(),
        });
        let mut diff_ids = parent.config.rootfs.diff_ids.clone();
        if let Some((info, _)) = &added {
            diff_ids.push(info.diff_id.clone());
        }
        if diff_ids.len() > super::config::MAX_LAYERS {
            return Err(EngineError::InvalidArgument(format!(
                "cannot commit: the image would have {} layers, more than the limit of {}",
                diff_ids.len(),
                super::config::MAX_LAYERS
            )));
        }
        let config = ImageConfig {
            architecture: if parent.config.architecture.is_empty() {
                "amd64".into()
            } else {
                parent.config.architecture.clone()
            },
            author: req.author.clone(),
            comment: req.comment.clone(),
            config: Some(req.config.clone()),
            container: req.container_id.clone(),
            container_config: Some(req.container_config.clone()),
            created: Some(now),
            docker_version: String::new(),
            history,
            os: "linux".into(),
            parent: String::new(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            variant: parent.config.variant.clone(),
        };
        let bytes = serde_json::to_vec(&config)
            .map_err(|e| internal("cannot encode the image config", e))?;
        let tags: Vec<Reference> = req.tag.iter().cloned().collect();
        // The layer stays pinned (`added`) until the image that uses it is recorded.
        let (id, _) = self.commit(&bytes, &tags, &[], &req.parent)?;
        drop(added);
        Ok(id)
    }
}
