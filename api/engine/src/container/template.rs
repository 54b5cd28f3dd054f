//! The engine's VM templates: one per (VMM, kernel, initramfs with its agent, vCPUs, memory,
//! device layout), keyed by a hash of those inputs, kept under `<data-root>/templates/<key>`
//! and built on first need (`vmm_launcher::template`). A changed input is a new key, so a
//! new agent binary never runs from an old template; two first uses of one key at once
//! build it once (the second waits for the first, then uses its template).
//!
//! Inputs are identified by their content (SHA-256), read once per file version: a file's
//! hash is kept with its device, inode, size and modification time, and read again when any
//! of them changes.
//!
//! A key's first 8 hex digits name the files alone (VMM, kernel, initramfs), so that the
//! templates no VM of the engine can use any more are found by name: at engine start,
//! [`Templates::collect`] removes those of other files and the half-built ones of builders
//! that are gone.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use vmm_launcher::template::{Template, TemplateError};
use vmm_launcher::BootSpec;

use crate::EngineConfig;

/// The template format's own version: bumped when what a template holds changes meaning
/// beyond its inputs (the device layout the engine gives containers, say).
const TEMPLATE_FORMAT: &str = "berth template 2";
/// Hex digits of a key that name the files it was built from.
const FILES_PREFIX: usize = 8;

/// One build of a template ([`Templates::identity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateIdentity([u8; 32]);

/// Why no template could be had.
#[derive(Debug, thiserror::Error)]
pub enum TemplatesError {
    #[error("cannot read {path} to key the VM template")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the VM template {path}")]
    Discard {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: a build's failure says much (its console's end), and errors travel by value.
    #[error(transparent)]
    Build(Box<TemplateError>),
}

impl From<TemplateError> for TemplatesError {
    fn from(e: TemplateError) -> Self {
        TemplatesError::Build(Box::new(e))
    }
}

