//! Docker's mounts on a container in its VM, read from a create request: bind mounts
//! (`-v /host/dir:/path[:opts]` in `Binds`, `--mount type=bind` in `Mounts`), each served to
//! the guest as a virtio-fs share of its own, confined like the root share and read-only on
//! the host side when `:ro`; and tmpfs mounts (`--tmpfs` in `Tmpfs`, `--mount type=tmpfs`),
//! made by the agent in the guest's memory, their size enforced by the guest's kernel.
//!
//! Volumes (`-v name:/path`, `-v /path`, `--mount type=volume`, an image's `VOLUME`) are
//! directories of berth's volume store (crate::volume), served as a bind's host directory
//! is; the parse leaves an anonymous volume's name empty, for the engine to make one when it
//! creates the container. A bind of a single file is a share of its own too: the VMM serves
//! the file's directory with that one entry in it and nothing else (its neighbours are
//! never reachable), and the agent mounts that entry on the destination.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{EngineError, Result};

/// Most binds and volumes one container has: each is a virtio-mmio device, and a VM has 19
/// interrupt lines for them (IRQs 5 to 23), of which the root share, vsock, the entropy
/// device and the network card take four. Tmpfs mounts take none.
pub const MAX_BINDS: usize = 15;

/// One of a container's mounts, as created (inspect's `Mounts`, the agent's `MountSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountPoint {
    /// A host directory.
    Bind {
        source: String,
        destination: String,
        readonly: bool,
        /// `-v`'s mode string as given (`ro,z`), for inspect; empty from `--mount`.
        #[serde(default)]
        mode: String,
    },
    /// A volume of berth's volume store, served as a bind's directory is.
    Volume {
        /// Empty, until the container is created, for an anonymous volume.
        name: String,
        /// The volume's directory on the host (empty until the container is created).
        #[serde(default)]
        source: String,
        destination: String,
        readonly: bool,
        /// `-v`'s mode string as given, for inspect; empty from `--mount`.
        #[serde(default)]
        mode: String,
        /// Not filled from the image's files at its destination (`nocopy`).
        #[serde(default)]
        nocopy: bool,
        /// Labels for the volume, if this mount creates it (`--mount volume-label=`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    /// A tmpfs in the guest, with mount(8) options (Docker's defaults first, the user's
    /// after them: the last of two opposite flags wins).
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
}

impl MountPoint {
    pub fn destination(&self) -> &str {
        match self {
            MountPoint::Bind { destination, .. }
            | MountPoint::Volume { destination, .. }
            | MountPoint::Tmpfs { destination, .. } => destination,
        }
    }

    /// The host directory a bind or volume serves (its virtio-fs share), and whether the
    /// share is read-only; none for a tmpfs.
    pub fn share(&self) -> Option<(&str, bool)> {
        match self {
            MountPoint::Bind {
                source, readonly, ..
            }
            | MountPoint::Volume {
                source, readonly, ..
            } => Some((source, *readonly)),
            MountPoint::Tmpfs { .. } => None,
        }
    }

    /// For a bind of one file, the file's name: its share is the file's directory with
    /// that entry alone (the VMM decides the same way, from what the source is when the VM
    /// starts).
    pub fn single_file(&self) -> Option<String> {
        let MountPoint::Bind { source, .. } = self else {
            return None;
        };
        if !std::fs::metadata(source).is_ok_and(|m| m.is_file()) {
            return None;
        }
        let real = std::fs::canonicalize(source).ok()?;
        real.file_name()?.to_str().map(str::to_string)
    }

    /// Inspect's entry for it, as dockerd writes one.
    pub fn inspect(&self) -> Value {
        match self {
            MountPoint::Bind {
                source,
                destination,
                readonly,
                mode,
            } => serde_json::json!({
                "Type": "bind",
                "Source": source,
                "Destination": destination,
                "Mode": mode,
                "RW": !readonly,
                "Propagation": "rprivate",
            }),
            MountPoint::Volume {
                name,
                source,
                destination,
                readonly,
                mode,
                ..
            } => serde_json::json!({
                "Type": "volume",
                "Name": name,
                "Source": source,
                "Destination": destination,
                "Driver": crate::volume::LOCAL,
                "Mode": mode,
                "RW": !readonly,
                "Propagation": "",
            }),
            MountPoint::Tmpfs {
                destination,
                options,
            } => serde_json::json!({
                "Type": "tmpfs",
                "Source": "",
                "Destination": destination,
                "Mode": options.join(","),
                "RW": options.iter().rev().find(|o| *o == "ro" || *o == "rw").is_none_or(|o| o != "ro"),
                "Propagation": "",
            }),
        }
    }
}

