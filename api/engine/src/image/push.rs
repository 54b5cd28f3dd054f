//! `docker push`: an image's tags to a registry over the OCI distribution protocol, through
//! the same `oci-client` crate as [`super::pull`].
//!
//! What is pushed is what the store keeps: the OCI manifest berth wrote when it recorded the
//! image (its config and its layers as uncompressed tars, each blob named by its digest), so
//! an image's repository digest is the same on every push and equals what a pull of it from
//! the registry records. Blobs the registry already has are skipped (a HEAD first); the
//! others are streamed from their files, one request each. The registry checks every blob
//! against its digest as it commits it, and refuses a manifest whose blobs it lacks.
//!
//! A blob the registry lacks in this repository but that berth pushed or pulled in another
//! of the same registry (an image's repository digests say where) is mounted from there
//! first, as Docker does ("Mounted from"); a registry that will not mount it gets it
//! uploaded. Registries are reached as for a pull ([`super::registry`]).

use std::sync::Arc;

use futures_util::stream::{self, Stream};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

use super::pull::{
    parse_manifest, registry_auth, sha256_of, short_of, Credentials, Parsed, TransferEvent,
    OCI_MANIFEST, PROGRESS_STEP,
};
use super::reference::Reference;
use super::registry::distribution_client;
use super::{lock, ImageStore};
use crate::{EngineError, Result};

/// How much of a blob each read sends in a monolithic upload.
const CHUNK: usize = 1 << 20;
/// A blob over this size goes in chunks (a `PATCH` of `PUSH_CHUNK` each), so a registry
/// behind a proxy that caps request bodies (nginx's `client_max_body_size`, a load
/// balancer's limit) takes large layers; smaller ones go in one request, which is faster.
const CHUNKED_ABOVE: u64 = 16 << 20;
/// The distribution client's chunk: each item of a chunked upload's stream is one `PATCH`.
const PUSH_CHUNK: usize = 4 << 20;

/// A registry's refusal or failure of a push, in Docker's words where it has them.
fn push_error(r: &Reference, e: OciDistributionError) -> EngineError {
    match e {
        OciDistributionError::AuthenticationFailure(m) => {
            EngineError::Forbidden(format!("unauthorized: authentication required: {m}"))
        }
        OciDistributionError::UnauthorizedError { url } => {
            EngineError::Forbidden(format!("unauthorized: authentication required ({url})"))
        }
        OciDistributionError::RequestError(e)
            if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) =>
        {
            EngineError::Forbidden(format!(
                "unauthorized: authentication required ({})",
                e.url().map(|u| u.as_str()).unwrap_or("")
            ))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            EngineError::Internal(format!("error from registry at {url}: {envelope}"))
        }
        other => EngineError::Internal(format!(
            "cannot push {}: {}",
            r.familiar(),
            vmm_launcher::chain(&other)
        )),
    }
}

/// A blob's file as a stream of `chunk`-sized pieces (the last one shorter), reporting its
/// progress as it is read.
fn upload_stream(
    file: tokio::fs::File,
    chunk: usize,
    id: String,
    total: u64,
    events: UnboundedSender<TransferEvent>,
) -> impl Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    stream::try_unfold(
        (file, 0u64, 0u64),
        move |(mut file, mut sent, mut reported)| {
            let (id, events) = (id.clone(), events.clone());
            async move {
                let mut buf = vec![0u8; chunk];
                let mut n = 0;
                while n < chunk {
                    match file.read(&mut buf[n..]).await? {
                        0 => break,
                        got => n += got,
                    }
                }
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                sent += n as u64;
                if sent - reported >= PROGRESS_STEP || sent == total {
                    reported = sent;
                    let _ = events.send(TransferEvent::Progress {
                        id,
                        action: "Pushing",
                        current: sent,
                        total,
                    });
                }
                Ok(Some((bytes::Bytes::from(buf), (file, sent, reported))))
            }
        },
    )
}

/// Where one push goes.
struct Target {
    client: oci_client::Client,
    /// The same registry's client for chunked uploads.
    chunked: oci_client::Client,
    auth: RegistryAuth,
    reference: Reference,
    /// The host the registry answered on.
    host: String,
}

impl Target {
    fn tagged(&self, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.host.clone(),
            self.reference.path.clone(),
            tag.to_string(),
        )
    }

    /// Repository `path` of the same registry.
    fn other(&self, path: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(self.host.clone(), path.to_string(), "latest".into())
    }
}

