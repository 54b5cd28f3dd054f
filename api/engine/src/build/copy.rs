//! COPY and ADD: the layer a step adds, composed from entries of a source tree (the build
//! context, a stage's image or an archive ADD unpacks) under their destination names, with
//! the destination's parents first.
//!
//! Nothing here resolves a host path from what the context or an image holds: sources are
//! read through [`Tree`] (openat2 beneath the tree's root, no symlink followed), and the
//! image's own tree is read through [`lookup`] over its layer stack.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use sha2::{Digest, Sha256};

use crate::layerfs::tarball::Composer;
use crate::layerfs::{lookup, Kind, LayerFsError, Tree};

/// Why a COPY or ADD cannot be made. Messages are worded as the classic builder's.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{keyword} failed: file not found in build context or excluded by .dockerignore: stat {path}: file does not exist")]
    Missing { keyword: String, path: String },
    #[error("{keyword} failed: no source files were specified")]
    NoMatch { keyword: String },
    #[error("When using {keyword} with more than one source file, the destination must be a directory and end with a /")]
    DestinationNotDir { keyword: String },
    #[error(
        "{keyword} failed: wildcards are matched in the last path element only, not in {pattern:?}"
    )]
    Wildcard { keyword: String, pattern: String },
    #[error("{keyword} failed: {source}")]
    Read {
        keyword: String,
        #[source]
        source: LayerFsError,
    },
}

/// One source as matched: where it is in its tree and what it is.
pub struct Source {
    /// Below the tree's root, no leading `/` (`""`: the root itself).
    pub rel: Vec<u8>,
    pub st: libc::stat,
    /// Its last path element (the name a file keeps in a destination directory).
    pub name: Vec<u8>,
}

/// `path` made relative to a root that nothing climbs out of: `.` and empty elements
/// dropped, `..` taking one element off (never past the root).
pub fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p.to_string()),
        }
    }
    out
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The sources `pattern` names in `tree`: itself, or the entries of its directory whose
/// names match its last element's wildcards.
pub fn sources(tree: &Tree, pattern: &str, keyword: &str) -> Result<Vec<Source>, CopyError> {
    let read = |source| CopyError::Read {
        keyword: keyword.to_string(),
        source,
    };
    let parts = clean(pattern);
    let (dir_parts, last) = match parts.split_last() {
        Some((last, dir)) => (dir, Some(last.clone())),
        None => (&parts[..], None),
    };
    if dir_parts.iter().any(|p| has_wildcard(p)) {
        return Err(CopyError::Wildcard {
            keyword: keyword.to_string(),
            pattern: pattern.to_string(),
        });
    }
    let stack = std::slice::from_ref(tree);
    let Some(last) = last else {
        // The root itself: the whole tree.
        return root_source(tree).map_err(read).map(|s| vec![s]);
    };
    let dir = dir_parts.join("/");
    if !has_wildcard(&last) {
        let rel = if dir.is_empty() {
            last.clone()
        } else {
            format!("{dir}/{last}")
        };
        return match lookup(stack, rel.as_bytes()).map_err(read)? {
            Some(m) => Ok(vec![Source {
                rel: rel.into_bytes(),
                st: m.st,
                name: last.into_bytes(),
            }]),
            None => Err(CopyError::Missing {
                keyword: keyword.to_string(),
                path: pattern.trim_start_matches('/').to_string(),
            }),
        };
    }
    let listing = tree.list(dir.as_bytes()).map_err(read)?;
    let mut found = Vec::new();
    for node in listing.map(|l| l.nodes).unwrap_or_default() {
        let name = node.name.to_string_lossy().into_owned();
        if crate::image::glob_match(&last, &name) == Some(true) {
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            found.push(Source {
                rel: rel.into_bytes(),
                st: node.st,
                name: node.name.as_bytes().to_vec(),
            });
        }
    }
    if found.is_empty() {
        return Err(CopyError::NoMatch {
            keyword: keyword.to_string(),
        });
    }
    Ok(found)
}

/// The tree's root as a source (`COPY . /app`).
fn root_source(tree: &Tree) -> Result<Source, LayerFsError> {
    let st = tree.stat_root()?;
    Ok(Source {
        rel: Vec::new(),
        st,
        name: Vec::new(),
    })
}

/// Where each source goes: `dest` (absolute, cleaned, no leading `/` in the names this
/// returns) as a directory when it ends with `/`, when there are several sources, or when
/// the image has a directory there; else as the file's own new name.
pub struct Placement {
    /// The destination below `/` (`""` is `/` itself).
    pub dest: Vec<u8>,
    pub into_dir: bool,
}

