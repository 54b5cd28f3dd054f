//! The engine's VM templates: one per (VMM, kernel, initramfs with its agent, vCPUs, memory,
//! device layout), keyed by a hash of those inputs, kept under `<data-root>/templates/<key>`
//! and built on first need (`vmm_launcher::template`). A changed input is a new key, so a
//! new agent binary never runs from an old template; two first uses of one key at once
//! build it once (the second waits for the first, then uses its template).
//!
//! Inputs are identified by their content (SHA-256), read once per file version: a file's
//! hash is kept with its device, inode, size and modification time, and read again when any
//! of them changes.

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
const TEMPLATE_FORMAT: &str = "berth template 1";

/// Why no template could be had.
#[derive(Debug, thiserror::Error)]
pub enum TemplatesError {
    #[error("cannot read {path} to key the VM template")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] TemplateError),
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

    /// The key of the template for VMs booted from `boot` by `cfg.vmm`.
    pub fn key(&self, cfg: &EngineConfig, boot: &BootSpec) -> Result<String, TemplatesError> {
        let mut inputs = vec![
            TEMPLATE_FORMAT.to_string(),
            format!("vmm {}", self.file_hash(&cfg.vmm)?),
            format!("kernel {}", self.file_hash(&boot.kernel)?),
        ];
        if let Some(initrd) = &boot.initrd {
            inputs.push(format!("initrd {}", self.file_hash(initrd)?));
        }
        inputs.push(format!("vcpus {} mem {}", boot.vcpus, boot.mem_mib));
        inputs.push(format!("cmdline {:?}", boot.cmdline));
        inputs.push(format!("vsock {}", boot.vsock_uds.is_some()));
        for share in &boot.shares {
            inputs.push(format!(
                "share {:?} ro={} nosuid={}",
                share.tag, share.read_only, share.nosuid
            ));
        }
        let digest = Sha256::digest(inputs.join("\n").as_bytes());
        // 128 bits name a template well enough, and keep socket paths beside it short.
        Ok(hex::encode(&digest[..16]))
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
        let lock = super::lock_std(&self.building)
            .entry(key.clone())
            .or_default()
            .clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-tpl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_input_is_in_the_key_and_nothing_else() {
        let dir = scratch("key");
        for f in ["vmm", "vmlinux", "initramfs"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let cfg = EngineConfig {
            data_root: dir.join("data"),
            exec_root: dir.join("exec"),
            vmm: dir.join("vmm"),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initramfs"),
            boot_retries: 0,
            start: Default::default(),
            prebuild_template: false,
        };
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
        std::fs::remove_file(dir.join("vmm")).unwrap();
        let e = templates.key(&cfg, &boot(1, 256)).unwrap_err();
        assert!(e.to_string().contains("vmm"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
