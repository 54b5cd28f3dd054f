//! Image archives: `docker load` (Docker's save format — `manifest.json`, configs and layer
//! tars, as written by dockerd, skopeo's docker-archive and `docker save` since 1.10 — and
//! OCI image layouts — `index.json`, `oci-layout`, `blobs/`), `docker save` (the format
//! Docker 25+ writes: an OCI layout that also carries `manifest.json` and `repositories`, so
//! both old and new Docker engines and OCI tools load it), and `docker import`.
//!
//! A loaded archive is untrusted. It is spooled first (entry names are only map keys, never
//! paths berth creates), every blob is checked against its digest, every layer against the
//! DiffID the config names, and an image becomes visible only once all of it is stored.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{ContainerConfig, History, ImageConfig, RootFs};
use super::reference::{self, Reference};
use super::{hex_of, internal, not_found, ImageStore};
use crate::{ids, time, EngineError, Result};

/// Largest manifest or index read from an archive: what registries must accept (OCI
/// distribution), and what dockerd accepts from them.
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config read from an archive (a config lists every layer's history).
const MAX_CONFIG: u64 = 8 << 20;
/// How often layer progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;

/// What `docker load` reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadEvent {
    /// Bytes of a layer read so far (`id` is the DiffID's short form).
    Progress {
        id: String,
        current: u64,
        total: u64,
    },
    /// A line for the user (`Loaded image: busybox:latest\n`).
    Line(String),
}

/// `docker import` options.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The tag to give the image.
    pub tag: Option<Reference>,
    /// The history comment (`Imported from -` by default, as Docker writes it).
    pub comment: String,
    /// The config the `--change` instructions produced ([`import_config`]).
    pub config: ContainerConfig,
}

