//! The image store: content-addressed blobs, image configs and manifests, tags, and layers
//! unpacked once (confined) and shared by every image and container that uses them.
//!
//! What containers need from it is [`ImageStore::resolve`]: an image's identity, the runtime
//! part of its config, and its unpacked layer directories for overlayfs. The Docker API's
//! image endpoints use the rest: load/save/import ([`archive`]), tag, delete, list, inspect,
//! history; [`pull`] and [`push`] are the registry's side. It does not build.
//!
//! Layout under `<data-root>/image/` (ARCHITECTURE.md, "Images"):
//! ```text
//! blobs/sha256/<hex>     image configs (hex = image id), OCI manifests, and each layer's
//!                        uncompressed tar (hex = DiffID), every one verified on write
//! layers/<hex>/diff/     a layer unpacked (hex = DiffID): an overlayfs lower dir
//! layers/<hex>/layer.json
//! images/<hex>.json      one record per image (hex = image id): written last, so an image
//!                        whose record exists is complete
//! repositories.json      tags and digests → image ids
//! tmp/                   work in progress (wiped at open)
//! ```

pub mod archive;
pub mod changes;
pub mod commit;
pub mod config;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod search;
pub mod unpack;
pub mod xz;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{fsutil, ids, time, EngineError, Result};
use config::{ContainerConfig, ImageConfig};
use reference::{AnyReference, Reference};

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
    #[serde(default)]
    pub healthcheck: Option<serde_json::Value>,
}

/// An image, ready to run a container from.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// `sha256:<64 hex>`.
    pub id: String,
    pub config: ImageRuntimeConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// The image's whole container config (healthcheck, shell, on-build, ...), for
    /// container inspect.
    pub full_config: ContainerConfig,
}

/// A container using an image, for `docker rmi`'s conflict rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageUser {
    /// Empty when the caller does not know it.
    pub container_id: String,
    pub running: bool,
}

/// Image id → the containers that use it.
pub type ImageUsers = HashMap<String, Vec<ImageUser>>;

/// One line of `docker rmi`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DeleteItem {
    Untagged(String),
    Deleted(String),
}

/// What `docker image inspect` and `docker images` show about an image.
#[derive(Clone, Debug)]
pub struct ImageDetails {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub config: ImageConfig,
    /// Sum of the layers' sizes.
    pub size: u64,
    /// Unpacked layer directories, lowest first.
    pub layer_dirs: Vec<PathBuf>,
    pub last_tag_time: Option<String>,
    /// Seconds since the epoch (0 when the config has no date).
    pub created_unix: i64,
}

/// One line of `docker history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    /// The image id on the newest line, `<missing>` below it.
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub comment: String,
}

/// `docker images` options.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub all: bool,
    /// Docker's `filters`: dangling, label, before, since, until, reference.
    pub filters: HashMap<String, Vec<String>>,
}

/// A layer as the store records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: String,
    /// Docker's size of the unpacked tree.
    pub size: u64,
    /// Length of the uncompressed tar (the blob `docker save` writes).
    pub tar_size: u64,
}

/// An image's record (`images/<hex>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    /// The OCI manifest berth wrote for it (config + uncompressed layer blobs).
    manifest: String,
    /// When this store got it.
    added: String,
    #[serde(default)]
    last_tag_time: Option<String>,
    /// The legacy parent id (from `docker save` archives that name one).
    #[serde(default)]
    parent: String,
    /// Removed with `docker rmi -f` while a container still used it: invisible, but its
    /// layers stay until [`ImageStore::release_unused`] sees no container using it.
    #[serde(default)]
    hidden: bool,
    /// Registry manifests of this image (blobs, by digest) as a pull took them, with their
    /// compressed layers: a push to a registry that has those blobs sends one again, so the
    /// image keeps its repository digest, as with dockerd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    distributed: Vec<String>,
}

/// An image in memory.
#[derive(Debug)]
struct Image {
    config: ImageConfig,
    record: ImageRecord,
    layers: Vec<LayerInfo>,
}

impl Image {
    fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct RefsFile {
    /// Full reference (`docker.io/library/busybox:latest`) → image id.
    refs: BTreeMap<String, String>,
}

#[derive(Default)]
struct Index {
    images: HashMap<String, Arc<Image>>,
    refs: BTreeMap<String, String>,
}

impl Index {
    fn visible(&self, id: &str) -> Option<&Arc<Image>> {
        self.images.get(id).filter(|i| !i.record.hidden)
    }

    /// References to `id`, parsed, in a stable order.
    fn refs_of(&self, id: &str) -> Vec<Reference> {
        self.refs
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .filter_map(|(k, _)| Reference::parse_normalized(k).ok())
            .collect()
    }

    fn children(&self, id: &str) -> usize {
        self.images
            .values()
            .filter(|i| !i.record.hidden && i.record.parent == id)
            .count()
    }
}

/// Layers pinned by work in progress (a load reusing a layer), so deletion leaves them.
struct Pins(Mutex<HashMap<String, usize>>);

/// Unpins its layer when dropped.
pub(crate) struct Pin<'a> {
    pins: &'a Pins,
    hex: String,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut map = self.pins.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.hex) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.hex);
            }
        }
    }
}

/// The image store.
pub struct ImageStore {
    root: PathBuf,
    index: RwLock<Index>,
    /// Serialises changes to records.
    write: Mutex<()>,
    pins: Pins,
    /// Where `docker events` hears of tags, untags, deletes, loads, imports and saves.
    events: Option<Arc<crate::events::Events>>,
    /// Where registries are reached, and how (berthd's registry options).
    registries: registry::Registries,
}

