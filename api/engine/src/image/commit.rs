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
        // An empty parent is `FROM scratch` (a build's first step).
        let parent = if req.parent.is_empty() {
            None
        } else {
            Some(
                self.read_index()
                    .images
                    .get(&req.parent)
                    .cloned()
                    .ok_or_else(|| not_found(&req.parent))?,
            )
        };
        let (parent_config, parent_layers) = match &parent {
            Some(p) => (p.config.clone(), p.layers.len()),
            None => (ImageConfig::default(), 0),
        };
        let added = match layer {
            Some(tar) => Some(self.add_layer(tar, None)?),
            None => None,
        };
        let now = time::rfc3339(SystemTime::now());
        let mut history = parent_config.history.clone();
        if history.is_empty() {
            // A parent without history: one entry per layer, as `docker history` shows it.
            history = (0..parent_layers)
                .map(|_| History {
                    created: parent_config.created.clone(),
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
        let mut diff_ids = parent_config.rootfs.diff_ids.clone();
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
            architecture: if parent_config.architecture.is_empty() {
                "amd64".into()
            } else {
                parent_config.architecture.clone()
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
            variant: parent_config.variant.clone(),
        };
        let bytes = serde_json::to_vec(&config)
            .map_err(|e| internal("cannot encode the image config", e))?;
        let tags: Vec<Reference> = req.tag.iter().cloned().collect();
        // The layer stays pinned (`added`) until the image that uses it is recorded.
        let (id, _) = self.commit(&bytes, &tags, &[], &req.parent)?;
        drop(added);
        Ok(id)
    }

    /// The classic builder's cache: an image made from `parent` (`""`: scratch) by a step
    /// whose container config was `container_config` (its `Cmd` names the step and what it
    /// copied; its `Env` the build arguments it saw). Removed images count too: `rmi -f`
    /// hides an image a container still uses, and the builder may then not reuse it.
    pub fn cached_child(&self, parent: &str, container_config: &ContainerConfig) -> Option<String> {
        let index = self.read_index();
        let mut found: Vec<&super::Image> = index
            .images
            .values()
            .map(|i| i.as_ref())
            .filter(|i| {
                !i.record.hidden
                    && i.record.parent == parent
                    && i.config.container_config.as_ref() == Some(container_config)
            })
            .collect();
        // The newest, as dockerd picks.
        found.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        found.first().map(|i| i.record.id.clone())
    }

    /// An image's config, for the builder to go on from.
    pub fn image_config(&self, id: &str) -> Result<ImageConfig> {
        self.read_index()
            .images
            .get(id)
            .map(|i| i.config.clone())
            .ok_or_else(|| not_found(id))
    }
}