/// What `--tmpfs` and `--mount type=tmpfs` start from, as dockerd does.
const TMPFS_DEFAULTS: &[&str] = &["noexec", "nosuid", "nodev"];

fn invalid(msg: String) -> EngineError {
    EngineError::InvalidArgument(msg)
}

fn refused(what: &str, why: &str) -> EngineError {
    EngineError::InvalidArgument(format!("berth does not support {what}: {why}"))
}

/// The propagation modes `-v` takes.
const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// A destination inside the container, cleaned: absolute, not `/`, no `..`.
fn destination(kind: &str, path: &str) -> Result<String> {
    let bad = |why: &str| {
        invalid(format!(
            "invalid mount config for type \"{kind}\": invalid mount path: '{path}' {why}"
        ))
    };
    if !path.starts_with('/') {
        return Err(bad("mount path must be absolute"));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(bad("is not a valid path"));
    }
    let mut clean = String::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                clean.push('/');
                clean.push_str(&n.to_string_lossy());
            }
            Component::ParentDir => return Err(bad("must not contain '..'")),
            Component::Prefix(_) => return Err(bad("is not a valid path")),
        }
    }
    if clean.is_empty() {
        return Err(invalid(format!(
            "invalid specification: destination can't be '/' in '{path}'"
        )));
    }
    Ok(clean)
}

/// A bind's host directory or file: absolute, there (or created as a directory, for
/// `-v`), a directory or a regular file.
fn bind_source(source: &str, create: bool) -> Result<String> {
    if source.contains('\0') || source.len() > 4096 {
        return Err(invalid(format!("invalid bind source path: {source:?}")));
    }
    let path = Path::new(source);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() || meta.is_file() => {}
        Ok(_) => {
            return Err(refused(
                &format!("bind-mounting {source}"),
                "only directories and regular files can be shared with the container's VM (a socket, pipe or device on the host cannot reach it)",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            // As dockerd does for -v: the missing host directory is made.
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(path)
                .map_err(|e| {
                    invalid(format!(
                        "error while creating mount source path '{source}': {e}"
                    ))
                })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(format!(
                "invalid mount config for type \"bind\": bind source path does not exist: {source}"
            )))
        }
        Err(e) => {
            return Err(invalid(format!(
                "invalid mount config for type \"bind\": cannot use bind source path {source}: {e}"
            )))
        }
    }
    // Cleaned the way dockerd shows it; the share serves this directory itself, so a
    // symlink in the path is resolved once, here, by the host.
    let real = std::fs::canonicalize(path)
        .map_err(|e| invalid(format!("invalid bind source path {source}: {e}")))?;
    Ok(real.to_string_lossy().into_owned())
}

/// A propagation mode: only the private ones mean anything for a VM, whose mounts never
/// reach the host's mount table.
fn propagation(mode: &str) -> Result<()> {
    match mode {
        "" | "private" | "rprivate" => Ok(()),
        "shared" | "rshared" | "slave" | "rslave" => Err(refused(
            &format!("mount propagation {mode}"),
            "the mount is inside the container's VM, whose mounts never reach the host's",
        )),
        other => Err(invalid(format!("invalid propagation mode: {other}"))),
    }
}

/// An anonymous volume at `dest` (`-v /path`, `Volumes`, an image's `VOLUME`).
pub fn anonymous_volume(dest: &str) -> Result<MountPoint> {
    Ok(MountPoint::Volume {
        name: String::new(),
        source: String::new(),
        destination: destination("volume", dest)?,
        readonly: false,
        mode: String::new(),
        nocopy: false,
        labels: BTreeMap::new(),
    })
}