fn internal(context: impl std::fmt::Display, e: impl std::fmt::Display) -> EngineError {
    EngineError::internal(context, e)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The ChainIDs of a list of DiffIDs (`chain[0] = diff[0]`, then sha256 of "parent child").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

fn not_found(name: &str) -> EngineError {
    EngineError::NotFound(format!("No such image: {name}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ImageStore {
    /// Opens the store under `root`, creating it if needed, dropping work a crash left
    /// behind and any layer or blob no image references.
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| internal(format!("cannot create {}", dir.display()), e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| internal(format!("cannot restrict {}", root.display()), e))?;
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(|e| internal("cannot read tmp", e))? {
            let entry = entry.map_err(|e| internal("cannot read tmp", e))?;
            let _ = remove_any(&entry.path());
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            index: RwLock::new(Index::default()),
            write: Mutex::new(()),
            pins: Pins(Mutex::new(HashMap::new())),
            events: None,
            registries: registry::Registries::default(),
        };
        store.load_index()?;
        store.collect_garbage();
        Ok(store)
    }

    /// The store reports what it does to `events`.
    pub fn with_events(mut self, events: Arc<crate::events::Events>) -> Self {
        self.events = Some(events);
        self
    }

    /// The store reaching registries as `registries` says.
    pub fn with_registries(mut self, registries: registry::Registries) -> Self {
        self.registries = registries;
        self
    }

    /// The registry options in force.
    pub fn registries(&self) -> &registry::Registries {
        &self.registries
    }

    /// An image event as dockerd reports it: the image's id, and `name` as its attribute.
    pub(crate) fn event(&self, action: &str, id: &str, name: &str) {
        if let Some(events) = &self.events {
            let mut attributes = std::collections::BTreeMap::new();
            attributes.insert("name".to_string(), name.to_string());
            events.emit(crate::events::Kind::Image, action, id, attributes);
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An anonymous file in the store's scratch directory (unlinked at once: it goes when
    /// closed, whatever happens), for an upload to land in before it is processed.
    pub fn scratch_file(&self) -> Result<std::fs::File> {
        let path = self
            .root
            .join("tmp")
            .join(format!("upload-{}", ids::new_id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| internal("cannot create a file for an upload", e))?;
        let _ = std::fs::remove_file(&path);
        Ok(file)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex_of(diff_id))
    }

    /// The overlayfs lower dir of a layer.
    pub fn layer_diff_dir(&self, diff_id: &str) -> PathBuf {
        self.layer_dir(diff_id).join("diff")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", hex_of(id)))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_layer_info(&self, diff_id: &str) -> Option<LayerInfo> {
        let bytes = std::fs::read(self.layer_dir(diff_id).join("layer.json")).ok()?;
        let info: LayerInfo = serde_json::from_slice(&bytes).ok()?;
        (info.diff_id == diff_id && self.blob_path(diff_id).exists()).then_some(info)
    }

    fn load_index(&self) -> Result<()> {
        let mut index = Index::default();
        let dir = self.root.join("images");
        for entry in
            std::fs::read_dir(&dir).map_err(|e| internal("cannot read image records", e))?
        {
            let entry = entry.map_err(|e| internal("cannot read image records", e))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match self.load_image(&path) {
                Ok(img) => {
                    index.images.insert(img.record.id.clone(), Arc::new(img));
                }
                Err(e) => log::warn!("image record {} dropped: {e}", path.display()),
            }
        }
        if let Ok(bytes) = std::fs::read(self.refs_path()) {
            match serde_json::from_slice::<RefsFile>(&bytes) {
                Ok(f) => {
                    for (k, v) in f.refs {
                        if index.visible(&v).is_some() && Reference::parse_normalized(&k).is_ok() {
                            index.refs.insert(k, v);
                        }
                    }
                }
                Err(e) => log::warn!("{} unreadable, tags lost: {e}", self.refs_path().display()),
            }
        }
        *self.write_index() = index;
        Ok(())
    }

    fn load_image(&self, record_path: &Path) -> Result<Image> {
        let bytes = std::fs::read(record_path).map_err(|e| internal("cannot read", e))?;
        let record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| internal("invalid record", e))?;
        let config_bytes =
            std::fs::read(self.blob_path(&record.id)).map_err(|e| internal("config blob", e))?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes))) != record.id {
            return Err(EngineError::Internal(
                "config blob does not match the image id".into(),
            ));
        }
        let config = ImageConfig::parse(&config_bytes).map_err(|e| internal("config", e))?;
        let mut layers = Vec::new();
        for d in &config.rootfs.diff_ids {
            layers.push(
                self.read_layer_info(d)
                    .ok_or_else(|| EngineError::Internal(format!("layer {d} missing")))?,
            );
        }
        Ok(Image {
            config,
            record,
            layers,
        })
    }

    /// Removes layers and blobs that no image record references (after a crash or an
    /// interrupted delete). Only called when nothing else runs.
    fn collect_garbage(&self) {
        let index = self.read_index();
        let mut keep: HashSet<String> = HashSet::new();
        for img in index.images.values() {
            keep.insert(hex_of(&img.record.id).to_string());
            keep.insert(hex_of(&img.record.manifest).to_string());
            for d in &img.record.distributed {
                keep.insert(hex_of(d).to_string());
            }
            for l in &img.layers {
                keep.insert(hex_of(&l.diff_id).to_string());
            }
        }
        drop(index);
        for sub in ["layers", "blobs/sha256"] {
            let Ok(entries) = std::fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    log::info!("image store: removing unreferenced {sub}/{name}");
                    let _ = remove_any(&entry.path());
                }
            }
        }
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        self.read_index()
            .images
            .values()
            .filter(|i| !i.record.hidden)
            .count()
    }

    /// Finds an image id the way Docker does: a full id (`sha256:` optional), a tag or
    /// digest reference, then a unique id prefix.
    fn lookup(&self, index: &Index, name: &str) -> Result<String> {
        let any =
            AnyReference::parse(name).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let named = match any {
            AnyReference::Id(id) => {
                return index
                    .visible(&id)
                    .map(|_| id.clone())
                    .ok_or_else(|| not_found(name));
            }
            AnyReference::Named(r) => r,
        };
        let full = named.clone().with_default_tag();
        if let Some(id) = index.refs.get(&full.to_string()) {
            if index.visible(id).is_some() {
                return Ok(id.clone());
            }
        }
        if let Some(found) = self.search_prefix(index, name)? {
            return Ok(found);
        }
        Err(not_found(&full.familiar()))
    }

    /// A unique image id starting with `term` (`sha256:` optional).
    fn search_prefix(&self, index: &Index, term: &str) -> Result<Option<String>> {
        let hex = term.strip_prefix("sha256:").unwrap_or(term);
        if !ids::is_hex_prefix(hex) {
            return Ok(None);
        }
        let mut found = index
            .images
            .values()
            .filter(|i| !i.record.hidden && hex_of(&i.record.id).starts_with(hex));
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(Some(one.record.id.clone())),
            (Some(_), Some(_)) => Err(EngineError::InvalidArgument(format!(
                "ambiguous image id prefix {term:?}: more than one image matches"
            ))),
            _ => Ok(None),
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Image>> {
        let index = self.read_index();
        let id = self.lookup(&index, name)?;
        index
            .images
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    fn resolved(&self, img: &Image) -> ResolvedImage {
        let full_config = img.config.container_config();
        ResolvedImage {
            id: img.record.id.clone(),
            config: full_config.runtime(),
            layers: img
                .layers
                .iter()
                .map(|l| self.layer_diff_dir(&l.diff_id))
                .collect(),
            full_config,
        }
    }

    /// Finds an image by name[:tag], full or short id, or digest.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let img = self.get(reference)?;
        Ok(self.resolved(&img))
    }

    /// An image by exact id for a container created from it, even one removed with
    /// `rmi -f` since (its layers stay while a container uses it).
    pub fn resolve_for_container(&self, id: &str) -> Result<ResolvedImage> {
        let index = self.read_index();
        let img = index.images.get(id).ok_or_else(|| not_found(id))?;
        Ok(self.resolved(img))
    }

    /// Forgets images removed with `rmi -f` that no container uses any more, and their
    /// layers. Call after a container is removed, and at startup once containers are loaded.
    pub fn release_unused(&self, in_use: &HashSet<String>) -> Result<()> {
        let _w = lock(&self.write);
        let hidden: Vec<String> = self
            .read_index()
            .images
            .values()
            .filter(|i| i.record.hidden && !in_use.contains(&i.record.id))
            .map(|i| i.record.id.clone())
            .collect();
        for id in hidden {
            self.remove_image(&id)?;
        }
        Ok(())
    }

    fn details(&self, index: &Index, img: &Image) -> ImageDetails {
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for r in index.refs_of(&img.record.id) {
            if r.digest.is_some() {
                repo_digests.push(r.familiar());
            } else {
                repo_tags.push(r.familiar());
            }
        }
        let created_unix = img
            .config
            .created
            .as_deref()
            .and_then(time::parse_rfc3339)
            .map(time::unix_secs)
            .unwrap_or(0);
        ImageDetails {
            id: img.record.id.clone(),
            repo_tags,
            repo_digests,
            parent: if img.record.parent.is_empty() {
                img.config.parent.clone()
            } else {
                img.record.parent.clone()
            },
            config: img.config.clone(),
            size: img.size(),
            layer_dirs: img
                .layers
                .iter()
                .map(|l| self.layer_diff_dir(&l.diff_id))
                .collect(),
            last_tag_time: img.record.last_tag_time.clone(),
            created_unix,
        }
    }

    /// `docker image inspect`.
    pub fn inspect(&self, name: &str) -> Result<ImageDetails> {
        let img = self.get(name)?;
        let index = self.read_index();
        Ok(self.details(&index, &img))
    }

    /// `docker history`: newest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryItem>> {
        let img = self.get(name)?;
        let index = self.read_index();
        let tags: Vec<String> = index
            .refs_of(&img.record.id)
            .into_iter()
            .filter(|r| r.tag.is_some())
            .map(|r| r.familiar())
            .collect();
        let mut out = Vec::new();
        let mut layer = 0;
        let entries: Vec<config::History> = if img.config.history.is_empty() {
            // Configs without history: one line per layer, as Docker shows them.
            img.layers
                .iter()
                .map(|_| config::History {
                    created: img.config.created.clone(),
                    ..Default::default()
                })
                .collect()
        } else {
            img.config.history.clone()
        };
        for h in &entries {
            let mut size = 0;
            if !h.empty_layer {
                let l = img.layers.get(layer).ok_or_else(|| {
                    EngineError::Internal("too many non-empty layers in History section".into())
                })?;
                size = l.size;
                layer += 1;
            }
            out.push(HistoryItem {
                id: "<missing>".into(),
                created: h
                    .created
                    .as_deref()
                    .and_then(time::parse_rfc3339)
                    .map(time::unix_secs)
                    .unwrap_or(0),
                created_by: h.created_by.clone(),
                tags: Vec::new(),
                size,
                comment: h.comment.clone(),
            });
        }
        out.reverse();
        if let Some(first) = out.first_mut() {
            first.id = img.record.id.clone();
            first.tags = tags;
        }
        Ok(out)
    }

    /// Docker's `repo`+`tag` pair as a tag reference (`RepoTagReference`); `None` when
    /// `repo` is empty.
    pub fn repo_tag(repo: &str, tag: &str) -> Result<Option<Reference>> {
        if repo.is_empty() {
            return Ok(None);
        }
        let bad = |e: reference::ReferenceError| EngineError::InvalidArgument(e.to_string());
        let r = Reference::parse_normalized(repo).map_err(bad)?;
        if r.digest.is_some() {
            return Err(EngineError::InvalidArgument(
                "cannot import digest reference".into(),
            ));
        }
        let r = if tag.is_empty() {
            r.with_default_tag()
        } else {
            r.with_tag(tag).map_err(bad)?
        };
        Ok(Some(r))
    }

    /// `docker tag SOURCE REPO[:TAG]`.
    pub fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<()> {
        let Some(target) = Self::repo_tag(repo, tag)? else {
            return Err(EngineError::InvalidArgument(
                "repository name must have at least one component".into(),
            ));
        };
        if target.familiar_name() == "sha256" {
            return Err(EngineError::InvalidArgument(
                "refusing to create an ambiguous tag using digest algorithm as name".into(),
            ));
        }
        let _w = lock(&self.write);
        let id = {
            let index = self.read_index();
            self.lookup(&index, source)?
        };
        self.set_refs(&[(target.clone(), id.clone())], &[])?;
        self.touch_tag_time(&id)?;
        self.event("tag", &id, &target.familiar());
        Ok(())
    }

    fn touch_tag_time(&self, id: &str) -> Result<()> {
        let Some(img) = self.read_index().images.get(id).cloned() else {
            return Ok(());
        };
        let mut record = img.record.clone();
        record.last_tag_time = Some(time::rfc3339(SystemTime::now()));
        self.replace_record(&img, record)
    }

    /// Writes `img`'s new `record` and puts it in the index in place of the old one.
    fn replace_record(&self, img: &Image, record: ImageRecord) -> Result<()> {
        self.write_record(&record)?;
        let id = record.id.clone();
        let updated = Image {
            config: img.config.clone(),
            record,
            layers: img.layers.clone(),
        };
        self.write_index().images.insert(id, Arc::new(updated));
        Ok(())
    }

    fn write_record(&self, record: &ImageRecord) -> Result<()> {
        fsutil::atomic_write_json(&self.record_path(&record.id), record)
            .map_err(|e| internal("cannot write the image record", e))
    }

    /// Adds `add` and removes `remove` references, persisting the whole table atomically.
    /// Returns the ids the added references used to point to.
    fn set_refs(
        &self,
        add: &[(Reference, String)],
        remove: &[Reference],
    ) -> Result<Vec<(Reference, String)>> {
        let mut refs = self.read_index().refs.clone();
        let mut moved = Vec::new();
        for r in remove {
            refs.remove(&r.to_string());
        }
        for (r, id) in add {
            if let Some(old) = refs.insert(r.to_string(), id.clone()) {
                if &old != id {
                    moved.push((r.clone(), old));
                }
            }
        }
        fsutil::atomic_write_json(&self.refs_path(), &RefsFile { refs: refs.clone() })
            .map_err(|e| internal("cannot write the tag table", e))?;
        self.write_index().refs = refs;
        Ok(moved)
    }

    /// `docker images`.
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<ImageDetails>> {
        const ACCEPTED: [&str; 6] = ["dangling", "label", "before", "since", "until", "reference"];
        for key in opts.filters.keys() {
            if !ACCEPTED.contains(&key.as_str()) {
                return Err(EngineError::InvalidArgument(format!(
                    "Invalid filter '{key}'"
                )));
            }
        }
        let f = |k: &str| opts.filters.get(k).map(Vec::as_slice).unwrap_or_default();
        let dangling_only = match f("dangling") {
            [] => false,
            values => {
                let all_true = values.iter().all(|v| matches!(v.as_str(), "true" | "1"));
                let all_false = values.iter().all(|v| matches!(v.as_str(), "false" | "0"));
                if !all_true && !all_false {
                    return Err(EngineError::InvalidArgument(format!(
                        "Invalid filter 'dangling=[{}]'",
                        values.join(" ")
                    )));
                }
                all_true
            }
        };
        let mut before: Option<i64> = None;
        for v in f("before") {
            let c = self.inspect(v)?.created_unix;
            before = Some(before.map_or(c, |b| b.min(c)));
        }
        for v in f("until") {
            let t = parse_until(v).ok_or_else(|| {
                EngineError::InvalidArgument(format!("invalid value for 'until' filter: {v:?}"))
            })?;
            before = Some(before.map_or(t, |b| b.min(t)));
        }
        let mut since: Option<i64> = None;
        for v in f("since") {
            let c = self.inspect(v)?.created_unix;
            since = Some(since.map_or(c, |s| s.max(c)));
        }
        let patterns = f("reference");
        for p in patterns {
            glob_match(p, "").ok_or_else(|| {
                EngineError::InvalidArgument(format!("syntax error in pattern {p:?}"))
            })?;
        }

        let index = self.read_index();
        let mut out = Vec::new();
        for img in index.images.values().filter(|i| !i.record.hidden) {
            let d = self.details(&index, img);
            if before.is_some_and(|b| d.created_unix >= b)
                || since.is_some_and(|s| d.created_unix <= s)
            {
                continue;
            }
            if !f("label").is_empty() {
                let labels = img.config.container_config().labels.unwrap_or_default();
                let ok = f("label").iter().all(|l| match l.split_once('=') {
                    Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                    None => labels.contains_key(l.as_str()),
                });
                if !ok {
                    continue;
                }
            }
            let refs = index.refs_of(&img.record.id);
            let mut tags = Vec::new();
            let mut digests = Vec::new();
            for r in &refs {
                if !patterns.is_empty() {
                    let targets = [
                        r.familiar(),
                        r.familiar_name(),
                        r.clone().with_default_tag().to_string(),
                        r.name(),
                    ];
                    let hit = patterns
                        .iter()
                        .any(|p| targets.iter().any(|t| glob_match(p, t).unwrap_or(false)));
                    if !hit {
                        continue;
                    }
                }
                if r.digest.is_some() {
                    digests.push(r.familiar());
                }
                if r.tag.is_some() {
                    tags.push(r.familiar());
                }
            }
            if tags.is_empty() && digests.is_empty() {
                if opts.all || index.children(&img.record.id) == 0 {
                    if opts.filters.contains_key("dangling") && !dangling_only {
                        continue;
                    }
                    if !patterns.is_empty() {
                        continue;
                    }
                } else {
                    continue;
                }
            } else if dangling_only && !tags.is_empty() {
                continue;
            }
            out.push(ImageDetails {
                repo_tags: tags,
                repo_digests: digests,
                ..d
            });
        }
        out.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// `docker rmi` with Docker's rules: a name untags (and deletes the image when that was
    /// its last reference); an id deletes. Containers block it (`users`) unless forced; a
    /// running container blocks it even then.
    pub fn delete(
        &self,
        name: &str,
        force: bool,
        prune: bool,
        users: &ImageUsers,
    ) -> Result<Vec<DeleteItem>> {
        if name.trim().is_empty() {
            return Err(EngineError::InvalidArgument(
                "image name cannot be blank".into(),
            ));
        }
        let _w = lock(&self.write);
        let id = {
            let index = self.read_index();
            self.lookup(&index, name)?
        };
        let mut records = Vec::new();
        let repo_refs = self.read_index().refs_of(&id);
        let mut removed_repository_ref = false;
        if !is_id_prefix(&id, name) {
            if !force && is_single_reference(&repo_refs) {
                if let Some(user) = users.get(&id).and_then(|u| u.first()) {
                    return Err(EngineError::Conflict(format!(
                        "conflict: unable to remove repository reference \"{name}\" (must force) - {} is using its referenced image {}",
                        container_words(user),
                        ids::short(hex_of(&id))
                    )));
                }
            }
            let parsed = Reference::parse_normalized(name)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?
                .with_default_tag();
            self.set_refs(&[], std::slice::from_ref(&parsed))?;
            records.push(DeleteItem::Untagged(parsed.familiar()));
            self.event("untag", &id, &id);
            let mut remaining = self.read_index().refs_of(&id);
            if parsed.digest.is_none() {
                let same_repo_tag = remaining
                    .iter()
                    .any(|r| r.digest.is_none() && r.name() == parsed.name());
                if !same_repo_tag {
                    let digests: Vec<Reference> = remaining
                        .iter()
                        .filter(|r| r.digest.is_some() && r.name() == parsed.name())
                        .cloned()
                        .collect();
                    if !digests.is_empty() {
                        self.set_refs(&[], &digests)?;
                        records.extend(digests.iter().map(|r| DeleteItem::Untagged(r.familiar())));
                        for _ in &digests {
                            self.event("untag", &id, &id);
                        }
                        remaining.retain(|r| !digests.contains(r));
                    }
                }
            }
            if !remaining.is_empty() {
                return Ok(records);
            }
            removed_repository_ref = true;
        } else if is_single_reference(&repo_refs) {
            let mut mask = HARD;
            if !force {
                mask |= STOPPED;
            }
            if let Some(c) = self.conflict(&id, mask, users) {
                return Err(c.into());
            }
            self.set_refs(&[], &repo_refs)?;
            records.extend(repo_refs.iter().map(|r| DeleteItem::Untagged(r.familiar())));
            for _ in &repo_refs {
                self.event("untag", &id, &id);
            }
        }
        self.delete_helper(
            &id,
            &mut records,
            force,
            prune,
            removed_repository_ref,
            users,
        )?;
        Ok(records)
    }

    fn conflict(&self, id: &str, mask: u8, users: &ImageUsers) -> Option<Conflict> {
        let index = self.read_index();
        let user_list = users.get(id).map(Vec::as_slice).unwrap_or_default();
        if mask & CHILD != 0 && index.children(id) > 0 {
            return Some(Conflict::new(
                id,
                true,
                false,
                "image has dependent child images".into(),
            ));
        }
        if mask & RUNNING != 0 {
            if let Some(u) = user_list.iter().find(|u| u.running) {
                return Some(Conflict::new(
                    id,
                    true,
                    true,
                    format!(
                        "image is being used by running container {}",
                        ids::short(&u.container_id)
                    ),
                ));
            }
        }
        if mask & REFERENCED != 0 && !index.refs_of(id).is_empty() {
            return Some(Conflict::new(
                id,
                false,
                false,
                "image is referenced in multiple repositories".into(),
            ));
        }
        if mask & STOPPED != 0 {
            if let Some(u) = user_list.iter().find(|u| !u.running) {
                let what = if u.container_id.is_empty() {
                    "image is being used by a stopped container".to_string()
                } else {
                    format!(
                        "image is being used by stopped container {}",
                        ids::short(&u.container_id)
                    )
                };
                return Some(Conflict::new(id, false, true, what));
            }
        }
        None
    }

    fn delete_helper(
        &self,
        id: &str,
        records: &mut Vec<DeleteItem>,
        force: bool,
        prune: bool,
        quiet: bool,
        users: &ImageUsers,
    ) -> Result<()> {
        let mut mask = HARD;
        if !force {
            mask |= SOFT;
        }
        if let Some(c) = self.conflict(id, mask, users) {
            let dangling = {
                let index = self.read_index();
                index.refs_of(id).is_empty() && index.children(id) == 0
            };
            if quiet && (!dangling || c.used) {
                return Ok(());
            }
            return Err(c.into());
        }
        let parent = self
            .read_index()
            .images
            .get(id)
            .map(|i| i.record.parent.clone())
            .unwrap_or_default();
        let refs = self.read_index().refs_of(id);
        if !refs.is_empty() {
            self.set_refs(&[], &refs)?;
            records.extend(refs.iter().map(|r| DeleteItem::Untagged(r.familiar())));
            for _ in &refs {
                self.event("untag", id, id);
            }
        }
        if users.get(id).is_some_and(|u| !u.is_empty()) {
            // Forced while a container uses it: hide it, keep its layers.
            self.hide(id)?;
            records.push(DeleteItem::Deleted(id.to_string()));
        } else {
            let removed = self.remove_image(id)?;
            records.push(DeleteItem::Deleted(id.to_string()));
            records.extend(removed.into_iter().map(DeleteItem::Deleted));
        }
        self.event("delete", id, id);
        if prune && !parent.is_empty() && self.read_index().visible(&parent).is_some() {
            return self.delete_helper(&parent, records, false, true, true, users);
        }
        Ok(())
    }

    fn hide(&self, id: &str) -> Result<()> {
        let Some(img) = self.read_index().images.get(id).cloned() else {
            return Ok(());
        };
        let mut record = img.record.clone();
        record.hidden = true;
        self.write_record(&record)?;
        self.write_index().images.insert(
            id.to_string(),
            Arc::new(Image {
                config: img.config.clone(),
                record,
                layers: img.layers.clone(),
            }),
        );
        Ok(())
    }

    /// Removes an image's record, its config and manifest blobs, and the layers no other
    /// image uses. Returns the ChainIDs released, top first (what Docker reports).
    fn remove_image(&self, id: &str) -> Result<Vec<String>> {
        let Some(img) = self.write_index().images.remove(id) else {
            return Ok(Vec::new());
        };
        let path = self.record_path(id);
        std::fs::remove_file(&path)
            .map_err(|e| internal(format!("cannot remove {}", path.display()), e))?;
        let _ = std::fs::remove_file(self.blob_path(&img.record.id));
        let _ = std::fs::remove_file(self.blob_path(&img.record.manifest));
        for d in &img.record.distributed {
            if *d != img.record.manifest {
                let _ = std::fs::remove_file(self.blob_path(d));
            }
        }
        let index = self.read_index();
        let mut other_chains: HashSet<String> = HashSet::new();
        let mut other_diffs: HashSet<String> = HashSet::new();
        for other in index.images.values() {
            other_chains.extend(chain_ids(&other.config.rootfs.diff_ids));
            other_diffs.extend(other.config.rootfs.diff_ids.iter().cloned());
        }
        drop(index);
        let mut released: Vec<String> = chain_ids(&img.config.rootfs.diff_ids)
            .into_iter()
            .filter(|c| !other_chains.contains(c))
            .collect();
        released.reverse();
        let mut trash = Vec::new();
        {
            let pins = lock(&self.pins.0);
            for d in img.config.rootfs.diff_ids.iter().collect::<HashSet<_>>() {
                if other_diffs.contains(d) || pins.contains_key(hex_of(d)) {
                    continue;
                }
                let t = self
                    .root
                    .join("tmp")
                    .join(format!("trash-{}", ids::new_id()));
                if std::fs::rename(self.layer_dir(d), &t).is_ok() {
                    trash.push(t);
                }
                let _ = std::fs::remove_file(self.blob_path(d));
            }
        }
        for t in trash {
            if let Err(e) = remove_any(&t) {
                log::warn!("cannot remove {}: {e}", t.display());
            }
        }
        Ok(released)
    }

    /// Pins a layer while work in progress decides to reuse or create it.
    pub(crate) fn pin(&self, diff_id: &str) -> Pin<'_> {
        let hex = hex_of(diff_id).to_string();
        *lock(&self.pins.0).entry(hex.clone()).or_insert(0) += 1;
        Pin {
            pins: &self.pins,
            hex,
        }
    }

    /// The layer if the store has it whole.
    pub(crate) fn layer(&self, diff_id: &str) -> Option<LayerInfo> {
        self.read_layer_info(diff_id)
    }

    /// A fresh directory under tmp/.
    pub(crate) fn temp_dir(&self, prefix: &str) -> Result<PathBuf> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{prefix}-{}", ids::new_id()));
        std::fs::create_dir(&dir)
            .map_err(|e| internal(format!("cannot create {}", dir.display()), e))?;
        Ok(dir)
    }

    /// Unpacks a layer stream into the store: into tmp/, flushed to disk, then renamed into
    /// place, so a layer directory that exists is whole. `expected` is the DiffID the image
    /// config names, checked before anything becomes visible. The returned pin keeps it
    /// from deletion until the caller has committed an image that uses it.
    pub(crate) fn add_layer(
        &self,
        input: impl std::io::Read,
        expected: Option<&str>,
    ) -> Result<(LayerInfo, Pin<'_>)> {
        let work = self.temp_dir("layer")?;
        let result = self.add_layer_in(&work, input, expected);
        let _ = remove_any(&work);
        result
    }

    fn add_layer_in(
        &self,
        work: &Path,
        input: impl std::io::Read,
        expected: Option<&str>,
    ) -> Result<(LayerInfo, Pin<'_>)> {
        let diff = work.join("diff");
        std::fs::create_dir(&diff).map_err(|e| internal("cannot create a layer directory", e))?;
        let blob_tmp = work.join("layer.tar");
        let blob = std::fs::File::create(&blob_tmp)
            .map_err(|e| internal("cannot create a layer blob", e))?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, blob);
        let unpacked = unpack::unpack(input, &diff, &mut writer)
            .map_err(|e| EngineError::InvalidArgument(format!("Error processing tar file: {e}")))?;
        let blob = writer
            .into_inner()
            .map_err(|e| internal("cannot write a layer blob", e.error()))?;
        if let Some(expected) = expected {
            if expected != unpacked.diff_id {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid diffID for layer: expected {expected:?}, got {:?}",
                    unpacked.diff_id
                )));
            }
        }
        let info = LayerInfo {
            diff_id: unpacked.diff_id.clone(),
            size: unpacked.size,
            tar_size: unpacked.tar_size,
        };
        if unpacked.skipped_devices > 0 || unpacked.skipped_xattrs > 0 {
            log::info!(
                "layer {}: skipped {} device node(s) and {} xattr(s) (not carried into berth layers)",
                ids::short(hex_of(&info.diff_id)),
                unpacked.skipped_devices,
                unpacked.skipped_xattrs
            );
        }
        let pin = self.pin(&info.diff_id);
        if self.layer(&info.diff_id).is_some() {
            // Someone else stored the same layer meanwhile.
            return Ok((info, pin));
        }
        fsutil::atomic_write_json(&work.join("layer.json"), &info)
            .map_err(|e| internal("cannot write the layer record", e))?;
        // One syncfs flushes the whole tree before the rename publishes it.
        let dir = std::fs::File::open(work)
            .map_err(|e| internal("cannot open the layer directory", e))?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(internal(
                "cannot flush the layer",
                std::io::Error::last_os_error(),
            ));
        }
        drop(blob);
        std::fs::rename(&blob_tmp, self.blob_path(&info.diff_id))
            .map_err(|e| internal("cannot store the layer blob", e))?;
        let final_dir = self.layer_dir(&info.diff_id);
        let staged = work.join("staged");
        std::fs::create_dir(&staged).map_err(|e| internal("cannot stage the layer", e))?;
        std::fs::rename(&diff, staged.join("diff"))
            .map_err(|e| internal("cannot stage the layer", e))?;
        std::fs::rename(work.join("layer.json"), staged.join("layer.json"))
            .map_err(|e| internal("cannot stage the layer", e))?;
        match std::fs::rename(&staged, &final_dir) {
            Ok(()) => {}
            Err(_) if self.layer(&info.diff_id).is_some() => {}
            Err(e) => return Err(internal("cannot store the layer", e)),
        }
        sync_dir(&self.root.join("layers"));
        sync_dir(&self.root.join("blobs/sha256"));
        Ok((info, pin))
    }

    /// Writes a verified blob (idempotent).
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.blob_path(&digest);
        if !path.exists() {
            fsutil::atomic_write(&path, bytes).map_err(|e| internal("cannot write a blob", e))?;
        }
        Ok(digest)
    }

    /// Reads a blob, checking it still matches its digest.
    pub(crate) fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let bytes = std::fs::read(self.blob_path(digest))
            .map_err(|e| internal(format!("blob {digest}"), e))?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) != digest {
            return Err(EngineError::Internal(format!("blob {digest} is corrupt")));
        }
        Ok(bytes)
    }

    pub(crate) fn blob_file(&self, digest: &str) -> Result<std::fs::File> {
        std::fs::File::open(self.blob_path(digest))
            .map_err(|e| internal(format!("blob {digest}"), e))
    }

    /// Records an image whose layers are in the store (and pinned by the caller): config
    /// and manifest blobs, then the record, then its tags. Returns `(tag, previous id)` for
    /// tags that moved from another image.
    pub(crate) fn commit(
        &self,
        config_bytes: &[u8],
        tags: &[Reference],
        digests: &[Reference],
        parent: &str,
    ) -> Result<(String, Vec<(Reference, String)>)> {
        let config = ImageConfig::parse(config_bytes)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let mut layers = Vec::new();
        for d in &config.rootfs.diff_ids {
            layers.push(
                self.layer(d)
                    .ok_or_else(|| EngineError::Internal(format!("layer {d} vanished")))?,
            );
        }
        let _w = lock(&self.write);
        let id = self.put_blob(config_bytes)?;
        let manifest = serde_json::to_vec(&oci_manifest(&id, config_bytes.len(), &layers))
            .map_err(|e| internal("manifest", e))?;
        let manifest = self.put_blob(&manifest)?;
        let now = time::rfc3339(SystemTime::now());
        let existing = self.read_index().images.get(&id).cloned();
        let record = match existing {
            Some(img) => ImageRecord {
                hidden: false,
                last_tag_time: if tags.is_empty() {
                    img.record.last_tag_time.clone()
                } else {
                    Some(now.clone())
                },
                ..img.record.clone()
            },
            None => ImageRecord {
                id: id.clone(),
                manifest,
                added: now.clone(),
                last_tag_time: (!tags.is_empty()).then(|| now.clone()),
                parent: parent.to_string(),
                hidden: false,
                distributed: Vec::new(),
            },
        };
        self.write_record(&record)?;
        self.write_index().images.insert(
            id.clone(),
            Arc::new(Image {
                config,
                record,
                layers,
            }),
        );
        let add: Vec<(Reference, String)> = tags
            .iter()
            .chain(digests)
            .map(|r| (r.clone(), id.clone()))
            .collect();
        let moved = if add.is_empty() {
            Vec::new()
        } else {
            self.set_refs(&add, &[])?
        };
        Ok((id, moved))
    }

    /// Keeps `manifest` (a registry's manifest of image `id`, checked by the caller) for
    /// pushes of it; the newest first, a few at most.
    pub(crate) fn add_distributed(&self, id: &str, manifest: &[u8]) -> Result<()> {
        const KEPT: usize = 4;
        let _w = lock(&self.write);
        let Some(img) = self.read_index().images.get(id).cloned() else {
            return Ok(());
        };
        let digest = self.put_blob(manifest)?;
        let mut record = img.record.clone();
        record.distributed.retain(|d| *d != digest);
        record.distributed.insert(0, digest);
        for old in record
            .distributed
            .split_off(KEPT.min(record.distributed.len()))
        {
            if old != record.manifest {
                let _ = std::fs::remove_file(self.blob_path(&old));
            }
        }
        self.replace_record(&img, record)
    }

    /// The registry manifests kept for image `id`, newest first.
    pub(crate) fn distributed_of(&self, id: &str) -> Vec<String> {
        self.read_index()
            .images
            .get(id)
            .map(|i| i.record.distributed.clone())
            .unwrap_or_default()
    }

    /// The stored OCI manifest of an image.
    pub(crate) fn manifest_of(&self, id: &str) -> Option<String> {
        self.read_index()
            .images
            .get(id)
            .map(|i| i.record.manifest.clone())
    }
}