/// Most repositories a blob is offered to be mounted from (Docker tries three).
const MOUNT_TRIES: usize = 3;

impl ImageStore {
    /// The tags of `name`'s repository (all of them when `name` has no tag), with the
    /// image each names, in order.
    fn tags_to_push(&self, name: &Reference) -> Vec<(String, String)> {
        let index = self.read_index();
        let repo = name.name_only();
        index
            .refs
            .iter()
            .filter_map(|(k, id)| {
                let r = Reference::parse_normalized(k).ok()?;
                let tag = r.tag.clone()?;
                (r.digest.is_none()
                    && r.name_only() == repo
                    && name.tag.as_ref().is_none_or(|t| *t == tag)
                    && index.visible(id).is_some())
                .then(|| (tag, id.clone()))
            })
            .collect()
    }

    /// Mounts blob `digest` into `at`'s repository from another repository of the same
    /// registry that an image holding it was pushed to or pulled from; gives the
    /// repository's path it came from, or `None` when none would mount it.
    async fn mount(
        &self,
        target: &Target,
        at: &oci_client::Reference,
        digest: &str,
        id: &str,
    ) -> Option<String> {
        for path in self.mount_sources(&target.reference, digest, id) {
            let from = target.other(&path);
            match target.client.mount_blob(at, &from, digest).await {
                Ok(()) => return Some(path),
                Err(e) => log::debug!("mount of {digest} from {path} refused: {e}"),
            }
        }
        None
    }

    /// Repositories of `repo`'s registry (other than `repo`) holding image `id` or an image
    /// with layer `digest`, as their repository digests record.
    fn mount_sources(&self, repo: &Reference, digest: &str, id: &str) -> Vec<String> {
        let index = self.read_index();
        let mut out: Vec<String> = Vec::new();
        for (k, image) in &index.refs {
            let Ok(r) = Reference::parse_normalized(k) else {
                continue;
            };
            if r.digest.is_none()
                || r.domain != repo.domain
                || r.path == repo.path
                || out.contains(&r.path)
            {
                continue;
            }
            let holds = image == id
                || index
                    .images
                    .get(image)
                    .is_some_and(|i| i.config.rootfs.diff_ids.iter().any(|d| d == digest));
            if holds {
                out.push(r.path);
                if out.len() == MOUNT_TRIES {
                    break;
                }
            }
        }
        out
    }

    /// Records `repo@digest` for image `id`, as a pull or push of it does.
    fn add_repo_digest(&self, repo: &Reference, digest: &str, id: &str) -> Result<()> {
        let r = Reference {
            tag: None,
            digest: Some(digest.to_string()),
            ..repo.name_only()
        };
        let _w = lock(&self.write);
        if self.read_index().visible(id).is_none() {
            // Removed while it was pushed: nothing to record it on.
            return Ok(());
        }
        self.set_refs(&[(r, id.to_string())], &[]).map(|_| ())
    }