/// `-v SRC:DST[:MODE]`: a host directory when SRC is absolute, else a named volume; `-v
/// DST` alone, an anonymous volume.
pub fn parse_bind(spec: &str) -> Result<MountPoint> {
    let spec_err = || invalid(format!("invalid volume specification: '{spec}'"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, dest, mode) = match parts.as_slice() {
        [source, dest] => (*source, *dest, ""),
        [source, dest, mode] => (*source, *dest, *mode),
        [dest] if dest.starts_with('/') => return anonymous_volume(dest),
        _ => return Err(spec_err()),
    };
    if source.is_empty() || dest.is_empty() {
        return Err(spec_err());
    }
    let is_bind = source.starts_with('/');
    if !is_bind {
        crate::volume::check_name(source)?;
    }
    let destination = destination(if is_bind { "bind" } else { "volume" }, dest)?;
    let mut readonly = false;
    let mut rw_seen = false;
    let mut nocopy = false;
    for m in mode.split(',').filter(|m| !m.is_empty()) {
        match m {
            "ro" | "rw" if rw_seen => return Err(invalid(format!("invalid mode: {mode}"))),
            "ro" | "rw" => {
                rw_seen = true;
                readonly = m == "ro";
            }
            // SELinux relabelling: the guest has no SELinux and the host's labels are not
            // changed for a share, as dockerd leaves them on a host without SELinux.
            "z" | "Z" => {}
            "nocopy" if is_bind => {
                return Err(invalid(format!(
                    "invalid mode: {mode}: nocopy applies to volumes, not to bind mounts"
                )))
            }
            "nocopy" => nocopy = true,
            m if PROPAGATIONS.contains(&m) => propagation(m)?,
            _ => return Err(invalid(format!("invalid mode: {mode}"))),
        }
    }
    if !is_bind {
        return Ok(MountPoint::Volume {
            name: source.to_string(),
            source: String::new(),
            destination,
            readonly,
            mode: mode.to_string(),
            nocopy,
            labels: BTreeMap::new(),
        });
    }
    Ok(MountPoint::Bind {
        source: bind_source(source, true)?,
        destination,
        readonly,
        mode: mode.to_string(),
    })
}

/// `--tmpfs DST[:OPTIONS]` (`Tmpfs`' key and value).
pub fn parse_tmpfs(dest: &str, options: &str) -> Result<MountPoint> {
    let destination = destination("tmpfs", dest)?;
    let mut all: Vec<String> = TMPFS_DEFAULTS.iter().map(|s| s.to_string()).collect();
    for o in options.split(',').filter(|o| !o.is_empty()) {
        if PROPAGATIONS.contains(&o) {
            propagation(o)?;
            continue;
        }
        agent_protocol::check_tmpfs_option(o)
            .map_err(|e| invalid(format!("invalid tmpfs option {o:?} for {dest}: {e}")))?;
        all.push(o.to_string());
    }
    if all.len() > agent_protocol::MAX_TMPFS_OPTIONS {
        return Err(invalid(format!("too many tmpfs options for {dest}")));
    }
    Ok(MountPoint::Tmpfs {
        destination,
        options: all,
    })
}

fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

fn str_field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str> {
    match field(m, name) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("Mounts: {name} must be a string"))),
    }
}

fn bool_field(m: &serde_json::Map<String, Value>, name: &str) -> Result<bool> {
    match field(m, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("Mounts: {name} must be a boolean"))),
    }
}

fn object<'a>(
    m: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid(format!("Mounts: {name} must be an object"))),
    }
}