/// The OCI manifest berth keeps for an image: its config and uncompressed layer blobs.
pub(crate) fn oci_manifest(id: &str, config_len: usize, layers: &[LayerInfo]) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": id,
            "size": config_len,
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.diff_id,
            "size": l.tar_size,
        })).collect::<Vec<_>>(),
    })
}

const CHILD: u8 = 1;
const RUNNING: u8 = 2;
const REFERENCED: u8 = 4;
const STOPPED: u8 = 8;
const HARD: u8 = CHILD | RUNNING;
const SOFT: u8 = REFERENCED | STOPPED;

struct Conflict {
    id: String,
    hard: bool,
    used: bool,
    message: String,
}

impl Conflict {
    fn new(id: &str, hard: bool, used: bool, message: String) -> Self {
        Conflict {
            id: id.to_string(),
            hard,
            used,
            message,
        }
    }
}

impl From<Conflict> for EngineError {
    fn from(c: Conflict) -> Self {
        EngineError::Conflict(format!(
            "conflict: unable to delete {} ({}) - {}",
            ids::short(hex_of(&c.id)),
            if c.hard {
                "cannot be forced"
            } else {
                "must be forced"
            },
            c.message
        ))
    }
}

fn container_words(u: &ImageUser) -> String {
    if u.container_id.is_empty() {
        "a container".to_string()
    } else {
        format!("container {}", ids::short(&u.container_id))
    }
}

