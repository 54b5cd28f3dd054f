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
    /// Too many symlinks on a source's way (a loop): dockerd's words for it, which blame
    /// the context's bounds because its resolver gives up the same way for both.
    #[error("{keyword} failed: forbidden path outside the build context: {path} ()")]
    Links { keyword: String, path: String },
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

/// The sources `pattern` names in `tree`: one path, or with wildcards in any of its
/// elements every path they match, as dockerd's classic builder finds them. A source
/// without wildcards is resolved through any symlink on its way, inside the tree
/// (`FollowSymlinkInScope`); a pattern with wildcards matches real paths only, as dockerd
/// walks the context without following links, and each match that is a symlink is then
/// followed. A source keeps its own name; symlinks inside a copied directory are data,
/// copied as links.
pub fn sources(tree: &Tree, pattern: &str, keyword: &str) -> Result<Vec<Source>, CopyError> {
    let read = |source| CopyError::Read {
        keyword: keyword.to_string(),
        source,
    };
    let parts = clean(pattern);
    let Some((last, dir_parts)) = parts.split_last() else {
        // The root itself: the whole tree.
        return root_source(tree).map_err(read).map(|s| vec![s]);
    };
    if !parts.iter().any(|p| has_wildcard(p)) {
        let Some((rel, st)) = resolve(tree, &parts, keyword)? else {
            return Err(CopyError::Missing {
                keyword: keyword.to_string(),
                path: pattern.trim_start_matches('/').to_string(),
            });
        };
        return Ok(vec![Source {
            rel,
            st,
            name: last.clone().into_bytes(),
        }]);
    }
    // The real directories the leading elements match, in the order dockerd's walk meets
    // them (by name at each level).
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    for part in dir_parts {
        let mut next = Vec::new();
        for dir in &dirs {
            for node in entries_matching(tree, dir, part).map_err(read)? {
                if node.kind == Kind::Dir {
                    next.push(
                        crate::layerfs::child(dir, &node.name, "a build context").map_err(read)?,
                    );
                }
            }
        }
        dirs = next;
    }
    let mut found = Vec::new();
    for dir in &dirs {
        for node in entries_matching(tree, dir, last).map_err(read)? {
            let rel = crate::layerfs::child(dir, &node.name, "a build context").map_err(read)?;
            let (rel, st) = if node.kind == Kind::Symlink {
                let path = String::from_utf8_lossy(&rel).into_owned();
                match resolve(tree, &clean(&path), keyword)? {
                    Some(resolved) => resolved,
                    // A link to nowhere: dockerd fails the step on it.
                    None => {
                        return Err(CopyError::Missing {
                            keyword: keyword.to_string(),
                            path,
                        })
                    }
                }
            } else {
                (rel, node.st)
            };
            found.push(Source {
                rel,
                st,
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

/// The entries of directory `dir` (not followed if it is a link) that `element` names: by
/// its wildcards, or by its name when it has none.
fn entries_matching(
    tree: &Tree,
    dir: &[u8],
    element: &str,
) -> Result<Vec<crate::layerfs::Node>, LayerFsError> {
    if !has_wildcard(element) {
        let name = std::ffi::OsString::from(element);
        let rel = crate::layerfs::child(dir, &name, "a build context")?;
        return Ok(tree
            .stat(&rel)?
            .map(|st| crate::layerfs::Node {
                kind: Kind::of(&st),
                name,
                st,
            })
            .into_iter()
            .collect());
    }
    let listing = tree.list(dir)?;
    Ok(listing
        .map(|l| l.nodes)
        .unwrap_or_default()
        .into_iter()
        .filter(|node| {
            crate::image::glob_match(element, &node.name.to_string_lossy()) == Some(true)
        })
        .collect())
}

/// Most symlinks one source may pass through, as Go's `FollowSymlinkInScope` allows.
const MAX_LINKS: usize = 255;

/// Most path elements one resolution walks (each one openat2 beneath the root, never a
/// directory listing), so that a hostile context's links cannot make a step walk without
/// end.
const MAX_STEPS: usize = 4096;

/// `parts` (cleaned) resolved in `tree`, every symlink on the way followed inside it: a
/// target starting with `/` starts again at the root, and `..` never climbs past it.
/// `None` when nothing is there (a dangling link included).
fn resolve(
    tree: &Tree,
    parts: &[String],
    keyword: &str,
) -> Result<Option<(Vec<u8>, libc::stat)>, CopyError> {
    let read = |source| CopyError::Read {
        keyword: keyword.to_string(),
        source,
    };
    let too_many = || CopyError::Links {
        keyword: keyword.to_string(),
        path: parts.join("/"),
    };
    // The elements still to walk, the next one last.
    let mut todo: Vec<Vec<u8>> = parts.iter().rev().map(|p| p.as_bytes().to_vec()).collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let (mut links, mut steps) = (0, 0);
    let mut st = None;
    while let Some(part) = todo.pop() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(too_many());
        }
        if part == b".." {
            done.pop();
            st = None;
            continue;
        }
        done.push(part);
        let rel = done.join(&b'/');
        let Some(found) = tree.stat(&rel).map_err(read)? else {
            return Ok(None);
        };
        if Kind::of(&found) != Kind::Symlink {
            st = Some(found);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(too_many());
        }
        let Some(target) = tree.read_link(&rel).map_err(read)? else {
            return Ok(None);
        };
        done.pop();
        let target = target.as_bytes();
        if target.starts_with(b"/") {
            done.clear();
        }
        todo.extend(
            target
                .split(|&b| b == b'/')
                .filter(|p| !p.is_empty() && *p != b".")
                .rev()
                .map(<[u8]>::to_vec),
        );
        st = None;
    }
    let rel = done.join(&b'/');
    let st = match st {
        Some(st) => st,
        // Ended on `..` or a link to the root: look the place up again.
        None if rel.is_empty() => tree.stat_root().map_err(read)?,
        None => match tree.stat(&rel).map_err(read)? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    Ok(Some((rel, st)))
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
    fn symlinks_to_sources_are_followed_inside_the_tree() {
        let (dir, tree) = context();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
        };
        link("one.txt", "rel");
        link("/two.txt", "abs");
        link("../../../one.txt", "climb");
        link("app", "dirlink");
        link("dirlink/sub", "chain");
        link("loop2", "loop1");
        link("loop1", "loop2");
        link("nowhere", "dangling");
        link("..", "app/up");
        let one = |pattern: &str| {
            let mut s = sources(&tree, pattern, "COPY").unwrap();
            assert_eq!(s.len(), 1, "{pattern}");
            let s = s.remove(0);
            (
                String::from_utf8(s.rel).unwrap(),
                String::from_utf8(s.name).unwrap(),
                Kind::of(&s.st),
            )
        };
        // A file keeps the link's name and reads the target.
        assert_eq!(one("rel"), ("one.txt".into(), "rel".into(), Kind::File));
        assert_eq!(one("abs"), ("two.txt".into(), "abs".into(), Kind::File));
        assert_eq!(one("climb"), ("one.txt".into(), "climb".into(), Kind::File));
        // A directory, through links on the way too.
        assert_eq!(one("dirlink"), ("app".into(), "dirlink".into(), Kind::Dir));
        assert_eq!(one("chain"), ("app/sub".into(), "chain".into(), Kind::Dir));
        assert_eq!(
            one("dirlink/sub/b.txt"),
            ("app/sub/b.txt".into(), "b.txt".into(), Kind::File)
        );
        assert_eq!(
            one("app/up/two.txt"),
            ("two.txt".into(), "two.txt".into(), Kind::File)
        );
        // Wildcards match real paths (a linked directory is not walked into), and a match
        // that is a link is followed; one to nowhere fails the step.
        let got: Vec<(String, String)> = sources(&tree, "dirl*", "COPY")
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    String::from_utf8(s.rel).unwrap(),
                    String::from_utf8(s.name).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, [("app".to_string(), "dirlink".to_string())]);
        assert!(matches!(
            sources(&tree, "dirlink/*", "COPY"),
            Err(CopyError::NoMatch { .. })
        ));
        assert!(matches!(
            sources(&tree, "dang*", "COPY"),
            Err(CopyError::Missing { .. })
        ));
        // Refused: a link to nowhere, a loop.
        assert!(matches!(
            sources(&tree, "dangling", "COPY"),
            Err(CopyError::Missing { .. })
        ));
        let e = sources(&tree, "loop1", "COPY").err().unwrap();
        assert_eq!(
            e.to_string(),
            "COPY failed: forbidden path outside the build context: loop1 ()"
        );
        // What a followed directory link writes: the directory's contents.
        let srcs = sources(&tree, "chain", "COPY").unwrap();
        let place = placement(&[], "/c/", 1, false, "COPY").unwrap();
        let mut out = Vec::new();
        compose_all(&mut out, &[], &tree, &srcs, &[], &place, None, "COPY").unwrap();
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["c/", "c/b.txt"]);
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
        // A source that is a symlink is followed inside the tree: `link` (to /etc/passwd)
        // finds no /etc/passwd in the context, so it is missing, as in dockerd.
        let e = sources(&tree, "link", "COPY").err().unwrap();
        assert!(matches!(e, CopyError::Missing { .. }), "{e}");
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
        // Wildcards in any element, matched against real paths.
        let rels = |pattern: &str| -> Vec<String> {
            sources(&tree, pattern, "COPY")
                .unwrap()
                .into_iter()
                .map(|s| String::from_utf8(s.rel).unwrap())
                .collect()
        };
        assert_eq!(rels("a*/sub/*.txt"), ["app/sub/b.txt"]);
        assert_eq!(rels("*/a.txt"), ["app/a.txt"]);
        assert_eq!(rels("*/*"), ["app/a.txt", "app/sub"]);
        assert!(matches!(
            sources(&tree, "a*/b", "COPY"),
            Err(CopyError::NoMatch { .. })
        ));
        // The cache's key follows the contents, not the directory's own times.
        let k1 = sources_key(&tree, &sources(&tree, ".", "COPY").unwrap(), "COPY").unwrap();
        std::fs::write(dir.join("one.txt"), "changed").unwrap();
        let k2 = sources_key(&tree, &sources(&tree, ".", "COPY").unwrap(), "COPY").unwrap();
        assert!(k1.starts_with("dir:") && k1 != k2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