/// One `--mount` (an entry of `Mounts`).
pub fn parse_mount(v: &Value) -> Result<MountPoint> {
    let Value::Object(m) = v else {
        return Err(invalid("Mounts: each mount must be an object".into()));
    };
    let kind = str_field(m, "Type")?;
    let target = str_field(m, "Target")?;
    let source = str_field(m, "Source")?;
    let readonly = bool_field(m, "ReadOnly")?;
    let config_err =
        |why: String| invalid(format!("invalid mount config for type \"{kind}\": {why}"));
    if target.is_empty() {
        return Err(config_err("field Target must not be empty".into()));
    }
    match kind {
        "bind" => {
            if object(m, "VolumeOptions")?.is_some() {
                return Err(config_err("VolumeOptions must not be specified".into()));
            }
            if object(m, "TmpfsOptions")?.is_some() {
                return Err(config_err("TmpfsOptions must not be specified".into()));
            }
            if source.is_empty() {
                return Err(config_err("field Source must not be empty".into()));
            }
            if !source.starts_with('/') {
                return Err(config_err(format!(
                    "invalid mount path: '{source}' mount path must be absolute"
                )));
            }
            let mut create = false;
            if let Some(o) = object(m, "BindOptions")? {
                propagation(str_field(o, "Propagation")?)?;
                create = bool_field(o, "CreateMountpoint")?;
                for (flag, why) in [
                    (
                        "NonRecursive",
                        "a share always carries what is mounted below it on the host",
                    ),
                    (
                        "ReadOnlyNonRecursive",
                        "a read-only share is read-only all the way down",
                    ),
                ] {
                    if bool_field(o, flag)? {
                        return Err(refused(&format!("bind option {flag}"), why));
                    }
                }
            }
            Ok(MountPoint::Bind {
                source: bind_source(source, create)?,
                destination: destination(kind, target)?,
                readonly,
                mode: String::new(),
            })
        }
        "tmpfs" => {
            if !source.is_empty() {
                return Err(config_err("field Source must not be specified".into()));
            }
            if object(m, "BindOptions")?.is_some() {
                return Err(config_err("BindOptions must not be specified".into()));
            }
            if object(m, "VolumeOptions")?.is_some() {
                return Err(config_err("VolumeOptions must not be specified".into()));
            }
            let mut options = Vec::new();
            if readonly {
                options.push("ro".to_string());
            }
            if let Some(o) = object(m, "TmpfsOptions")? {
                match field(o, "SizeBytes") {
                    None => {}
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(0) => {}
                        Some(size) if size > 0 => options.push(format!("size={size}")),
                        _ => return Err(config_err(format!("invalid tmpfs size {n}"))),
                    },
                    Some(_) => return Err(invalid("Mounts: SizeBytes must be a number".into())),
                }
                match field(o, "Mode") {
                    None => {}
                    Some(Value::Number(n)) => match n.as_u64() {
                        Some(0) => {}
                        // Go's os.FileMode: permission bits low, setuid/setgid/sticky high.
                        Some(mode) if mode <= u64::from(u32::MAX) => {
                            options.push(format!("mode={:o}", go_mode_to_unix(mode as u32)))
                        }
                        _ => return Err(config_err(format!("invalid tmpfs mode {n}"))),
                    },
                    Some(_) => return Err(invalid("Mounts: Mode must be a number".into())),
                }
                if field(o, "Options").is_some_and(|v| !super::spec::is_unset_value(v)) {
                    return Err(refused(
                        "tmpfs Options in --mount",
                        "give them with --tmpfs DST:OPTIONS",
                    ));
                }
            }
            parse_tmpfs(target, &options.join(","))
        }
        "volume" => {
            if object(m, "BindOptions")?.is_some() {
                return Err(config_err("BindOptions must not be specified".into()));
            }
            if object(m, "TmpfsOptions")?.is_some() {
                return Err(config_err("TmpfsOptions must not be specified".into()));
            }
            if !source.is_empty() {
                crate::volume::check_name(source)?;
            }
            let mut nocopy = false;
            let mut labels = BTreeMap::new();
            if let Some(o) = object(m, "VolumeOptions")? {
                nocopy = bool_field(o, "NoCopy")?;
                if let Some(l) = object(o, "Labels")? {
                    for (k, v) in l {
                        let v = v.as_str().ok_or_else(|| {
                            invalid(format!("Mounts: label {k:?} must be a string"))
                        })?;
                        labels.insert(k.clone(), v.to_string());
                    }
                }
                if let Some(d) = object(o, "DriverConfig")? {
                    crate::volume::check_driver(str_field(d, "Name")?)?;
                    if let Some(opts) = object(d, "Options")? {
                        let keys = opts.keys().map(|k| (k.clone(), String::new())).collect();
                        crate::volume::check_driver_opts(&keys)?;
                    }
                }
                if !str_field(o, "Subpath")?.is_empty() {
                    return Err(refused(
                        "volume subpaths (volume-subpath)",
                        "a volume is shared with the container's VM whole; bind the subdirectory of a host directory instead",
                    ));
                }
            }
            Ok(MountPoint::Volume {
                name: source.to_string(),
                source: String::new(),
                destination: destination(kind, target)?,
                readonly,
                mode: String::new(),
                nocopy,
                labels,
            })
        }
        "" => Err(invalid(
            "invalid mount config: mount type must be given".into(),
        )),
        other => Err(refused(
            &format!("mounts of type {other:?}"),
            "only bind, volume and tmpfs mounts are supported",
        )),
    }
}

/// Go's `os.FileMode` bits to a Unix mode: the permission bits, and setuid, setgid and
/// sticky from Go's own high bits.
fn go_mode_to_unix(mode: u32) -> u32 {
    let mut unix = mode & 0o777;
    if mode & (1 << 23) != 0 {
        unix |= 0o4000;
    }
    if mode & (1 << 22) != 0 {
        unix |= 0o2000;
    }
    if mode & (1 << 20) != 0 {
        unix |= 0o1000;
    }
    unix
}

/// Every mount of a create request (`Binds`, `Mounts`, `Tmpfs`), checked together: no two
/// at one destination, at most [`MAX_BINDS`] binds and volumes.
pub fn parse_all(
    binds: &[String],
    mounts: &[Value],
    tmpfs: &BTreeMap<String, String>,
) -> Result<Vec<MountPoint>> {
    let mut all = Vec::new();
    for b in binds {
        all.push(parse_bind(b)?);
    }
    for m in mounts {
        all.push(parse_mount(m)?);
    }
    for (dest, options) in tmpfs {
        all.push(parse_tmpfs(dest, options)?);
    }
    check_all(&all)?;
    Ok(all)
}

