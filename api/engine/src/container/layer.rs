//! A container's writable layer read on the host: `docker diff`, `docker export` and
//! `docker commit`, on running, stopped and never-started containers alike.
//!
//! The container's file system is its upper dir over its init layer over its image's
//! layers, merged in user space by [`crate::layerfs`] (confined, never following a link):
//! nothing is mounted for these, so they never race a start or a stop over the root mount.

use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{ContainerConfig, Record, Status};
use super::{initlayer, Container, Containers};
use crate::image::changes;
use crate::image::commit::CommitRequest;
use crate::image::config::ContainerConfig as ImageContainerConfig;
use crate::image::ImageStore;
use crate::layerfs::diff::Change;
use crate::layerfs::{open_stack, tarball, LayerFsError, Tree};
use crate::{ids, EngineError, Result};

const UPPER: &str = "the container's writable layer";

/// `docker commit`'s options (the API's query and body).
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    pub container: String,
    pub repo: String,
    pub tag: String,
    pub comment: String,
    pub author: String,
    /// Docker's `pause` (on unless the client says otherwise).
    pub pause: bool,
    /// `--change` Dockerfile instructions.
    pub changes: Vec<String>,
    /// A container config to start from instead of the container's (the request body).
    pub config: Option<serde_json::Value>,
}

/// A container's file system, opened, for `docker export` to write.
pub struct Export {
    stack: Vec<Tree>,
}

impl Export {
    /// Writes the tar stream (blocking: run it on a blocking thread).
    pub fn write_to(self, out: impl Write) -> Result<()> {
        tarball::export(&self.stack, out).map_err(layer_error)
    }
}

fn layer_error(e: LayerFsError) -> EngineError {
    EngineError::Internal(vmm_launcher::chain(&e))
}

fn blocking_error(e: tokio::task::JoinError) -> EngineError {
    EngineError::internal("layer reader", e)
}

impl Containers {
    /// Opens the container's layers, serialised with its lifecycle (a start makes the
    /// init layer too; a removal deletes them).
    async fn open_layers(&self, c: &Arc<Container>) -> Result<Vec<Tree>> {
        let _op = c.op.clone().lock_owned().await;
        let record = c.record().await;
        let (c, images) = (c.clone(), self.images.clone());
        tokio::task::spawn_blocking(move || {
            let dirs = dirs_blocking(&c, &record, &images)?;
            open_stack(&dirs).map_err(layer_error)
        })
        .await
        .map_err(blocking_error)?
    }

    /// `docker diff`.
    pub async fn changes(&self, name_or_id: &str) -> Result<Vec<Change>> {
        let c = self.get(name_or_id).await?;
        let stack = self.open_layers(&c).await?;
        tokio::task::spawn_blocking(move || {
            let (upper, lowers) = stack
                .split_first()
                .ok_or_else(|| EngineError::Internal("no writable layer".into()))?;
            crate::layerfs::diff::changes(upper, lowers).map_err(layer_error)
        })
        .await
        .map_err(blocking_error)?
    }

    /// `docker export`: the container's file system, opened; its stream is written by
    /// [`Export::write_to`] (the container's existence is checked before anything streams).
    pub async fn export(&self, name_or_id: &str) -> Result<Export> {
        let c = self.get(name_or_id).await?;
        Ok(Export {
            stack: self.open_layers(&c).await?,
        })
    }

    /// `docker commit`: a new image, the container's image plus one layer of its changes,
    /// with its config (or the request's) and the `--change` instructions applied. Returns
    /// the image id. Everything the client gives is checked before anything is written.
    pub async fn commit(&self, opts: CommitOptions) -> Result<String> {
        let c = self.get(&opts.container).await?;
        let tag = ImageStore::repo_tag(&opts.repo, &opts.tag)?;
        let record = c.record().await;
        let image = self.images.resolve_for_container(&record.image_id)?;
        let container_config = image_config_of(&record.config, &image.full_config);
        let mut config = match opts.config.as_ref().filter(|v| !v.is_null()) {
            Some(v) => serde_json::from_value::<ImageContainerConfig>(v.clone()).map_err(|e| {
                EngineError::InvalidArgument(format!("invalid JSON in the request body: {e}"))
            })?,
            None => container_config.clone(),
        };
        changes::apply(&mut config, &opts.changes)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        merge_commit(&mut config, &container_config);

        let _op = c.op.clone().lock_owned().await;
        let (running, paused) = {
            let r = c.record.lock().await;
            (r.state.status == Status::Running, r.state.paused)
        };
        // As dockerd does, a running container is paused while it is committed (unless the
        // client says not to), so that its writable layer is read in one state: the guest
        // writes through to the host (virtio-fs without writeback caching), so once its
        // vCPUs are parked every write it made is in the upper dir. One already paused
        // stays paused.
        let park = running && opts.pause && !paused;
        if park {
            self.park(&c).await?;
        }
        let event_record = record.clone();
        let image_ref = tag.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let committed = self
            .commit_layer(&c, record, config, container_config, &opts, tag)
            .await;
        if let Ok(image_id) = &committed {
            self.event(
                &event_record,
                "commit",
                &[
                    ("comment", opts.comment.clone()),
                    ("imageID", image_id.clone()),
                    ("imageRef", image_ref),
                ],
            );
        }
        if park {
            if let Err(e) = self.resume(&c).await {
                log::warn!("container {}: cannot resume it after the commit: {e}", c.id);
                return Err(e);
            }
        }
        committed
    }

