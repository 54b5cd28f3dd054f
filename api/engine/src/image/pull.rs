//! `docker pull`: an image from a registry over the OCI distribution protocol, through the
//! `oci-client` crate (the oras project's client: the registry's auth challenges, Basic and
//! Bearer tokens, manifests and blobs).
//!
//! What a registry sends is untrusted, as an archive given to `docker load` is: every
//! manifest and blob is checked against its digest as it arrives (blobs spooled to files
//! first, never held in memory whole), every layer then against the DiffID its config names
//! as it is unpacked ([`ImageStore::add_layer`]), and the image becomes visible only once
//! all of it is stored. An index (a multi-platform image) gives its linux/amd64 manifest.
//!
//! Where and how a registry is reached (TLS, insecure registries, Docker Hub's mirrors) is
//! [`super::registry`]'s.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::ImageConfig;
use super::reference::Reference;
use super::{hex_of, ImageStore};
use crate::{ids, EngineError, Result};

/// Largest manifest or index taken from a registry (what registries must accept).
const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config taken from a registry.
const MAX_CONFIG: usize = 8 << 20;
/// How many times a layer's download is tried before the pull fails (dockerd's 5).
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// How often a layer's download progress is reported.
pub(super) const PROGRESS_STEP: u64 = 512 << 10;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Layer types berth unpacks (plain, gzip and zstd tars).
const LAYER_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Credentials from the client's `X-Registry-Auth` header (`docker login`'s).
#[derive(Clone, Default, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// A token the registry issued at login (used as a Bearer token).
    #[serde(default, rename = "identitytoken")]
    pub identity_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a pull or a push reports as it goes, as dockerd's JSON progress stream has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferEvent {
    /// A status line, for one layer (`id`) or the whole transfer.
    Status { id: Option<String>, status: String },
    /// Bytes of a blob moved so far; `action` is Docker's word for it ("Downloading",
    /// "Pushing").
    Progress {
        id: String,
        action: &'static str,
        current: u64,
        total: u64,
    },
    /// A tag pushed: the manifest's digest and length (the stream's `aux` object).
    Pushed {
        tag: String,
        digest: String,
        size: u64,
    },
}

/// Where a registry's manifests and blobs come from for one pull.
struct Source {
    client: oci_client::Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
}

impl Source {
    fn reference(&self, tag: Option<&str>, digest: Option<&str>) -> oci_client::Reference {
        match digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.unwrap_or("latest").to_string(),
            ),
        }
    }
}

/// The client's credentials as the registry client takes them: a token from `docker
/// login` as a Bearer token, a user and password as Basic, else anonymous.
pub(super) fn registry_auth(credentials: Option<Credentials>) -> RegistryAuth {
    match credentials {
        Some(c) if !c.identity_token.is_empty() => RegistryAuth::Bearer(c.identity_token),
        Some(c) if !c.username.is_empty() => RegistryAuth::Basic(c.username, c.password),
        _ => RegistryAuth::Anonymous,
    }
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(message.into())
}

/// A registry's refusal or failure in Docker's words.
fn registry_error(r: &Reference, e: OciDistributionError) -> EngineError {
    let shown = r.familiar();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => EngineError::NotFound(format!(
            "manifest for {shown} not found: manifest unknown: manifest unknown"
        )),
        OciDistributionError::AuthenticationFailure(m) => EngineError::NotFound(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': {m}",
            r.familiar_name()
        )),
        OciDistributionError::UnauthorizedError { url } => EngineError::NotFound(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': unauthorized: {url}",
            r.familiar_name()
        )),
        OciDistributionError::RegistryError { envelope, url } => {
            let text = envelope.to_string();
            if text.to_ascii_lowercase().contains("manifest unknown")
                || text.contains("MANIFEST_UNKNOWN")
            {
                EngineError::NotFound(format!(
                    "manifest for {shown} not found: manifest unknown: manifest unknown"
                ))
            } else if text.contains("NAME_UNKNOWN") || text.contains("UNAUTHORIZED") {
                EngineError::NotFound(format!(
                    "pull access denied for {}, repository does not exist or may require 'docker login': {text}",
                    r.familiar_name()
                ))
            } else {
                EngineError::Internal(format!("error from registry at {url}: {text}"))
            }
        }
        other => EngineError::Internal(format!(
            "cannot pull {shown}: {}",
            vmm_launcher::chain(&other)
        )),
    }
}

pub(super) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A manifest or index, as much of it as a pull reads.
#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Clone, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// A blob a manifest names.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Descriptor {
    fn oci(&self) -> OciDescriptor {
        OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            ..OciDescriptor::default()
        }
    }
}