/// Applies `--change` instructions to an empty config (checked before any body is read).
pub fn import_config(changes: &[String]) -> Result<ContainerConfig> {
    let mut config = ContainerConfig::default();
    super::changes::apply(&mut config, changes)
        .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
    Ok(config)
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

/// One regular file of a spooled archive.
#[derive(Clone, Debug)]
struct SpoolFile {
    path: PathBuf,
    size: u64,
    digest: String,
}

/// An archive's files on disk, by normalised name, plus its symlinks.
struct Spool {
    files: HashMap<String, SpoolFile>,
    links: HashMap<String, Vec<String>>,
}

/// Normalises an archive path; `..` is refused.
fn norm(raw: &[u8]) -> Result<Vec<String>> {
    let comps = super::unpack::components(raw).map_err(|e| match e {
        super::unpack::UnpackError::Escape(_) => invalid(format!(
            "invalid archive: entry {:?} points outside the archive",
            String::from_utf8_lossy(raw)
        )),
        e => invalid(format!("invalid archive: {e}")),
    })?;
    Ok(comps
        .into_iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect())
}

impl Spool {
    fn read(input: impl Read, dir: &std::path::Path) -> Result<Spool> {
        let plain = super::unpack::decompress(input)
            .map_err(|e| invalid(format!("invalid archive: {e}")))?;
        let mut archive = tar::Archive::new(plain);
        let mut spool = Spool {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let mut hardlinks = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("Error processing tar file: {e}")))?;
        for (n, entry) in entries.enumerate() {
            let mut entry =
                entry.map_err(|e| invalid(format!("Error processing tar file: {e}")))?;
            let comps = norm(&entry.path_bytes())?;
            let key = comps.join("/");
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let path = dir.join(n.to_string());
                    let mut file = std::fs::File::create(&path)
                        .map_err(|e| internal("cannot spool the archive", e))?;
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 1 << 16];
                    let mut size = 0u64;
                    loop {
                        let k = entry
                            .read(&mut buf)
                            .map_err(|e| invalid(format!("Error processing tar file: {e}")))?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        file.write_all(&buf[..k])
                            .map_err(|e| internal("cannot spool the archive", e))?;
                        size += k as u64;
                    }
                    spool.files.insert(
                        key,
                        SpoolFile {
                            path,
                            size,
                            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
                        },
                    );
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    if target.len() > super::unpack::MAX_PATH_LEN {
                        return Err(invalid(format!(
                            "invalid archive: the target of symlink {key:?} has more bytes than the limit of {}",
                            super::unpack::MAX_PATH_LEN
                        )));
                    }
                    let mut resolved: Vec<String> = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        comps[..comps.len().saturating_sub(1)].to_vec()
                    };
                    let mut ok = true;
                    for part in target.split(|&b| b == b'/') {
                        match part {
                            b"" | b"." => {}
                            b".." => ok &= resolved.pop().is_some(),
                            p => resolved.push(String::from_utf8_lossy(p).into_owned()),
                        }
                    }
                    if ok {
                        spool.links.insert(key, resolved);
                    }
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    hardlinks.push((key, norm(&target)?.join("/")));
                }
                _ => {}
            }
        }
        for (key, target) in hardlinks {
            if let Some(f) = spool.files.get(&target).cloned() {
                spool.files.insert(key, f);
            }
        }
        Ok(spool)
    }

    /// Finds a file, following the archive's own symlinks (within the archive).
    fn find(&self, path: &str) -> Option<&SpoolFile> {
        let mut comps = norm(path.as_bytes()).ok()?;
        for _ in 0..40 {
            // Each prefix is built on the last: linear in the path, however deep.
            let mut prefix = String::new();
            let mut hit = None;
            for (i, c) in comps.iter().enumerate() {
                if i > 0 {
                    prefix.push('/');
                }
                prefix.push_str(c);
                if let Some(target) = self.links.get(&prefix) {
                    hit = Some((i, target));
                    break;
                }
            }
            let Some((i, target)) = hit else {
                return self.files.get(&comps.join("/"));
            };
            let mut next = target.clone();
            next.extend_from_slice(&comps[i + 1..]);
            comps = next;
            // Targets are bounded, so 40 of them are too; past a real path's depth, stop.
            if comps.len() > super::unpack::MAX_PATH_DEPTH {
                return None;
            }
        }
        None
    }

    fn need(&self, path: &str, what: &str) -> Result<&SpoolFile> {
        norm(path.as_bytes())?;
        self.find(path)
            .ok_or_else(|| invalid(format!("invalid archive: {what} {path:?} is missing")))
    }

    /// A JSON document `what` of at most `limit` bytes; the refusal names the archive's
    /// document, never where berth spooled it.
    fn read_small(&self, f: &SpoolFile, what: &str, limit: u64) -> Result<Vec<u8>> {
        if f.size > limit {
            return Err(invalid(format!(
                "invalid archive: {what} has {} bytes, more than the limit of {limit}",
                f.size
            )));
        }
        std::fs::read(&f.path).map_err(|e| internal("cannot read the spooled archive", e))
    }

    /// An OCI blob by digest, checked.
    fn blob(&self, digest: &str) -> Result<&SpoolFile> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| reference::is_full_hex_id(h))
            .ok_or_else(|| invalid(format!("invalid archive: unsupported digest {digest:?}")))?;
        let f = self.need(&format!("blobs/sha256/{hex}"), "blob")?;
        if f.digest != digest {
            return Err(invalid(format!(
                "invalid archive: blob {digest} does not match its digest (got {})",
                f.digest
            )));
        }
        Ok(f)
    }
}