/// Whether `name` is a prefix of the id (with or without `sha256:`).
fn is_id_prefix(id: &str, name: &str) -> bool {
    id.starts_with(name) || hex_of(id).starts_with(name)
}

/// All references from one repository, at most one of them a tag.
fn is_single_reference(refs: &[Reference]) -> bool {
    if refs.len() <= 1 {
        return refs.len() == 1;
    }
    let mut single: Option<&Reference> = None;
    let mut canonical: HashSet<String> = HashSet::new();
    for r in refs {
        if r.digest.is_some() {
            canonical.insert(r.name());
        } else if single.is_none() {
            single = Some(r);
        } else {
            return false;
        }
    }
    let single = single.unwrap_or(&refs[0]);
    canonical.len() == 1 && canonical.contains(&single.name())
}

/// The `until` filter: a timestamp, Unix seconds, or a Go duration before now.
fn parse_until(v: &str) -> Option<i64> {
    if let Some(t) = time::parse_api_time(v) {
        return Some(time::unix_secs(t));
    }
    let now = time::unix_secs(SystemTime::now());
    let mut total = 0f64;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..n_len].parse().ok()?;
        rest = &rest[n_len..];
        let u_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[u_len..];
    }
    Some(now - total as i64)
}

/// Go's `path.Match`: `*` and `?` never match `/`; `[...]` classes with ranges and `^`;
/// `\` escapes. A malformed pattern gives `None`.
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Validate the whole pattern first, as Go does.
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return None;
                }
                i += 2;
            }
            '[' => {
                i = class_end(&p, i)?;
            }
            _ => i += 1,
        }
    }
    Some(glob_at(&p, &n))
}