/// What a registry's manifest says: an index's linux/amd64 entry, or an image's config and
/// layers.
#[derive(Debug)]
pub enum Parsed {
    Index {
        digest: String,
        media_type: String,
    },
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Reads a manifest or index a registry sent (untrusted: fuzzed by fuzz/fuzz_targets): an
/// index gives its linux/amd64 entry; an image manifest must be schema 2, with a config and
/// layers of the types berth unpacks, each with a well-formed digest and a size.
pub fn parse_manifest(bytes: &[u8]) -> Result<Parsed> {
    if bytes.len() > MAX_MANIFEST {
        return Err(invalid("the registry sent a manifest larger than 4 MiB"));
    }
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("the registry sent an invalid manifest: {e}")))?;
    if manifest.media_type == OCI_INDEX
        || manifest.media_type == DOCKER_LIST
        || manifest.manifests.is_some()
    {
        let entries = manifest.manifests.unwrap_or_default();
        let chosen = entries
            .into_iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == "amd64"
                        && p.variant.as_deref().unwrap_or("").is_empty()
                })
            })
            .ok_or_else(|| {
                EngineError::NotFound(
                    "no matching manifest for linux/amd64 in the manifest list entries".into(),
                )
            })?;
        if !super::reference::valid_digest(&chosen.digest) {
            return Err(invalid(format!(
                "the registry's index names an invalid digest {:?}",
                chosen.digest
            )));
        }
        return Ok(Parsed::Index {
            digest: chosen.digest,
            media_type: chosen.media_type,
        });
    }
    if manifest.schema_version != 2 {
        return Err(invalid(format!(
            "unsupported manifest schema version {} (berth reads version 2: Docker's schema 2 and OCI manifests)",
            manifest.schema_version
        )));
    }
    let config = manifest
        .config
        .ok_or_else(|| invalid("the registry sent a manifest without a config"))?;
    for d in std::iter::once(&config).chain(&manifest.layers) {
        if d.size < 0 || !super::reference::valid_digest(&d.digest) {
            return Err(invalid(format!(
                "the registry sent an invalid descriptor ({:?}, {} bytes)",
                d.digest, d.size
            )));
        }
    }
    for layer in &manifest.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(invalid(format!(
                "layer {} has media type {:?}, which berth does not unpack",
                layer.digest, layer.media_type
            )));
        }
    }
    Ok(Parsed::Image {
        config,
        layers: manifest.layers,
    })
}

/// The platform a pull asks for: `linux/amd64` (berth runs nothing else).
fn check_platform(platform: Option<&str>) -> Result<()> {
    match platform {
        None | Some("") | Some("linux") | Some("linux/amd64") => Ok(()),
        Some(p) => Err(invalid(format!(
            "berth runs linux/amd64 images only, not {p}"
        ))),
    }
}