/// Works out [`Placement`] for `dest` (already made absolute against WORKDIR).
pub fn placement(
    image: &[Tree],
    dest: &str,
    count: usize,
    wildcard: bool,
    keyword: &str,
) -> Result<Placement, CopyError> {
    let dir_syntax = dest.ends_with('/') || dest.ends_with("/.") || dest == "/";
    let cleaned = clean(dest).join("/").into_bytes();
    if (count > 1 || wildcard) && !dir_syntax {
        return Err(CopyError::DestinationNotDir {
            keyword: keyword.to_string(),
        });
    }
    let is_dir = dir_syntax
        || cleaned.is_empty()
        || lookup(image, &cleaned)
            .map_err(|source| CopyError::Read {
                keyword: keyword.to_string(),
                source,
            })?
            .is_some_and(|m| m.kind == Kind::Dir);
    Ok(Placement {
        dest: cleaned,
        into_dir: is_dir,
    })
}

/// A directory's metadata for one the layer creates: 0755, root, now.
fn new_dir_stat() -> libc::stat {
    // SAFETY: `stat` is plain old data; all zeros is a valid value of it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFDIR | 0o755;
    st.st_mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    st
}

/// Writes the layer: the destination's parents (as the image has them, or new), the
/// destination directory when sources go into one, then each source of `tree`, then the
/// contents of each of `archives` (ADD's, unpacked; the index is the source's, unused
/// here). A directory source gives its contents, not itself. Returns the number of entries.
#[allow(clippy::too_many_arguments)]
pub fn compose_all(
    out: impl Write,
    image: &[Tree],
    tree: &Tree,
    sources: &[Source],
    archives: &[(usize, Tree)],
    place: &Placement,
    owner: Option<(u32, u32)>,
    keyword: &str,
) -> Result<u64, CopyError> {
    let read = |source| CopyError::Read {
        keyword: keyword.to_string(),
        source,
    };
    let mut c = Composer::new(out, owner);
    let mut made: HashSet<Vec<u8>> = HashSet::new();
    let mut dir_entry = |c: &mut Composer<_>, name: &[u8], own: bool| -> Result<(), CopyError> {
        if name.is_empty() || !made.insert(name.to_vec()) {
            return Ok(());
        }
        let existing = lookup(image, name).map_err(read)?;
        match existing {
            Some(m) if m.kind == Kind::Dir => c.dir(name, &m.st).map_err(read),
            _ => {
                let mut st = new_dir_stat();
                if let (true, Some((uid, gid))) = (own, owner) {
                    st.st_uid = uid;
                    st.st_gid = gid;
                }
                c.dir(name, &st).map_err(read)
            }
        }
    };
    // The parents of the destination (of the destination's directory for a file).
    let base: &[u8] = if place.into_dir {
        &place.dest
    } else {
        match place.dest.iter().rposition(|&b| b == b'/') {
            Some(i) => &place.dest[..i],
            None => b"",
        }
    };
    let mut prefix = Vec::new();
    for part in base.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(part);
        let own = place.into_dir && prefix.len() == base.len();
        dir_entry(&mut c, &prefix.clone(), own)?;
    }
    let join = |dir: &[u8], name: &[u8]| -> Vec<u8> {
        if dir.is_empty() {
            name.to_vec()
        } else {
            let mut v = dir.to_vec();
            v.push(b'/');
            v.extend_from_slice(name);
            v
        }
    };
    for (_, archive) in archives {
        let listing = archive.list(b"").map_err(read)?;
        for node in listing.map(|l| l.nodes).unwrap_or_default() {
            let name = join(&place.dest, node.name.as_bytes());
            c.tree(archive, node.name.as_bytes(), &node.st, &name)
                .map_err(read)?;
        }
    }
    for s in sources {
        if Kind::of(&s.st) == Kind::Dir {
            // A directory's contents go into the destination (or the destination is it).
            let target = &place.dest;
            let listing = tree.list(&s.rel).map_err(read)?;
            for node in listing.map(|l| l.nodes).unwrap_or_default() {
                let rel = join(&s.rel, node.name.as_bytes());
                let name = join(target, node.name.as_bytes());
                c.tree(tree, &rel, &node.st, &name).map_err(read)?;
            }
        } else {
            let name = if place.into_dir {
                join(&place.dest, &s.name)
            } else {
                place.dest.clone()
            };
            c.tree(tree, &s.rel, &s.st, &name).map_err(read)?;
        }
    }
    c.finish().map_err(read)
}