/// Adds an anonymous volume at each of `destinations` (the container's and its image's
/// `Volumes`) that no other mount covers, as dockerd does; checks the whole again.
pub fn add_anonymous_volumes<'a>(
    all: &mut Vec<MountPoint>,
    destinations: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for dest in destinations {
        let volume = anonymous_volume(dest)?;
        if !all.iter().any(|m| m.destination() == volume.destination()) {
            all.push(volume);
        }
    }
    check_all(all)
}

fn check_all(all: &[MountPoint]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for m in all {
        if !seen.insert(m.destination()) {
            return Err(invalid(format!(
                "Duplicate mount point: {}",
                m.destination()
            )));
        }
    }
    let shares = all.iter().filter(|m| m.share().is_some()).count();
    if shares > MAX_BINDS {
        return Err(refused(
            &format!("{shares} bind mounts and volumes on one container"),
            &format!("each is a device of the container's VM, which has room for {MAX_BINDS}"),
        ));
    }
    if all.len() > agent_protocol::MAX_MOUNTS {
        return Err(invalid(format!(
            "too many mounts ({}, at most {})",
            all.len(),
            agent_protocol::MAX_MOUNTS
        )));
    }
    Ok(())
}

/// The container's virtio-fs shares besides its root, in [`bind_tag`] order: each bind's
/// or volume's host directory and whether it is read-only.
pub fn shares(mounts: &[MountPoint]) -> Vec<(std::path::PathBuf, bool)> {
    mounts
        .iter()
        .filter_map(MountPoint::share)
        .map(|(source, readonly)| (std::path::PathBuf::from(source), readonly))
        .collect()
}

/// The virtio-fs tag of a container's `n`th bind.
pub fn bind_tag(n: usize) -> String {
    format!("bind{n}")
}

/// The agent's mounts for `mounts`, binds and volumes tagged in their order ([`shares`]).
pub fn agent_mounts(mounts: &[MountPoint]) -> Vec<agent_protocol::MountSpec> {
    let mut binds = 0;
    mounts
        .iter()
        .map(|m| match m {
            MountPoint::Bind {
                destination,
                readonly,
                ..
            }
            | MountPoint::Volume {
                destination,
                readonly,
                ..
            } => {
                let tag = bind_tag(binds);
                binds += 1;
                agent_protocol::MountSpec {
                    source: agent_protocol::FsSource::Virtiofs { tag },
                    destination: destination.clone(),
                    readonly: *readonly,
                    file: m.single_file(),
                }
            }
            MountPoint::Tmpfs {
                destination,
                options,
            } => agent_protocol::MountSpec {
                source: agent_protocol::FsSource::Tmpfs {
                    options: options.clone(),
                },
                destination: destination.clone(),
                readonly: false,
                file: None,
            },
        })
        .collect()
}

/// Makes the mount points `destinations` in the container's root (the mounted overlay),
/// where missing: directories, or for a bind of one file (`true`) an empty file under
/// directories. Under `--read-only` the guest cannot make them, its root share being
/// read-only in the VMM. Resolved confined to `root` as the guest would resolve them (a
/// symlink in the image leads somewhere inside it, never out).
pub fn make_mountpoints<'a>(
    root: &Path,
    destinations: impl IntoIterator<Item = (&'a str, bool)>,
) -> std::io::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    for (destination, file) in destinations {
        let names: Vec<&str> = destination.split('/').filter(|c| !c.is_empty()).collect();
        let mut prefix = String::new();
        for (i, name) in names.iter().enumerate() {
            let last_is_file = file && i + 1 == names.len();
            let parent = if prefix.is_empty() {
                ".".to_string()
            } else {
                prefix.clone()
            };
            prefix = format!("{prefix}{}{name}", if prefix.is_empty() { "" } else { "/" });
            let flags = if last_is_file {
                OFlag::O_PATH
            } else {
                dir_flags
            };
            match super::archive::open_in_root(&root_fd, prefix.as_bytes(), flags) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let parent = super::archive::open_in_root(&root_fd, parent.as_bytes(), dir_flags)?;
            if last_is_file {
                nix::fcntl::openat(
                    &parent,
                    *name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )?;
            } else {
                nix::sys::stat::mkdirat(&parent, *name, Mode::from_bits_truncate(0o755))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