/// A file's identity as the file system sees it: a change of any part is a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// The templates of one engine.
pub struct Templates {
    root: PathBuf,
    hashes: Mutex<HashMap<PathBuf, (FileVersion, String)>>,
    /// One lock per key being built or used for the first time.
    building: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Templates {
    /// The templates under `root` (created on first build).
    pub fn new(root: PathBuf) -> Self {
        Templates {
            root,
            hashes: Mutex::default(),
            building: Mutex::default(),
        }
    }

    /// Where they are kept.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SHA-256 of `path`'s content, read again only when its version changed.
    fn file_hash(&self, path: &Path) -> Result<String, TemplatesError> {
        let input = |source| TemplatesError::Input {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(input)?;
        let version = FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if let Some((v, hash)) = super::lock_std(&self.hashes).get(path) {
            if *v == version {
                return Ok(hash.clone());
            }
        }
        let mut file = std::fs::File::open(path).map_err(input)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(input)?;
        let hash = hex::encode(hasher.finalize());
        super::lock_std(&self.hashes).insert(path.to_path_buf(), (version, hash.clone()));
        Ok(hash)
    }

    /// The digest of the files a template is built from.
    fn files_digest(
        &self,
        vmm: &Path,
        kernel: &Path,
        initrd: Option<&Path>,
    ) -> Result<String, TemplatesError> {
        let mut files = vec![
            TEMPLATE_FORMAT.to_string(),
            format!("vmm {}", self.file_hash(vmm)?),
            format!("kernel {}", self.file_hash(kernel)?),
        ];
        if let Some(initrd) = initrd {
            files.push(format!("initrd {}", self.file_hash(initrd)?));
        }
        Ok(hex::encode(Sha256::digest(files.join("\n").as_bytes())))
    }

    /// The key of the template for VMs booted from `boot` by `cfg.vmm`: 32 hex digits, the
    /// first [`FILES_PREFIX`] the files' alone.
    pub fn key(&self, cfg: &EngineConfig, boot: &BootSpec) -> Result<String, TemplatesError> {
        let files = self.files_digest(&cfg.vmm, &boot.kernel, boot.initrd.as_deref())?;
        let mut inputs = vec![format!("files {files}")];
        inputs.push(format!("vcpus {} mem {}", boot.vcpus, boot.mem_mib));
        inputs.push(format!("cmdline {:?}", boot.cmdline));
        inputs.push(format!("vsock {}", boot.vsock_uds.is_some()));
        if boot.net.is_some() {
            inputs.push("net".to_string());
        }
        for share in &boot.shares {
            inputs.push(format!(
                "share {:?} ro={} nosuid={}",
                share.tag, share.read_only, share.nosuid
            ));
        }
        let digest = hex::encode(Sha256::digest(inputs.join("\n").as_bytes()));
        // 128 bits name a template well enough, and keep socket paths beside it short.
        Ok(format!(
            "{}{}",
            &files[..FILES_PREFIX],
            &digest[..32 - FILES_PREFIX]
        ))
    }

    /// Removes what no VM of this engine can use: templates built from another VMM, kernel
    /// or initramfs than `cfg`'s (their keys start otherwise) and half-built templates whose
    /// builder is gone. Returns the names removed. Meant for engine start, before any start
    /// of this engine builds one; a clone still running from a removed template keeps its
    /// memory (a mapped file lives on until it is unmapped).
    pub fn collect(&self, cfg: &EngineConfig) -> Result<Vec<String>, TemplatesError> {
        let files = self.files_digest(&cfg.vmm, &cfg.kernel, Some(&cfg.initrd))?;
        let listing = |source| TemplatesError::Input {
            path: self.root.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(listing(e)),
        };
        let mut removed = vec![];
        for entry in entries {
            let entry = entry.map_err(listing)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let stale = match name.strip_prefix('.') {
                // `.KEY.build-PID` (vmm_launcher::template): its builder may be at work;
                // `.KEY.discarded-PID` (Templates::discard): its remover may be.
                Some(build) => build
                    .rsplit_once(".build-")
                    .or_else(|| build.rsplit_once(".discarded-"))
                    .and_then(|(_, pid)| pid.parse::<i32>().ok())
                    .is_some_and(|pid| !process_alive(pid)),
                None => {
                    name.len() == 32
                        && name.bytes().all(|b| b.is_ascii_hexdigit())
                        && !name.starts_with(&files[..FILES_PREFIX])
                }
            };
            if stale {
                match crate::fsutil::remove_tree(&entry.path()) {
                    Ok(()) => removed.push(name),
                    Err(e) => log::warn!("cannot remove the stale VM template {name}: {e}"),
                }
            }
        }
        Ok(removed)
    }

    /// The lock that builds and discards of template `key` take, one at a time.
    fn key_lock(&self, key: &str) -> Arc<Mutex<()>> {
        super::lock_std(&self.building)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// What tells this build of a template from a later one in the same place, for
    /// [`Templates::discard`]: its state file's digest (tens of KiB, and never the same
    /// twice: it holds the clock and every register of the VM it was taken from; an inode
    /// number is reused as soon as it is freed). `None` if it cannot be read.
    pub fn identity(template: &Template) -> Option<TemplateIdentity> {
        let state = std::fs::read(template.state()).ok()?;
        Some(TemplateIdentity(Sha256::digest(&state).into()))
    }

    /// Removes `template` if it is still the build `identity` names (a template built
    /// again in its place since is kept). Returns whether it was removed. Clones running
    /// from it keep their memory (a mapped file lives on until it is unmapped); the next
    /// start of its shape builds it again.
    pub fn discard(
        &self,
        template: &Template,
        identity: Option<TemplateIdentity>,
    ) -> Result<bool, TemplatesError> {
        let Some(identity) = identity else {
            return Ok(false);
        };
        let Some(name) = template.dir.file_name().and_then(|n| n.to_str()) else {
            return Ok(false);
        };
        // Under the build lock of its key: no build replaces it meanwhile.
        let lock = self.key_lock(name);
        let _building = super::lock_std(&lock);
        if Self::identity(template) != Some(identity) {
            return Ok(false);
        }
        // Moved aside first: from then on no start finds it half removed.
        let aside = self
            .root
            .join(format!(".{name}.discarded-{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplatesError::Discard { path, source }
        };
        std::fs::rename(&template.dir, &aside).map_err(io(&template.dir))?;
        crate::fsutil::remove_tree(&aside).map_err(io(&aside))?;
        Ok(true)
    }

    /// The template for VMs booted from `boot`, built now if it is not there yet (its
    /// agent awaited up to `boot_timeout`, its sockets in a directory of the exec root).
    pub fn get(
        &self,
        cfg: &EngineConfig,
        boot: &BootSpec,
        boot_timeout: Duration,
    ) -> Result<Template, TemplatesError> {
        let key = self.key(cfg, boot)?;
        let dir = self.root.join(&key);
        // As long as a container's run directory name (vm::run_dir), so its sockets fit.
        let sockets = cfg.exec_root.join(format!("t{}", &key[..15]));
        let sockets = sockets.as_path();
        if let Some(t) = Template::open(&dir) {
            return Ok(t);
        }
        let lock = self.key_lock(&key);
        let _building = super::lock_std(&lock);
        if let Some(t) = Template::open(&dir) {
            return Ok(t);
        }
        log::info!(
            "building the VM template {key} ({} vCPUs, {} MiB)",
            boot.vcpus,
            boot.mem_mib
        );
        let started = std::time::Instant::now();
        std::fs::create_dir_all(sockets).map_err(|source| TemplatesError::Input {
            path: sockets.to_path_buf(),
            source,
        })?;
        let built = vmm_launcher::template::ensure(&cfg.vmm, boot, &dir, sockets, boot_timeout);
        let _ = std::fs::remove_dir(sockets);
        let template = built?;
        log::info!(
            "VM template {key} built in {} ms",
            started.elapsed().as_millis()
        );
        Ok(template)
    }
}

/// Whether a process `pid` exists (one of another user counts).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing
    // is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-tpl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An engine whose VMM, kernel and initramfs are small files in `dir`.
    fn config(dir: &Path) -> EngineConfig {
        for f in ["vmm", "vmlinux", "initramfs"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        EngineConfig {
            data_root: dir.join("data"),
            exec_root: dir.join("exec"),
            vmm: dir.join("vmm"),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initramfs"),
            boot_retries: 0,
            start: Default::default(),
            prebuild_template: false,
            netns: None,
            bridge_subnet: None,
            registries: Default::default(),
        }
    }

    #[test]
    fn every_input_is_in_the_key_and_nothing_else() {
        let dir = scratch("key");
        let cfg = config(&dir);
        let templates = Templates::new(dir.join("templates"));
        let boot = |vcpus: u8, mem: u64| {
            let mut b = BootSpec::new(&cfg.kernel, vcpus, mem);
            b.initrd = Some(cfg.initrd.clone());
            b.vsock_uds = Some("/run/a/vsock.sock".into());
            b
        };
        let key = templates.key(&cfg, &boot(1, 256)).unwrap();
        assert_eq!(key.len(), 32);
        // The host side of a VM (its sockets, console, share directories) is not an input.
        let mut other_host_side = boot(1, 256);
        other_host_side.vsock_uds = Some("/run/b/vsock.sock".into());
        other_host_side.console = vmm_launcher::Console::File("/x".into());
        assert_eq!(templates.key(&cfg, &other_host_side).unwrap(), key);
        // The size, the device layout and every file are.
        assert_ne!(templates.key(&cfg, &boot(2, 256)).unwrap(), key);
        assert_ne!(templates.key(&cfg, &boot(1, 512)).unwrap(), key);
        let mut with_share = boot(1, 256);
        with_share.shares.push(vmm_launcher::Share {
            tag: "rootfs".into(),
            dir: "/c/rootfs".into(),
            read_only: false,
            nosuid: false,
        });
        assert_ne!(templates.key(&cfg, &with_share).unwrap(), key);
        // A new agent (the initramfs carries it): a new key, read from the file's content.
        std::fs::write(dir.join("initramfs"), "a new agent").unwrap();
        assert_ne!(templates.key(&cfg, &boot(1, 256)).unwrap(), key);
        std::fs::write(dir.join("initramfs"), "initramfs").unwrap();
        assert_eq!(templates.key(&cfg, &boot(1, 256)).unwrap(), key);
        // Other files are another key's first digits; the size is not.
        assert_eq!(
            key[..FILES_PREFIX],
            templates.key(&cfg, &boot(2, 512)).unwrap()[..FILES_PREFIX]
        );
        std::fs::write(dir.join("initramfs"), "another agent").unwrap();
        assert_ne!(
            key[..FILES_PREFIX],
            templates.key(&cfg, &boot(1, 256)).unwrap()[..FILES_PREFIX]
        );
        std::fs::write(dir.join("initramfs"), "initramfs").unwrap();
        std::fs::remove_file(dir.join("vmm")).unwrap();
        let e = templates.key(&cfg, &boot(1, 256)).unwrap_err();
        assert!(e.to_string().contains("vmm"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_discarded_template_goes_and_one_built_again_in_its_place_stays() {
        let dir = scratch("discard");
        let templates = Templates::new(dir.join("templates"));
        let build = |content: &str| {
            let t = templates.root().join("0123456789abcdef0123456789abcdef");
            std::fs::create_dir_all(&t).unwrap();
            // Written anew, as a build does: another file, another identity.
            for f in ["vm.state", "vm.mem"] {
                let tmp = t.join(format!("{f}.tmp"));
                std::fs::write(&tmp, content).unwrap();
                std::fs::rename(&tmp, t.join(f)).unwrap();
            }
            Template::open(&t).unwrap()
        };
        let first = build("first");
        let identity = Templates::identity(&first);
        assert!(identity.is_some());
        assert!(templates.discard(&first, identity).unwrap());
        assert!(Template::open(&first.dir).is_none());
        // Nothing is left aside.
        assert_eq!(std::fs::read_dir(templates.root()).unwrap().count(), 0);
        // Gone already, or built again since: left alone.
        assert!(!templates.discard(&first, identity).unwrap());
        let second = build("second");
        assert!(!templates.discard(&second, identity).unwrap());
        assert!(Template::open(&second.dir).is_some());
        assert!(!templates.discard(&second, None).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn collect_removes_templates_of_other_files_and_builds_of_dead_builders() {
        let dir = scratch("collect");
        let cfg = config(&dir);
        let templates = Templates::new(dir.join("templates"));
        assert!(templates.collect(&cfg).unwrap().is_empty(), "no root yet");
        let mut boot = BootSpec::new(&cfg.kernel, 1, 256);
        boot.initrd = Some(cfg.initrd.clone());
        let current = templates.key(&cfg, &boot).unwrap();
        let other_size = templates
            .key(
                &cfg,
                &BootSpec {
                    vcpus: 2,
                    ..boot.clone()
                },
            )
            .unwrap();
        std::fs::write(dir.join("initramfs"), "an older agent").unwrap();
        let old = templates.key(&cfg, &boot).unwrap();
        std::fs::write(dir.join("initramfs"), "initramfs").unwrap();
        let ours = format!(".{current}.build-{}", std::process::id());
        let dead = format!(".{old}.build-{}", i32::MAX);
        let dead_discard = format!(".{current}.discarded-{}", i32::MAX);
        for name in [
            &current,
            &other_size,
            &old,
            &ours,
            &dead,
            &dead_discard,
            &"lost+found".to_string(),
        ] {
            let t = templates.root().join(name);
            std::fs::create_dir_all(t.join("sub")).unwrap();
            std::fs::write(t.join("sub/vm.mem"), "memory").unwrap();
        }
        let mut removed = templates.collect(&cfg).unwrap();
        removed.sort();
        let mut expected = vec![old.clone(), dead.clone(), dead_discard.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = std::fs::read_dir(templates.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut kept = vec![current, other_size, ours, "lost+found".to_string()];
        kept.sort();
        assert_eq!(left, kept);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
