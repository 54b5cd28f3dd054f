//! A container's init layer (`<container>/init/`), the topmost of its overlay's lower dirs:
//! the mount points the agent needs and the image lacks (`/proc`, `/sys`, `/dev`,
//! `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`), made once on the host.
//!
//! Without it the agent would create them in the merged root, that is in the writable
//! layer, and every container would show them in `docker diff` and carry them into `docker
//! commit`. Docker keeps them out the same way (its `-init` layer). Only names the image
//! does not have are made, so nothing of the image is hidden; an `/etc` made here takes the
//! mode, owner and times of the image's `/etc`, which it then stands for.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

use crate::layerfs::{merge, open_stack, Kind, LayerFsError, Merged};

/// Why the init layer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitLayerError {
    #[error("cannot read the image's layers to make the container's init layer")]
    Image(#[source] LayerFsError),
    #[error("cannot make the container's init layer at {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Directories the agent mounts file systems on.
const MOUNT_DIRS: [&str; 3] = ["dev", "proc", "sys"];
/// Files in `/etc` the agent bind-mounts its generated files on.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// The init layer of the container in `dir` over `layers` (lowest first), made if it is not
/// there yet (it depends on the image alone, which a container never changes).
pub fn prepare(dir: &Path, layers: &[PathBuf]) -> Result<PathBuf, InitLayerError> {
    let init = dir.join("init");
    if init.is_dir() {
        return Ok(init);
    }
    let stack: Vec<(PathBuf, &'static str)> = layers
        .iter()
        .rev()
        .map(|l| (l.clone(), "an image layer"))
        .collect();
    let stack = open_stack(&stack).map_err(InitLayerError::Image)?;
    let all: Vec<usize> = (0..stack.len()).collect();
    let root = merge(&stack, b"", &all).map_err(InitLayerError::Image)?;
    let find = |entries: &[Merged], name: &str| {
        entries
            .iter()
            .find(|m| m.name.as_encoded_bytes() == name.as_bytes())
            .cloned()
    };
    let work = dir.join("init.tmp");
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| InitLayerError::Write { path, source }
    };
    let _ = crate::fsutil::remove_tree(&work);
    std::fs::create_dir(&work).map_err(werr(&work))?;
    for name in MOUNT_DIRS {
        if find(&root, name).is_none() {
            make_dir(&work.join(name), None).map_err(werr(&work.join(name)))?;
        }
    }
    let etc = find(&root, "etc");
    let (missing, etc_st) = match &etc {
        None => (ETC_FILES.to_vec(), None),
        // An /etc that is a symlink or a file is the image's business: the agent fails
        // there as it would without this layer.
        Some(m) if m.kind != Kind::Dir => (Vec::new(), None),
        Some(m) => {
            let listed = merge(&stack, b"etc", &m.dirs).map_err(InitLayerError::Image)?;
            let missing = ETC_FILES
                .into_iter()
                .filter(|f| find(&listed, f).is_none())
                .collect();
            (missing, Some(m.st))
        }
    };
    if !missing.is_empty() {
        let etc_dir = work.join("etc");
        make_dir(&etc_dir, None).map_err(werr(&etc_dir))?;
        for f in missing {
            let path = etc_dir.join(f);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|file| {
                    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                })
                .map_err(werr(&path))?;
        }
        // Its times last: making its files changed them.
        if let Some(st) = etc_st {
            make_dir(&etc_dir, Some(&st)).map_err(werr(&etc_dir))?;
        }
    }
    std::fs::rename(&work, &init).map_err(werr(&init))?;
    Ok(init)
}

/// Makes (or, given the image's `st`, dresses) a directory: 0755 root, or the image's.
fn make_dir(path: &Path, like: Option<&libc::stat>) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::create_dir(path)?;
    }
    let Some(st) = like else {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        return Ok(());
    };
    let dir = std::fs::File::open(path)?;
    nix::unistd::fchown(
        dir.as_fd(),
        Some(nix::unistd::Uid::from_raw(st.st_uid)),
        Some(nix::unistd::Gid::from_raw(st.st_gid)),
    )?;
    nix::sys::stat::fchmod(dir.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    let at = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::futimens(
        dir.as_fd(),
        &at(st.st_atime, st.st_atime_nsec),
        &at(st.st_mtime, st.st_mtime_nsec),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_only_what_the_image_lacks_dressed_as_the_image() {
        let base = std::env::temp_dir().join(format!(
            "berth-initlayer-{}-{}",
            std::process::id(),
            crate::ids::new_id()
        ));
        let layer = base.join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::create_dir_all(layer.join("proc")).unwrap();
        std::fs::write(layer.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::set_permissions(
            layer.join("etc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        let dir = base.join("container");
        std::fs::create_dir_all(&dir).unwrap();
        let init = prepare(&dir, std::slice::from_ref(&layer)).unwrap();
        let mut names: Vec<String> = Vec::new();
        for e in walk(&init) {
            names.push(e);
        }
        names.sort();
        assert_eq!(
            names,
            ["dev", "etc", "etc/hostname", "etc/resolv.conf", "sys"],
            "the image's /proc and /etc/hosts are not shadowed"
        );
        use std::os::unix::fs::MetadataExt;
        let (ours, theirs) = (
            std::fs::metadata(init.join("etc")).unwrap(),
            std::fs::metadata(layer.join("etc")).unwrap(),
        );
        assert_eq!(ours.mode(), theirs.mode());
        assert_eq!(ours.mtime(), theirs.mtime());
        assert_eq!(
            std::fs::metadata(init.join("etc/hosts"))
                .ok()
                .map(|m| m.len()),
            None
        );
        // Made once: a second start finds it.
        std::fs::write(init.join("marker"), "").unwrap();
        assert!(prepare(&dir, &[layer]).unwrap().join("marker").exists());
        let _ = crate::fsutil::remove_tree(&base);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }
}