    /// `docker push`: pushes `r`'s tag, or every tag of its repository when it names none.
    /// Says what it does on `events`; the stream's first line comes before anything can
    /// fail, as with dockerd, so every failure but an unreachable registry is the stream's.
    pub async fn push(
        self: &Arc<Self>,
        r: &Reference,
        credentials: Option<Credentials>,
        events: &UnboundedSender<TransferEvent>,
    ) -> Result<()> {
        if r.digest.is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "cannot push a digest reference: {}",
                r.familiar()
            )));
        }
        // The registry itself, never a mirror; one the daemon may not reach is refused
        // before the stream starts.
        let endpoints = self
            .registries
            .endpoints(&r.domain, false, &format!("push {}", r.familiar()))
            .await?;
        let send = |e: TransferEvent| {
            let _ = events.send(e);
        };
        send(TransferEvent::Status {
            id: None,
            status: format!("The push refers to repository [{}]", r.name()),
        });
        let tags = self.tags_to_push(r);
        if tags.is_empty() {
            return Err(EngineError::NotFound(match &r.tag {
                Some(_) if !self.tags_to_push(&r.name_only()).is_empty() => {
                    format!("tag does not exist: {}", r.familiar())
                }
                _ => format!(
                    "An image does not exist locally with the tag: {}",
                    r.familiar_name()
                ),
            }));
        }
        let connected = self
            .registries
            .connect_first(&endpoints, true, None)
            .await?;
        let target = Target {
            client: connected.client,
            chunked: distribution_client(&connected.endpoint, false)?,
            auth: registry_auth(credentials),
            reference: r.name_only(),
            host: connected.endpoint.host,
        };
        for (tag, id) in tags {
            self.push_tag(&target, &tag, &id, events).await?;
        }
        Ok(())
    }

    /// Pushes one tag: the layers the registry lacks, the config, then the manifest.
    async fn push_tag(
        self: &Arc<Self>,
        target: &Target,
        tag: &str,
        id: &str,
        events: &UnboundedSender<TransferEvent>,
    ) -> Result<()> {
        let send = |e: TransferEvent| {
            let _ = events.send(e);
        };
        let at = target.tagged(tag);
        let shown = target
            .reference
            .with_tag(tag)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let err = |e| push_error(&shown, e);
        let manifest_digest = self
            .manifest_of(id)
            .ok_or_else(|| EngineError::NotFound(format!("No such image: {}", shown.familiar())))?;
        let store = self.clone();
        let manifest = tokio::task::spawn_blocking(move || store.blob(&manifest_digest))
            .await
            .map_err(|e| EngineError::Internal(format!("cannot read a manifest: {e}")))??;
        let Parsed::Image { config, layers } = parse_manifest(&manifest)? else {
            return Err(EngineError::Internal(format!(
                "the stored manifest of {id} is an index"
            )));
        };
        for client in [&target.client, &target.chunked] {
            client
                .store_auth_if_needed(&target.host, &target.auth)
                .await;
        }
        if let Some((digest, size)) = self.push_kept(target, &at, &shown, id, events).await? {
            return self
                .finish_tag(target, &shown, tag, id, digest, size, events)
                .await;
        }
        // Docker lists the layers top first.
        for layer in layers.iter().rev() {
            send(TransferEvent::Status {
                id: Some(short_of(&layer.digest)),
                status: "Preparing".into(),
            });
        }
        for layer in layers.iter().rev() {
            let short = short_of(&layer.digest);
            if target
                .client
                .blob_exists(&at, &layer.digest)
                .await
                .map_err(err)?
            {
                send(TransferEvent::Status {
                    id: Some(short),
                    status: "Layer already exists".into(),
                });
                continue;
            }
            if let Some(from) = self.mount(target, &at, &layer.digest, id).await {
                send(TransferEvent::Status {
                    id: Some(short),
                    status: format!("Mounted from {from}"),
                });
                continue;
            }
            self.upload(target, &at, &layer.digest, layer.size, &short, events)
                .await
                .map_err(err)?;
            send(TransferEvent::Status {
                id: Some(short),
                status: "Pushed".into(),
            });
        }
        if !target
            .client
            .blob_exists(&at, &config.digest)
            .await
            .map_err(err)?
        {
            let store = self.clone();
            let digest = config.digest.clone();
            let bytes = tokio::task::spawn_blocking(move || store.blob(&digest))
                .await
                .map_err(|e| EngineError::Internal(format!("cannot read a config: {e}")))??;
            target
                .client
                .push_blob(&at, bytes, &config.digest)
                .await
                .map_err(err)?;
        }
        let digest = sha256_of(&manifest);
        let size = manifest.len() as u64;
        let content_type = reqwest::header::HeaderValue::from_static(OCI_MANIFEST);
        target
            .client
            .push_manifest_raw(&at, manifest, content_type)
            .await
            .map_err(err)?;
        self.finish_tag(target, &shown, tag, id, digest, size, events)
            .await
    }

    /// Uploads a layer from its file: in chunks when it is large, falling back to one
    /// request when the registry will not take chunks (a chunk refused as not allowed or
    /// not implemented, or answered against the spec); then the whole file again.
    async fn upload(
        &self,
        target: &Target,
        at: &oci_client::Reference,
        digest: &str,
        expected: i64,
        short: &str,
        events: &UnboundedSender<TransferEvent>,
    ) -> std::result::Result<(), OciDistributionError> {
        let open = || async {
            let file = tokio::fs::File::open(self.blob_path(digest)).await?;
            let size = file.metadata().await?.len();
            if i64::try_from(size).ok() != Some(expected) {
                return Err(std::io::Error::other(format!(
                    "layer {digest} is {size} bytes in the store, its manifest says {expected}"
                )));
            }
            Ok((file, size))
        };
        let (file, size) = open().await?;
        if size > CHUNKED_ABOVE {
            let body = upload_stream(file, PUSH_CHUNK, short.into(), size, events.clone());
            match target
                .chunked
                .push_blob_stream(at, body, digest, Some(size))
                .await
            {
                Err(OciDistributionError::SpecViolationError(why)) => {
                    log::info!(
                        "{}: chunked upload refused ({why}); one request",
                        at.whole()
                    );
                }
                Err(OciDistributionError::ServerError {
                    code: 405 | 501, ..
                }) => {
                    log::info!("{}: chunked upload not taken; one request", at.whole());
                }
                done => return done.map(|_| ()),
            }
            let (file, size) = open().await?;
            let body = upload_stream(file, CHUNK, short.into(), size, events.clone());
            return target
                .client
                .push_blob_stream(at, body, digest, Some(size))
                .await
                .map(|_| ());
        }
        let body = upload_stream(file, CHUNK, short.into(), size, events.clone());
        target
            .client
            .push_blob_stream(at, body, digest, Some(size))
            .await
            .map(|_| ())
    }

    /// A tag's manifest is in: records `repo@digest`, and says so as dockerd does.
    #[allow(clippy::too_many_arguments)]
    async fn finish_tag(
        self: &Arc<Self>,
        target: &Target,
        shown: &Reference,
        tag: &str,
        id: &str,
        digest: String,
        size: u64,
        events: &UnboundedSender<TransferEvent>,
    ) -> Result<()> {
        let send = |e: TransferEvent| {
            let _ = events.send(e);
        };
        let store = self.clone();
        let (repo, id, recorded) = (target.reference.clone(), id.to_string(), digest.clone());
        tokio::task::spawn_blocking(move || store.add_repo_digest(&repo, &recorded, &id))
            .await
            .map_err(|e| EngineError::Internal(format!("cannot record a digest: {e}")))??;
        self.event("push", &shown.familiar(), &shown.familiar());
        send(TransferEvent::Status {
            id: None,
            status: format!("{tag}: digest: {digest} size: {size}"),
        });
        send(TransferEvent::Pushed {
            tag: tag.to_string(),
            digest,
            size,
        });
        Ok(())
    }

    /// Pushes image `id` as a registry manifest a pull of it kept (compressed layers, the
    /// digest it was pulled by), when the registry has every blob that manifest names or
    /// mounts them from another of its repositories holding the image. Gives the digest and
    /// size pushed, or `None` (nothing pushed) when no kept manifest can be sent whole.
    async fn push_kept(
        self: &Arc<Self>,
        target: &Target,
        at: &oci_client::Reference,
        shown: &Reference,
        id: &str,
        events: &UnboundedSender<TransferEvent>,
    ) -> Result<Option<(String, u64)>> {
        let err = |e| push_error(shown, e);
        for kept in self.distributed_of(id) {
            let store = self.clone();
            let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || store.blob(&kept)).await else {
                continue;
            };
            let Ok(Parsed::Image { config, layers }) = parse_manifest(&bytes) else {
                continue;
            };
            let mut said = Vec::new();
            let mut whole = true;
            for blob in layers.iter().rev().chain(std::iter::once(&config)) {
                let status = if target
                    .client
                    .blob_exists(at, &blob.digest)
                    .await
                    .map_err(err)?
                {
                    "Layer already exists".to_string()
                } else if let Some(from) = self.mount(target, at, &blob.digest, id).await {
                    format!("Mounted from {from}")
                } else {
                    whole = false;
                    break;
                };
                said.push((short_of(&blob.digest), status));
            }
            if !whole {
                continue;
            }
            said.pop(); // the config's: Docker shows layers only
            for (short, _) in &said {
                let _ = events.send(TransferEvent::Status {
                    id: Some(short.clone()),
                    status: "Preparing".into(),
                });
            }
            for (short, status) in said {
                let _ = events.send(TransferEvent::Status {
                    id: Some(short),
                    status,
                });
            }
            let media = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| OCI_MANIFEST.to_string());
            let content_type = reqwest::header::HeaderValue::from_str(&media).map_err(|_| {
                EngineError::Internal(format!("a kept manifest's media type {media:?}"))
            })?;
            let (digest, size) = (sha256_of(&bytes), bytes.len() as u64);
            target
                .client
                .push_manifest_raw(at, bytes, content_type)
                .await
                .map_err(err)?;
            return Ok(Some((digest, size)));
        }
        Ok(None)
    }
}