/// Index after the class starting at `p[start] == '['`.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if p.get(i) == Some(&'^') {
        i += 1;
    }
    let mut first = true;
    loop {
        match p.get(i) {
            None => return None,
            Some(']') if !first => return Some(i + 1),
            Some('\\') => i += 2,
            Some(_) => i += 1,
        }
        first = false;
    }
}

fn class_matches(p: &[char], start: usize, c: char) -> bool {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&ch) = p.get(i) {
        if ch == ']' && !first {
            break;
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            p.get(i).copied().unwrap_or('\\')
        } else {
            ch
        };
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&c| c != ']') {
            hi = if p[i + 1] == '\\' {
                p.get(i + 2).copied().unwrap_or('\\')
            } else {
                p[i + 1]
            };
            i += if p[i + 1] == '\\' { 3 } else { 2 };
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    matched != negate
}

/// Go's own algorithm: the pattern is a run of chunks, each after an optional run of stars;
/// a chunk's items are one character wide each, so it matches at the leftmost place it can
/// (a star never crossing `/`), and the last chunk must end the name. A loop, not recursion
/// or backtracking: a client's pattern costs at most its length times the name's.
fn glob_at(p: &[char], n: &[char]) -> bool {
    let mut pi = 0;
    let mut ni = 0;
    while pi < p.len() {
        let mut star = false;
        while p.get(pi) == Some(&'*') {
            star = true;
            pi += 1;
        }
        let start = pi;
        while pi < p.len() && p[pi] != '*' {
            pi = match p[pi] {
                '\\' => pi + 2,
                '[' => class_end(p, pi).unwrap_or(p.len()),
                _ => pi + 1,
            }
            .min(p.len());
        }
        let chunk = &p[start..pi];
        let last = pi == p.len();
        if star && chunk.is_empty() {
            // A trailing star takes the rest, unless it has a `/`.
            return !n[ni..].contains(&'/');
        }
        if let Some(t) = match_chunk(chunk, n, ni) {
            if t == n.len() || !last {
                ni = t;
                continue;
            }
        }
        if !star {
            return false;
        }
        let mut k = ni;
        let found = loop {
            if k == n.len() || n[k] == '/' {
                break None;
            }
            k += 1;
            match match_chunk(chunk, n, k) {
                Some(t) if t == n.len() || !last => break Some(t),
                _ => {}
            }
        };
        match found {
            Some(t) => ni = t,
            None => return false,
        }
    }
    ni == n.len()
}

/// Matches a chunk (no stars) at `n[ni..]`; returns where the match ends.
fn match_chunk(chunk: &[char], n: &[char], mut ni: usize) -> Option<usize> {
    let mut i = 0;
    while i < chunk.len() {
        let c = *n.get(ni)?;
        match chunk[i] {
            '?' => {
                if c == '/' {
                    return None;
                }
                i += 1;
            }
            '[' => {
                let end = class_end(chunk, i)?;
                if c == '/' || !class_matches(chunk, i, c) {
                    return None;
                }
                i = end;
            }
            '\\' => {
                if chunk.get(i + 1) != Some(&c) {
                    return None;
                }
                i += 2;
            }
            lit => {
                if lit != c {
                    return None;
                }
                i += 1;
            }
        }
        ni += 1;
    }
    Some(ni)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    crate::fsutil::remove_tree(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests;