    /// A build step's commit (the classic builder's RUN): the exited container's changes
    /// over its image, recorded with exactly `config` and `container_config`, which the
    /// builder worked out (no `docker commit` merging: the step's command must not become
    /// the image's).
    pub async fn commit_step(
        &self,
        container: &str,
        config: ImageContainerConfig,
        container_config: ImageContainerConfig,
        author: &str,
    ) -> Result<String> {
        let c = self.get(container).await?;
        let _op = c.op.clone().lock_owned().await;
        let record = c.record().await;
        if record.state.status == Status::Running {
            return Err(EngineError::Conflict(format!(
                "container {} is still running",
                ids::short(&c.id)
            )));
        }
        let opts = CommitOptions {
            author: author.to_string(),
            ..CommitOptions::default()
        };
        self.commit_layer(&c, record, config, container_config, &opts, None)
            .await
    }

    async fn commit_layer(
        &self,
        c: &Arc<Container>,
        record: Record,
        config: ImageContainerConfig,
        container_config: ImageContainerConfig,
        opts: &CommitOptions,
        tag: Option<crate::image::reference::Reference>,
    ) -> Result<String> {
        let c = c.clone();
        let scratch = self.images.scratch_file()?;
        let images = self.images.clone();
        let req = CommitRequest {
            parent: record.image_id.clone(),
            container_id: record.id.clone(),
            config,
            container_config,
            author: opts.author.clone(),
            comment: opts.comment.clone(),
            created_by: record.config.cmd.clone().unwrap_or_default().join(" "),
            tag,
        };
        tokio::task::spawn_blocking(move || {
            let dirs = dirs_blocking(&c, &record, &images)?;
            let (upper, _) = dirs
                .first()
                .ok_or_else(|| EngineError::Internal("no writable layer".into()))?;
            let layer = layer_file(upper, scratch, &c.id)?;
            images.commit_container(&req, layer.map(std::io::BufReader::new))
        })
        .await
        .map_err(blocking_error)?
    }
}

fn dirs_blocking(
    c: &Container,
    record: &Record,
    images: &ImageStore,
) -> Result<Vec<(PathBuf, &'static str)>> {
    let image = images.resolve_for_container(&record.image_id)?;
    let upper = c.dir.join("upper");
    std::fs::create_dir_all(&upper)
        .map_err(|e| EngineError::internal(format!("cannot create {}", upper.display()), e))?;
    let init = initlayer::prepare(&c.dir, &image.layers)
        .map_err(|e| EngineError::Internal(vmm_launcher::chain(&e)))?;
    let mut dirs = vec![(upper, UPPER), (init, "the container's init layer")];
    dirs.extend(
        image
            .layers
            .iter()
            .rev()
            .map(|l| (l.clone(), "an image layer")),
    );
    Ok(dirs)
}

/// Writes the commit's layer (the upper dir as an image layer) into `file` and rewinds it:
/// `None` when the container changed nothing. The whole layer is written before the store
/// reads any of it, so a layer that cannot be read whole is never stored.
fn layer_file(
    upper: &std::path::Path,
    mut file: std::fs::File,
    id: &str,
) -> Result<Option<std::fs::File>> {
    let tree = Tree::open(upper, UPPER).map_err(layer_error)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
    let summary = tarball::layer(&tree, &mut out).map_err(layer_error)?;
    drop(out);
    if summary.skipped_names > 0 {
        log::warn!(
            "container {id}: {} name(s) starting with .wh. left out of the committed layer (a layer would read them as whiteouts)",
            summary.skipped_names
        );
    }
    if summary.entries == 0 {
        return Ok(None);
    }
    file.rewind()
        .map_err(|e| EngineError::internal("cannot read the new layer back", e))?;
    Ok(Some(file))
}