/// Counts a layer's bytes as they are read and reports them.
struct ProgressReader<'a, R> {
    inner: R,
    id: String,
    current: u64,
    reported: Option<u64>,
    total: u64,
    events: &'a mut dyn FnMut(LoadEvent),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.current += n as u64;
        let due = match self.reported {
            None => true,
            Some(last) => self.current - last >= PROGRESS_STEP || (n == 0 && last != self.current),
        };
        if due {
            self.reported = Some(self.current);
            (self.events)(LoadEvent::Progress {
                id: self.id.clone(),
                current: self.current,
                total: self.total,
            });
        }
        Ok(n)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Deserialize, Debug)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Debug)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl ImageStore {
    /// `docker load`: reads an archive, stores its images and tags them.
    pub fn load(&self, input: impl Read, events: &mut dyn FnMut(LoadEvent)) -> Result<()> {
        let dir = self.temp_dir("load")?;
        let result = (|| {
            let spool = Spool::read(input, &dir)?;
            if let Some(m) = spool.find("manifest.json") {
                let bytes = spool.read_small(m, "manifest.json", MAX_MANIFEST)?;
                let items: Option<Vec<ManifestItem>> =
                    serde_json::from_slice(&bytes).map_err(|e| {
                        invalid(format!(
                            "invalid archive: failed to decode manifest.json: {e}"
                        ))
                    })?;
                let items = items.ok_or_else(|| {
                    invalid("invalid manifest, manifest cannot be null (but can be [])")
                })?;
                for item in &items {
                    self.load_docker_item(&spool, item, events)?;
                }
                Ok(())
            } else if let Some(index) = spool.find("index.json") {
                let bytes = spool.read_small(index, "index.json", MAX_MANIFEST)?;
                let index: OciIndex = serde_json::from_slice(&bytes).map_err(|e| {
                    invalid(format!("invalid archive: failed to decode index.json: {e}"))
                })?;
                for desc in &index.manifests {
                    let names = oci_names(&desc.annotations)?;
                    self.load_oci(&spool, desc, &names, 0, events)?;
                }
                Ok(())
            } else {
                Err(invalid(
                    "invalid archive: does not contain a manifest.json (docker save) or an index.json (OCI image layout)",
                ))
            }
        })();
        let _ = crate::fsutil::remove_tree(&dir);
        result
    }

    /// Stores the layers of `config` (reading the missing ones from `layer_file(i)`),
    /// pinning them until the image is committed.
    fn load_layers<'s>(
        &'s self,
        config: &ImageConfig,
        mut layer_file: impl FnMut(usize) -> Result<SpoolFile>,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<Vec<super::Pin<'s>>> {
        let mut pins = Vec::new();
        for (i, diff_id) in config.rootfs.diff_ids.iter().enumerate() {
            let pin = self.pin(diff_id);
            if self.layer(diff_id).is_none() {
                let f = layer_file(i)?;
                let file = std::fs::File::open(&f.path)
                    .map_err(|e| internal("cannot read the spooled archive", e))?;
                let reader = ProgressReader {
                    inner: file,
                    id: ids::short(hex_of(diff_id)).to_string(),
                    current: 0,
                    reported: None,
                    total: f.size,
                    events: &mut *events,
                };
                let (_, p) = self.add_layer(reader, Some(diff_id)).map_err(|e| match e {
                    EngineError::InvalidArgument(m) => invalid(format!("layer {i}: {m}")),
                    other => other,
                })?;
                pins.push(p);
            }
            pins.push(pin);
        }
        Ok(pins)
    }

    fn report(
        &self,
        id: &str,
        tags: &[Reference],
        moved: &[(Reference, String)],
        events: &mut dyn FnMut(LoadEvent),
    ) {
        self.event("load", id, id);
        for (r, old) in moved {
            events(LoadEvent::Line(format!(
                "The image {} already exists, renaming the old one with ID {old} to empty string\n",
                r.familiar()
            )));
        }
        for t in tags {
            events(LoadEvent::Line(format!("Loaded image: {}\n", t.familiar())));
        }
        if tags.is_empty() {
            events(LoadEvent::Line(format!("Loaded image ID: {id}\n")));
        }
    }

    fn load_docker_item(
        &self,
        spool: &Spool,
        item: &ManifestItem,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<()> {
        let config_bytes = spool.read_small(
            spool.need(&item.config, "config")?,
            &format!("config {:?}", item.config),
            MAX_CONFIG,
        )?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| invalid(e.to_string()))?;
        if item.layers.len() != config.rootfs.diff_ids.len() {
            return Err(invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                item.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut tags = Vec::new();
        for t in item.repo_tags.iter().flatten() {
            let r = Reference::parse_normalized(t).map_err(|e| invalid(e.to_string()))?;
            if r.tag.is_none() || r.digest.is_some() {
                return Err(invalid(format!("invalid tag {t:?}")));
            }
            tags.push(r);
        }
        let _pins = self.load_layers(
            &config,
            |i| spool.need(&item.layers[i], "layer").cloned(),
            events,
        )?;
        let parent = item
            .parent
            .as_deref()
            .filter(|p| {
                p.strip_prefix("sha256:")
                    .is_some_and(reference::is_full_hex_id)
            })
            .unwrap_or("");
        let (id, moved) = self.commit(&config_bytes, &tags, &[], parent)?;
        self.report(&id, &tags, &moved, events);
        Ok(())
    }

    fn load_oci(
        &self,
        spool: &Spool,
        desc: &Descriptor,
        names: &[Reference],
        depth: usize,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<()> {
        if depth > 4 {
            return Err(invalid("invalid archive: image indexes nested too deeply"));
        }
        let bytes = spool.read_small(
            spool.blob(&desc.digest)?,
            &format!("manifest {}", desc.digest),
            MAX_MANIFEST,
        )?;
        let manifest: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("invalid archive: manifest {}: {e}", desc.digest)))?;
        let media_type = if desc.media_type.is_empty() {
            manifest["mediaType"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else {
            desc.media_type.clone()
        };
        if INDEX_TYPES.contains(&media_type.as_str())
            || (media_type.is_empty() && manifest.get("manifests").is_some())
        {
            let index: OciIndex = serde_json::from_value(manifest)
                .map_err(|e| invalid(format!("invalid archive: index {}: {e}", desc.digest)))?;
            let chosen = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform.as_ref().is_none_or(|p| {
                        p.os == "linux" && (p.architecture == "amd64" || p.architecture.is_empty())
                    })
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "invalid archive: index {} has no linux/amd64 image",
                        desc.digest
                    ))
                })?;
            return self.load_oci(spool, chosen, names, depth + 1, events);
        }
        let manifest: OciManifest = serde_json::from_value(manifest)
            .map_err(|e| invalid(format!("invalid archive: manifest {}: {e}", desc.digest)))?;
        if manifest.manifests.is_some() {
            return Err(invalid(format!(
                "invalid archive: {} is an index, not a manifest",
                desc.digest
            )));
        }
        let _ = manifest.media_type;
        let config_bytes = spool.read_small(
            spool.blob(&manifest.config.digest)?,
            &format!("config {}", manifest.config.digest),
            MAX_CONFIG,
        )?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| invalid(e.to_string()))?;
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let _pins = self.load_layers(
            &config,
            |i| spool.blob(&manifest.layers[i].digest).cloned(),
            events,
        )?;
        let digests: Vec<Reference> = names
            .iter()
            .map(|n| Reference {
                tag: None,
                digest: Some(desc.digest.clone()),
                ..n.clone()
            })
            .collect();
        let (id, moved) = self.commit(&config_bytes, names, &digests, "")?;
        self.report(&id, names, &moved, events);
        Ok(())
    }

    /// Checks `docker save` names before any output: each must name an image. A bare
    /// repository name saves every tag of it.
    pub fn save_plan(&self, names: &[String]) -> Result<SavePlan> {
        let index = self.read_index();
        let mut plan = SavePlan::default();
        let mut add = |id: String, tag: Option<Reference>| {
            let pos = match plan.images.iter().position(|(i, _)| *i == id) {
                Some(p) => p,
                None => {
                    plan.images.push((id, Vec::new()));
                    plan.images.len() - 1
                }
            };
            if let Some(t) = tag {
                if !plan.images[pos].1.contains(&t) {
                    plan.images[pos].1.push(t);
                }
            }
        };
        for name in names {
            match reference::AnyReference::parse(name).map_err(|e| invalid(e.to_string()))? {
                reference::AnyReference::Id(id) => {
                    index.visible(&id).ok_or_else(|| not_found(name))?;
                    add(id, None);
                }
                reference::AnyReference::Named(r)
                    if r.familiar_name() == "sha256" || r.is_name_only() =>
                {
                    let tagged: Vec<(Reference, String)> = index
                        .refs
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((Reference::parse_normalized(k).ok()?, v.clone()))
                        })
                        .filter(|(k, _)| {
                            k.name() == r.name() && k.tag.is_some() && k.digest.is_none()
                        })
                        .collect();
                    if tagged.is_empty() || r.familiar_name() == "sha256" {
                        let id = self
                            .search_prefix(&index, name)?
                            .ok_or_else(|| not_found(name))?;
                        add(id, None);
                    } else {
                        for (t, id) in tagged {
                            add(id, Some(t));
                        }
                    }
                }
                reference::AnyReference::Named(r) => {
                    let id = index
                        .refs
                        .get(&r.to_string())
                        .filter(|id| index.visible(id).is_some())
                        .cloned()
                        .ok_or_else(|| not_found(&r.familiar()))?;
                    add(
                        id,
                        r.tag.is_some().then_some(Reference { digest: None, ..r }),
                    );
                }
            }
        }
        if plan.images.is_empty() {
            return Err(invalid("no images to save"));
        }
        Ok(plan)
    }

    /// `docker save`: writes the planned images as one archive.
    pub fn save(&self, plan: &SavePlan, out: impl Write) -> Result<()> {
        let mut images = Vec::new();
        let mut pins = Vec::new();
        for (id, tags) in &plan.images {
            let img = self
                .read_index()
                .images
                .get(id)
                .cloned()
                .ok_or_else(|| not_found(id))?;
            for l in &img.layers {
                pins.push(self.pin(&l.diff_id));
                if self.layer(&l.diff_id).is_none() {
                    return Err(not_found(id));
                }
            }
            images.push((img, tags.clone()));
        }
        let mut tar = tar::Builder::new(out);
        let io = |e: io::Error| internal("cannot write the archive", e);
        let epoch = 0u64;
        append_dir(&mut tar, "blobs/", epoch).map_err(io)?;
        append_dir(&mut tar, "blobs/sha256/", epoch).map_err(io)?;
        let mut written: HashSet<String> = HashSet::new();
        let mut manifest_json = Vec::new();
        let mut index_manifests = Vec::new();
        let mut repositories: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, String>,
        > = Default::default();
        for (img, tags) in &images {
            let created = img
                .config
                .created
                .as_deref()
                .and_then(time::parse_rfc3339)
                .map(|t| time::unix_secs(t).max(0) as u64)
                .unwrap_or(0);
            for l in &img.layers {
                if written.insert(l.diff_id.clone()) {
                    let file = self.blob_file(&l.diff_id)?;
                    let len = file.metadata().map_err(io)?.len();
                    if len != l.tar_size {
                        return Err(EngineError::Internal(format!(
                            "layer blob {} is corrupt",
                            l.diff_id
                        )));
                    }
                    append_file(
                        &mut tar,
                        &format!("blobs/sha256/{}", hex_of(&l.diff_id)),
                        len,
                        created,
                        file,
                    )
                    .map_err(io)?;
                }
            }
            let config = self.blob(&img.record.id)?;
            if written.insert(img.record.id.clone()) {
                append_file(
                    &mut tar,
                    &format!("blobs/sha256/{}", hex_of(&img.record.id)),
                    config.len() as u64,
                    created,
                    &config[..],
                )
                .map_err(io)?;
            }
            let manifest_digest = self.manifest_of(&img.record.id).unwrap_or_default();
            let manifest = self.blob(&manifest_digest)?;
            if written.insert(manifest_digest.clone()) {
                append_file(
                    &mut tar,
                    &format!("blobs/sha256/{}", hex_of(&manifest_digest)),
                    manifest.len() as u64,
                    epoch,
                    &manifest[..],
                )
                .map_err(io)?;
            }
            let descriptor = |annotations: Option<serde_json::Value>| {
                let mut d = serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest.len(),
                });
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                d
            };
            if tags.is_empty() {
                index_manifests.push(descriptor(None));
            }
            for t in tags {
                index_manifests.push(descriptor(Some(serde_json::json!({
                    "io.containerd.image.name": t.to_string(),
                    "org.opencontainers.image.ref.name": t.tag.clone().unwrap_or_default(),
                }))));
                if let (Some(tag), Some(top)) = (&t.tag, img.layers.last()) {
                    repositories
                        .entry(t.familiar_name())
                        .or_default()
                        .insert(tag.clone(), hex_of(&top.diff_id).to_string());
                }
            }
            manifest_json.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", hex_of(&img.record.id)),
                "RepoTags": if tags.is_empty() { serde_json::Value::Null } else {
                    serde_json::json!(tags.iter().map(Reference::familiar).collect::<Vec<_>>())
                },
                "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", hex_of(&l.diff_id))).collect::<Vec<_>>(),
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": index_manifests,
        });
        let json = |v: &serde_json::Value| {
            let mut b = serde_json::to_vec(v).unwrap_or_default();
            b.push(b'\n');
            b
        };
        for (name, bytes) in [
            ("index.json", json(&index)),
            (
                "manifest.json",
                json(&serde_json::Value::Array(manifest_json)),
            ),
            ("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec()),
        ] {
            append_file(&mut tar, name, bytes.len() as u64, epoch, &bytes[..]).map_err(io)?;
        }
        if !repositories.is_empty() {
            let bytes = json(&serde_json::json!(repositories));
            append_file(
                &mut tar,
                "repositories",
                bytes.len() as u64,
                epoch,
                &bytes[..],
            )
            .map_err(io)?;
        }
        tar.into_inner().map_err(io)?.flush().map_err(io)?;
        drop(pins);
        for (id, tags) in &plan.images {
            let name = tags.first().map_or_else(|| id.clone(), |t| t.familiar());
            self.event("save", id, &name);
        }
        Ok(())
    }

    /// `docker import`: one layer from a tarball (plain or gzip), a config from `opts`.
    /// Returns the new image's id.
    pub fn import(&self, input: impl Read, opts: &ImportOptions) -> Result<String> {
        let (layer, _pin) = self.add_layer(input, None)?;
        let now = time::rfc3339(SystemTime::now());
        let config = ImageConfig {
            architecture: "amd64".into(),
            comment: opts.comment.clone(),
            config: Some(opts.config.clone()),
            created: Some(now.clone()),
            history: vec![History {
                created: Some(now),
                comment: opts.comment.clone(),
                ..Default::default()
            }],
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer.diff_id.clone()],
            },
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&config)
            .map_err(|e| internal("cannot encode the image config", e))?;
        let tags: Vec<Reference> = opts.tag.iter().cloned().collect();
        let (id, _) = self.commit(&bytes, &tags, &[], "")?;
        self.event("import", &id, &id);
        Ok(id)
    }
}

/// The names an OCI index entry gives its image: containerd's full-name annotation, or
/// `org.opencontainers.image.ref.name` when it is a reference (a bare tag names nothing).
fn oci_names(annotations: &HashMap<String, String>) -> Result<Vec<Reference>> {
    let name = annotations.get("io.containerd.image.name").or_else(|| {
        annotations
            .get("org.opencontainers.image.ref.name")
            .filter(|n| n.contains([':', '/']))
    });
    let Some(name) = name else {
        return Ok(Vec::new());
    };
    let r = Reference::parse_normalized(name)
        .map_err(|e| invalid(format!("invalid archive: image name {name:?}: {e}")))?;
    Ok(vec![Reference { digest: None, ..r }.with_default_tag()])
}

/// Images to save and the tags to save them under.
#[derive(Clone, Debug, Default)]
pub struct SavePlan {
    pub images: Vec<(String, Vec<Reference>)>,
}

fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, mtime: u64) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, 0o755, mtime);
    tar.append_data(&mut h, name, io::empty())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    mtime: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, size, 0o644, mtime);
    tar.append_data(&mut h, name, data)
}