impl ImageStore {
    /// `docker pull`: fetches `r` (a tag or a digest; the tag `latest` when it has
    /// neither) for linux/amd64, stores it and tags it; returns the final status line.
    pub async fn pull(
        self: &Arc<Self>,
        r: &Reference,
        platform: Option<&str>,
        credentials: Option<Credentials>,
        events: &tokio::sync::mpsc::UnboundedSender<TransferEvent>,
    ) -> Result<String> {
        check_platform(platform)?;
        let r = if r.tag.is_none() && r.digest.is_none() {
            r.clone().with_default_tag()
        } else {
            r.clone()
        };
        let send = |e: TransferEvent| {
            let _ = events.send(e);
        };
        // The manifest (through an index where there is one), each checked by digest, from
        // the first endpoint that answers (a mirror that lacks it gives way to the next).
        let auth = registry_auth(credentials);
        let wanted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let mut found = None;
        let mut failed = None;
        let what = format!("pull {}", r.familiar());
        for endpoint in self.registries.endpoints(&r.domain, true, &what).await? {
            let connected = match self.registries.connect(&endpoint, false, None).await {
                Ok(c) => c,
                Err(e) => {
                    log::info!("pull of {}: {e}", r.familiar());
                    failed = Some(e);
                    continue;
                }
            };
            let source = Source {
                client: connected.client,
                auth: auth.clone(),
                registry: endpoint.host.clone(),
                repository: r.path.clone(),
            };
            let top = source.reference(r.tag.as_deref(), r.digest.as_deref());
            match source
                .client
                .pull_manifest_raw(&top, &source.auth, &wanted)
                .await
            {
                Ok((bytes, _)) => {
                    found = Some((source, top, bytes));
                    break;
                }
                Err(e) if endpoint.mirror => {
                    log::info!(
                        "pull of {} from the mirror {}: {e}",
                        r.familiar(),
                        endpoint.host
                    );
                    failed = Some(registry_error(&r, e));
                }
                Err(e) => return Err(registry_error(&r, e)),
            }
        }
        let Some((source, top, bytes)) = found else {
            return Err(failed.unwrap_or_else(|| {
                EngineError::Internal(format!("no registry endpoint for {}", r.domain))
            }));
        };
        let repo_digest = sha256_of(&bytes);
        if let Some(d) = &r.digest {
            if *d != repo_digest {
                return Err(invalid(format!(
                    "manifest verification failed for digest {d}: the registry sent {repo_digest}"
                )));
            }
        }
        let (config_desc, layers, image_manifest) = match parse_manifest(&bytes)? {
            Parsed::Image { config, layers } => (config, layers, bytes),
            Parsed::Index { digest, media_type } => {
                let inner = source.reference(None, Some(&digest));
                let media = if media_type.is_empty() {
                    vec![OCI_MANIFEST, DOCKER_MANIFEST]
                } else {
                    vec![media_type.as_str()]
                };
                let (bytes, _) = source
                    .client
                    .pull_manifest_raw(&inner, &source.auth, &media)
                    .await
                    .map_err(|e| registry_error(&r, e))?;
                if sha256_of(&bytes) != digest {
                    return Err(invalid(format!(
                        "manifest verification failed for digest {digest}"
                    )));
                }
                match parse_manifest(&bytes)? {
                    Parsed::Image { config, layers } => (config, layers, bytes),
                    Parsed::Index { .. } => {
                        return Err(invalid(format!(
                            "{digest} is an index inside an index, which berth does not follow"
                        )))
                    }
                }
            }
        };
        // Said once the manifest is in (a missing tag or refused credentials are the
        // request's error, not the stream's).
        send(TransferEvent::Status {
            id: r.tag.clone().or_else(|| r.digest.clone()),
            status: format!("Pulling from {}", r.familiar_name()),
        });

        // The config: small, held in memory, checked.
        if config_desc.size < 0 || config_desc.size as usize > MAX_CONFIG {
            return Err(invalid(format!(
                "the image config of {} is too large ({} bytes)",
                r.familiar(),
                config_desc.size
            )));
        }
        let mut config_bytes = Vec::new();
        source
            .client
            .pull_blob(&top, &config_desc.oci(), &mut config_bytes)
            .await
            .map_err(|e| registry_error(&r, e))?;
        if sha256_of(&config_bytes) != config_desc.digest {
            return Err(invalid(format!(
                "the image config of {} does not match its digest {}",
                r.familiar(),
                config_desc.digest
            )));
        }
        let config = ImageConfig::parse(&config_bytes).map_err(|e| invalid(e.to_string()))?;
        if config.os != "linux"
            || (!config.architecture.is_empty() && config.architecture != "amd64")
        {
            return Err(invalid(format!(
                "image {} is for {}/{}: berth runs linux/amd64 images only",
                r.familiar(),
                config.os,
                config.architecture
            )));
        }
        if layers.len() != config.rootfs.diff_ids.len() {
            return Err(invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                config.rootfs.diff_ids.len(),
                layers.len()
            )));
        }

        // The layers berth lacks, each spooled to a file and checked as it arrives.
        let dir = self.temp_dir("pull")?;
        let downloaded = self
            .download_layers(&source, &top, &r, &layers, &config, &dir, &send)
            .await;
        let files = match downloaded {
            Ok(files) => files,
            Err(e) => {
                let _ = crate::fsutil::remove_tree(&dir);
                return Err(e);
            }
        };

        // Unpacked and committed on a blocking thread: the pins live there.
        let store = self.clone();
        let events = events.clone();
        let diff_ids = config.rootfs.diff_ids.clone();
        let layer_ids: Vec<String> = layers.iter().map(|l| short_of(&l.digest)).collect();
        let named = r.clone();
        let stored = tokio::task::spawn_blocking(move || -> Result<String> {
            let mut pins = Vec::new();
            for (i, diff_id) in diff_ids.iter().enumerate() {
                pins.push(store.pin(diff_id));
                let Some(path) = &files[i] else { continue };
                let id = layer_ids[i].clone();
                let _ = events.send(TransferEvent::Status {
                    id: Some(id.clone()),
                    status: "Extracting".into(),
                });
                if store.layer(diff_id).is_none() {
                    let file = std::fs::File::open(path).map_err(|e| {
                        EngineError::Internal(format!("cannot read a pulled layer: {e}"))
                    })?;
                    let (_, pin) = store
                        .add_layer(std::io::BufReader::new(file), Some(diff_id))
                        .map_err(|e| match e {
                            EngineError::InvalidArgument(m) => invalid(format!("layer {i}: {m}")),
                            other => other,
                        })?;
                    pins.push(pin);
                }
                let _ = events.send(TransferEvent::Status {
                    id: Some(id),
                    status: "Pull complete".into(),
                });
            }
            let before = named
                .tag
                .as_ref()
                .and_then(|_| store.resolve(&named.familiar()).ok())
                .map(|i| i.id);
            let tags: Vec<Reference> = named.tag.iter().map(|_| named.clone()).collect();
            let digest_ref = Reference {
                tag: None,
                digest: Some(repo_digest.clone()),
                ..named.clone()
            };
            let (id, _) = store.commit(&config_bytes, &tags, &[digest_ref], "")?;
            // Kept for pushes: with it, the image goes back with the digest it came by.
            store.add_distributed(&id, &image_manifest)?;
            drop(pins);
            store.event("pull", &named.familiar(), &named.familiar());
            let _ = events.send(TransferEvent::Status {
                id: None,
                status: format!("Digest: {repo_digest}"),
            });
            Ok(if before.as_deref() == Some(id.as_str()) {
                format!("Status: Image is up to date for {}", named.familiar())
            } else {
                format!("Status: Downloaded newer image for {}", named.familiar())
            })
        })
        .await
        .map_err(|e| EngineError::Internal(format!("the pull's unpacking failed: {e}")));
        let _ = crate::fsutil::remove_tree(&dir);
        stored?
    }

    /// Downloads the layers of `layers` that the store lacks into `dir`, one file per
    /// layer (`None` for those it has), checking each against its digest and size.
    #[allow(clippy::too_many_arguments)]
    async fn download_layers(
        &self,
        source: &Source,
        top: &oci_client::Reference,
        r: &Reference,
        layers: &[Descriptor],
        config: &ImageConfig,
        dir: &Path,
        send: &(dyn Fn(TransferEvent) + Sync),
    ) -> Result<Vec<Option<std::path::PathBuf>>> {
        let mut files = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let id = short_of(&layer.digest);
            let diff_id = &config.rootfs.diff_ids[i];
            if self.layer(diff_id).is_some() {
                send(TransferEvent::Status {
                    id: Some(id),
                    status: "Already exists".into(),
                });
                files.push(None);
                continue;
            }
            send(TransferEvent::Status {
                id: Some(id.clone()),
                status: "Pulling fs layer".into(),
            });
            // Checked by parse_manifest: a well-formed digest, a size not negative.
            let total = layer.size as u64;
            let path = dir.join(format!("layer-{i}"));
            let create = || {
                std::fs::File::create(&path)
                    .map(std::io::BufWriter::new)
                    .map_err(|e| EngineError::Internal(format!("cannot spool a layer: {e}")))
            };
            let mut file = create()?;
            let mut hasher = Sha256::new();
            let mut current = 0u64;
            let mut reported = 0u64;
            let mut attempt = 1;
            // A download that breaks is taken up where it stopped (a Range request), as
            // dockerd does, up to DOWNLOAD_ATTEMPTS times; a registry that answers with
            // the whole blob again starts it over.
            loop {
                let broke = |e: String| {
                    EngineError::Internal(format!(
                        "cannot pull {}: the download of layer {} broke: {e}",
                        r.familiar(),
                        layer.digest
                    ))
                };
                let started = if current == 0 {
                    source.client.pull_blob_stream(top, &layer.oci()).await
                } else {
                    match source
                        .client
                        .pull_blob_stream_partial(top, &layer.oci(), current, None)
                        .await
                    {
                        Ok(BlobResponse::Partial(s)) => Ok(s),
                        Ok(BlobResponse::Full(s)) => {
                            file = create()?;
                            hasher = Sha256::new();
                            (current, reported) = (0, 0);
                            Ok(s)
                        }
                        Err(e) => Err(e),
                    }
                };
                let failure = match started {
                    // The registry's refusal of the first request is its answer.
                    Err(e) if current == 0 && attempt == 1 => return Err(registry_error(r, e)),
                    Err(e) => broke(vmm_launcher::chain(&e)),
                    Ok(mut stream) => {
                        let mut failure = None;
                        while let Some(chunk) = stream.stream.next().await {
                            let chunk = match chunk {
                                Ok(c) => c,
                                // The client checks the digest too, as a whole blob ends.
                                Err(e) if e.to_string().contains("Invalid digest") => {
                                    return Err(invalid(format!(
                                        "filesystem layer verification failed for digest {}: {e}",
                                        layer.digest
                                    )))
                                }
                                Err(e) => {
                                    failure = Some(broke(e.to_string()));
                                    break;
                                }
                            };
                            current += chunk.len() as u64;
                            if current > total {
                                return Err(invalid(format!(
                                    "layer {} is larger than its descriptor's {total} bytes",
                                    layer.digest
                                )));
                            }
                            hasher.update(&chunk);
                            file.write_all(&chunk).map_err(|e| {
                                EngineError::Internal(format!("cannot spool a layer: {e}"))
                            })?;
                            if current - reported >= PROGRESS_STEP || current == total {
                                reported = current;
                                send(TransferEvent::Progress {
                                    id: id.clone(),
                                    action: "Downloading",
                                    current,
                                    total,
                                });
                            }
                        }
                        match failure {
                            None => break,
                            Some(f) => f,
                        }
                    }
                };
                if attempt >= DOWNLOAD_ATTEMPTS {
                    return Err(failure);
                }
                log::info!("{failure}: retrying ({attempt} of {DOWNLOAD_ATTEMPTS} attempts made)");
                let wait = attempt as u64;
                send(TransferEvent::Status {
                    id: Some(id.clone()),
                    status: format!(
                        "Retrying in {wait} second{}",
                        if wait == 1 { "" } else { "s" }
                    ),
                });
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                attempt += 1;
            }
            file.flush()
                .map_err(|e| EngineError::Internal(format!("cannot spool a layer: {e}")))?;
            send(TransferEvent::Status {
                id: Some(id.clone()),
                status: "Verifying Checksum".into(),
            });
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            if got != layer.digest || current != total {
                return Err(invalid(format!(
                    "filesystem layer verification failed for digest {}: the registry sent {current} bytes hashing to {got}",
                    layer.digest
                )));
            }
            send(TransferEvent::Status {
                id: Some(id),
                status: "Download complete".into(),
            });
            files.push(Some(path));
        }
        Ok(files)
    }
}