/// What the classic builder's cache knows a COPY by: `file:`, `dir:` or `multi:` and a hash
/// of the sources as they would be written (names, metadata and contents).
pub fn sources_key(tree: &Tree, sources: &[Source], keyword: &str) -> Result<String, CopyError> {
    struct Hashing(Sha256);
    impl Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    {
        let read = |source| CopyError::Read {
            keyword: keyword.to_string(),
            source,
        };
        let mut c = Composer::new(&mut h, None);
        for s in sources {
            let name = if s.name.is_empty() {
                b".".to_vec()
            } else {
                s.name.clone()
            };
            if Kind::of(&s.st) != Kind::Dir {
                c.tree(tree, &s.rel, &s.st, &name).map_err(read)?;
                continue;
            }
            // A directory gives its contents only (its own times change when a context is
            // unpacked again), as [`compose_all`] writes them.
            let listing = tree.list(&s.rel).map_err(read)?;
            for node in listing.map(|l| l.nodes).unwrap_or_default() {
                let mut rel = s.rel.clone();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(node.name.as_bytes());
                let mut shown = name.clone();
                shown.push(b'/');
                shown.extend_from_slice(node.name.as_bytes());
                c.tree(tree, &rel, &node.st, &shown).map_err(read)?;
            }
        }
        c.finish().map_err(read)?;
    }
    let kind = match sources {
        [one] if Kind::of(&one.st) == Kind::Dir => "dir",
        [_] => "file",
        _ => "multi",
    };
    Ok(format!("{kind}:{}", hex::encode(h.0.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn context() -> (std::path::PathBuf, Tree) {
        let dir = std::env::temp_dir().join(format!("berth-copy-test-{}", crate::ids::new_id()));
        std::fs::create_dir_all(dir.join("app/sub")).unwrap();
        std::fs::write(dir.join("app/a.txt"), "a").unwrap();
        std::fs::write(dir.join("app/sub/b.txt"), "bb").unwrap();
        std::fs::write(dir.join("one.txt"), "1").unwrap();
        std::fs::write(dir.join("two.txt"), "22").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let tree = Tree::open(&dir, "a test context").unwrap();
        (dir, tree)
    }

    /// (name, uid, size, kind) of each entry of a tar.
    fn entries(tar: &[u8]) -> Vec<(String, u64, u64, tar::EntryType)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap(),
                    data.len() as u64,
                    h.entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn clean_never_climbs_out() {
        assert_eq!(clean("/a/../../b/./c/"), vec!["b", "c"]);
        assert_eq!(clean("../../.."), Vec::<String>::new());
        assert_eq!(clean("x//y"), vec!["x", "y"]);
    }

    #[test]
    fn a_directory_gives_its_contents_under_new_parents() {
        let (dir, tree) = context();
        let srcs = sources(&tree, "app/", "COPY").unwrap();
        let place = placement(&[], "/opt/app/", srcs.len(), false, "COPY").unwrap();
        assert!(place.into_dir);
        let mut out = Vec::new();
        compose_all(
            &mut out,
            &[],
            &tree,
            &srcs,
            &[],
            &place,
            Some((7, 7)),
            "COPY",
        )
        .unwrap();
        let names: Vec<(String, u64)> = entries(&out)
            .into_iter()
            .map(|(n, uid, _, _)| (n, uid))
            .collect();
        assert_eq!(
            names,
            vec![
                ("opt/".to_string(), 0),
                ("opt/app/".to_string(), 7),
                ("opt/app/a.txt".to_string(), 7),
                ("opt/app/sub/".to_string(), 7),
                ("opt/app/sub/b.txt".to_string(), 7),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_wildcards_and_refusals() {
        let (dir, tree) = context();
        // One file to a new name.
        let srcs = sources(&tree, "/one.txt", "COPY").unwrap();
        let place = placement(&[], "/etc/renamed", 1, false, "COPY").unwrap();
        assert!(!place.into_dir);
        let mut out = Vec::new();
        compose_all(&mut out, &[], &tree, &srcs, &[], &place, None, "COPY").unwrap();
        let got = entries(&out);
        assert_eq!(got[0].0, "etc/");
        assert_eq!((got[1].0.as_str(), got[1].2), ("etc/renamed", 1));
        // A wildcard: both files, into a directory; without the slash, refused.
        let srcs = sources(&tree, "*.txt", "COPY").unwrap();
        assert_eq!(srcs.len(), 2);
        assert!(matches!(
            placement(&[], "/dst", 2, true, "COPY"),
            Err(CopyError::DestinationNotDir { .. })
        ));
        // A symlink is data: copied as the link, never followed.
        let srcs = sources(&tree, "link", "COPY").unwrap();
        let place = placement(&[], "/l", 1, false, "COPY").unwrap();
        let mut out = Vec::new();
        compose_all(&mut out, &[], &tree, &srcs, &[], &place, None, "COPY").unwrap();
        assert_eq!(entries(&out)[0].3, tar::EntryType::Symlink);
        // What is not there, in Docker's words; `..` stays inside.
        let e = sources(&tree, "../../etc/passwd", "COPY").err().unwrap();
        assert!(
            e.to_string().contains("file not found in build context"),
            "{e}"
        );
        assert!(matches!(
            sources(&tree, "*.none", "COPY"),
            Err(CopyError::NoMatch { .. })
        ));
        assert!(matches!(
            sources(&tree, "a*/b", "COPY"),
            Err(CopyError::Wildcard { .. })
        ));
        // The cache's key follows the contents, not the directory's own times.
        let k1 = sources_key(&tree, &sources(&tree, ".", "COPY").unwrap(), "COPY").unwrap();
        std::fs::write(dir.join("one.txt"), "changed").unwrap();
        let k2 = sources_key(&tree, &sources(&tree, ".", "COPY").unwrap(), "COPY").unwrap();
        assert!(k1.starts_with("dir:") && k1 != k2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