/// The container's config in the image config's shape (what `docker inspect` of the new
/// image shows as `ContainerConfig`, and what its `Config` starts from). What the record
/// does not keep comes from the image, as the container got it at create.
fn image_config_of(c: &ContainerConfig, image: &ImageContainerConfig) -> ImageContainerConfig {
    ImageContainerConfig {
        hostname: c.hostname.clone(),
        domainname: c.domainname.clone(),
        user: c.user.clone(),
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: (!c.exposed_ports.is_empty()).then(|| c.exposed_ports.clone()),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        env: (!c.env.is_empty()).then(|| c.env.clone()),
        cmd: c.cmd.clone(),
        healthcheck: c
            .healthcheck
            .as_ref()
            .and_then(|h| serde_json::to_value(h).ok())
            .or_else(|| image.healthcheck.clone()),
        image: c.image.clone(),
        volumes: image.volumes.clone(),
        working_dir: c.working_dir.clone(),
        entrypoint: c.entrypoint.clone(),
        labels: Some(c.labels.clone()),
        stop_signal: c.stop_signal.clone().unwrap_or_default(),
        stop_timeout: c.stop_timeout,
        shell: image.shell.clone(),
        ..Default::default()
    }
}

/// dockerd's commit `merge`: what the new config leaves empty comes from the container's.
fn merge_commit(new: &mut ImageContainerConfig, container: &ImageContainerConfig) {
    if new.user.is_empty() {
        new.user = container.user.clone();
    }
    match (&mut new.exposed_ports, &container.exposed_ports) {
        (Some(ours), Some(theirs)) if !ours.is_empty() => {
            for (k, v) in theirs {
                ours.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        (ours, theirs) => {
            if ours.as_ref().is_none_or(|m| m.is_empty()) {
                *ours = theirs.clone();
            }
        }
    }
    let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
    match &mut new.env {
        Some(ours) if !ours.is_empty() => {
            for e in container.env.iter().flatten() {
                if !ours.iter().any(|o| key(o) == key(e)) {
                    ours.push(e.clone());
                }
            }
        }
        ours => *ours = container.env.clone(),
    }
    let labels = new.labels.get_or_insert_with(Default::default);
    for (k, v) in container.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if new.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if new.cmd.as_ref().is_none_or(Vec::is_empty) {
            new.cmd = container.cmd.clone();
        }
        if new.entrypoint.is_none() {
            new.entrypoint = container.entrypoint.clone();
        }
    }
    if new.healthcheck.is_none() {
        new.healthcheck = container.healthcheck.clone();
    }
    if new.working_dir.is_empty() {
        new.working_dir = container.working_dir.clone();
    }
    match (&mut new.volumes, &container.volumes) {
        (Some(ours), Some(theirs)) if !ours.is_empty() => {
            for (k, v) in theirs {
                ours.insert(k.clone(), v.clone());
            }
        }
        (ours, theirs) => {
            if ours.as_ref().is_none_or(|m| m.is_empty()) {
                *ours = theirs.clone();
            }
        }
    }
    if new.stop_signal.is_empty() {
        new.stop_signal = container.stop_signal.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(base: &ImageContainerConfig, lines: &[&str]) -> ImageContainerConfig {
        let mut c = base.clone();
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        changes::apply(&mut c, &lines).unwrap();
        merge_commit(&mut c, base);
        c
    }

    #[test]
    fn commit_config_is_the_containers_with_changes_as_dockerd_makes_it() {
        let container = ImageContainerConfig {
            hostname: "abc".into(),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            cmd: Some(vec!["sh".into(), "-c".into(), "work".into()]),
            labels: Some([("l".to_string(), "1".to_string())].into()),
            ..Default::default()
        };
        let c = apply(&container, &[r#"CMD ["cat","/added"]"#, "ENV X=1"]);
        assert_eq!(c.cmd.unwrap(), ["cat", "/added"]);
        assert_eq!(c.env.unwrap(), ["PATH=/bin", "A=1", "X=1"]);
        assert_eq!(c.hostname, "abc");
        assert_eq!(c.labels.unwrap()["l"], "1");
        // ENTRYPOINT without CMD drops the container's command (dockerd does).
        let c = apply(&container, &[r#"ENTRYPOINT ["sh"]"#]);
        assert_eq!(c.entrypoint.unwrap(), ["sh"]);
        assert_eq!(c.cmd, None);
        let c = apply(&container, &["WORKDIR /tmp", "USER nobody", "EXPOSE 80"]);
        assert_eq!(
            (c.working_dir.as_str(), c.user.as_str()),
            ("/tmp", "nobody")
        );
        assert!(c.exposed_ports.unwrap().contains_key("80/tcp"));
        // A request's config starts from its own fields; the container fills the rest.
        let mut given = ImageContainerConfig {
            env: Some(vec!["A=2".into()]),
            ..Default::default()
        };
        merge_commit(&mut given, &container);
        assert_eq!(given.env.unwrap(), ["A=2", "PATH=/bin"]);
        assert_eq!(given.cmd, container.cmd);
    }
}