/// Why `docker login` failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The registry refused the credentials (Docker's 401).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Other(#[from] EngineError),
}

/// `docker login` (`POST /auth`): checks `credentials` against the registry at `server`
/// (`host:port`, with or without a scheme or path), as dockerd does: `GET /v2/` with them as
/// Basic credentials, and where the registry answers with a token service, a token asked for
/// with them.
pub async fn login(
    registries: &super::registry::Registries,
    server: &str,
    credentials: &Credentials,
) -> std::result::Result<(), LoginError> {
    let domain = super::registry::login_domain(server);
    if domain.is_empty() {
        return Err(invalid(format!("cannot log in to {server:?}: no registry named")).into());
    }
    // A login goes to the registry itself, never to a mirror.
    let endpoints = registries
        .endpoints(&domain, false, &format!("log in to {domain}"))
        .await?;
    let connected = registries
        .connect_first(
            &endpoints,
            false,
            Some((&credentials.username, &credentials.password)),
        )
        .await?;
    let (status, url) = (connected.status, connected.url.clone());
    if status.is_success() {
        return Ok(());
    }
    let refused = || {
        LoginError::Refused(format!(
            "login attempt to {url} failed with status: {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ))
    };
    if status != reqwest::StatusCode::UNAUTHORIZED
        || !connected
            .challenge
            .to_ascii_lowercase()
            .starts_with("bearer")
    {
        return Err(refused());
    }
    // A token service: the credentials are good if it issues a token for them.
    let probe = oci_client::Reference::with_tag(
        connected.endpoint.host.clone(),
        "library/hello".into(),
        "latest".into(),
    );
    let auth = RegistryAuth::Basic(credentials.username.clone(), credentials.password.clone());
    match connected
        .client
        .auth(&probe, &auth, oci_client::RegistryOperation::Pull)
        .await
    {
        Ok(_) => Ok(()),
        Err(OciDistributionError::AuthenticationFailure(_)) => Err(refused()),
        Err(e) => Err(EngineError::Internal(format!(
            "cannot log in at {url}: {}",
            vmm_launcher::chain(&e)
        ))
        .into()),
    }
}

/// A layer's short id as Docker's progress shows it (12 hex digits of its digest).
pub(super) fn short_of(digest: &str) -> String {
    ids::short(hex_of(digest)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linux_amd64_is_asked_for() {
        assert!(check_platform(None).is_ok());
        assert!(check_platform(Some("linux/amd64")).is_ok());
        assert!(check_platform(Some("linux/arm64")).is_err());
    }
}
