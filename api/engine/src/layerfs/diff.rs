//! `docker diff`: what a container's writable layer changed in its image's file system.
//!
//! The answer is the one Debian's dockerd gives with overlay2 (which compares the
//! container's whole root with its image's, `archive.ChangesDirs`), computed from the upper
//! dir alone, walked once next to the image's merged view of the same directories:
//! - an upper entry the image does not have is added (so is everything below it);
//! - an upper entry the image has is modified when its type, mode, owner or device differ,
//!   or, for a non-directory, its size, mtime or file capability;
//! - a whiteout of a name the image has is a deletion; so is every name of the image's
//!   directory that an opaque upper directory (or one below it) does not have;
//! - a directory the image has is modified when anything inside it changed.
//!
//! Entries come parents first, siblings by name (dockerd's order is its map's).

use std::iter::Peekable;
use std::os::unix::ffi::OsStrExt;

use super::{child, merge, Kind, LayerFsError, Merged, Node, Tree};

/// Docker's change kinds (the numbers are the API's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Modified = 0,
    Added = 1,
    Deleted = 2,
}

/// One line of `docker diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Absolute inside the container (`/etc/passwd`).
    pub path: String,
    pub kind: ChangeKind,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{k} {}", self.path)
    }
}

/// A directory of the upper dir being walked, next to the image's view of it.
struct Frame {
    rel: Vec<u8>,
    upper: Peekable<std::vec::IntoIter<Node>>,
    lower: Peekable<std::vec::IntoIter<Merged>>,
    /// The upper directory (or one above it) is opaque: the image's names it lacks are gone.
    replaces: bool,
    /// Where this directory's own "modified" line sits in the output, when it is only due
    /// if something below it changed.
    tentative: Option<usize>,
}

/// The changes `upper` makes to the image whose layers are `lowers` (topmost first).
pub fn changes(upper: &Tree, lowers: &[Tree]) -> Result<Vec<Change>, LayerFsError> {
    let mut out = Vec::new();
    let Some(root) = upper.list(b"")? else {
        return Ok(out);
    };
    let all: Vec<usize> = (0..lowers.len()).collect();
    let mut stack = vec![Frame {
        rel: Vec::new(),
        upper: root.nodes.into_iter().peekable(),
        lower: merge(lowers, b"", &all)?.into_iter().peekable(),
        replaces: root.opaque,
        tentative: None,
    }];
    while let Some(frame) = stack.last_mut() {
        let order = match (frame.upper.peek(), frame.lower.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(std::cmp::Ordering::Less),
            (None, Some(_)) => Some(std::cmp::Ordering::Greater),
            (Some(u), Some(l)) => Some(u.name.as_bytes().cmp(l.name.as_bytes())),
        };
        let Some(order) = order else {
            let done = stack.pop().expect("the frame just looked at");
            if let Some(at) = done.tentative {
                if out.len() == at + 1 {
                    out.pop();
                }
            }
            continue;
        };
        let (node, image) = match order {
            std::cmp::Ordering::Less => (frame.upper.next(), None),
            std::cmp::Ordering::Equal => (frame.upper.next(), frame.lower.next()),
            std::cmp::Ordering::Greater => (None, frame.lower.next()),
        };
        let rel = match (&node, &image) {
            (Some(n), _) => child(&frame.rel, &n.name, upper.what)?,
            (None, Some(m)) => child(&frame.rel, &m.name, upper.what)?,
            (None, None) => continue,
        };
        let replaces = frame.replaces;
        let Some(node) = node else {
            // Only in the image: gone if an opaque directory replaced its parent.
            if replaces {
                out.push(change(&rel, ChangeKind::Deleted));
            }
            continue;
        };
        match node.kind {
            Kind::Whiteout => {
                if image.is_some() {
                    out.push(change(&rel, ChangeKind::Deleted));
                }
            }
            Kind::Dir => {
                let Some(listing) = upper.list(&rel)? else {
                    continue;
                };
                let (tentative, lower) = match &image {
                    None => {
                        out.push(change(&rel, ChangeKind::Added));
                        (None, Vec::new())
                    }
                    Some(m) if m.kind == Kind::Dir => {
                        let at = out.len();
                        out.push(change(&rel, ChangeKind::Modified));
                        let tentative = (!differs(&m.st, &node.st)).then_some(at);
                        (tentative, merge(lowers, &rel, &m.dirs)?)
                    }
                    Some(_) => {
                        out.push(change(&rel, ChangeKind::Modified));
                        (None, Vec::new())
                    }
                };
                stack.push(Frame {
                    rel,
                    upper: listing.nodes.into_iter().peekable(),
                    lower: lower.into_iter().peekable(),
                    replaces: replaces || listing.opaque,
                    tentative,
                });
            }
            _ => match &image {
                None => out.push(change(&rel, ChangeKind::Added)),
                Some(m) => {
                    if differs(&m.st, &node.st)
                        || (node.kind == Kind::File
                            && capability(upper, &rel, &node.st)
                                != lowers
                                    .get(m.layer)
                                    .map(|t| capability(t, &rel, &m.st))
                                    .unwrap_or_default())
                    {
                        out.push(change(&rel, ChangeKind::Modified));
                    }
                }
            },
        }
    }
    Ok(out)
}

fn change(rel: &[u8], kind: ChangeKind) -> Change {
    Change {
        path: format!("/{}", String::from_utf8_lossy(rel)),
        kind,
    }
}

/// dockerd's `statDifferent`: type and mode, owner, device; and for what was not a
/// directory, size and mtime (the same second, and the same nanoseconds unless either has
/// none: tar keeps no nanoseconds).
fn differs(old: &libc::stat, new: &libc::stat) -> bool {
    let same_time = old.st_mtime == new.st_mtime
        && (old.st_mtime_nsec == new.st_mtime_nsec
            || old.st_mtime_nsec == 0
            || new.st_mtime_nsec == 0);
    old.st_mode != new.st_mode
        || old.st_uid != new.st_uid
        || old.st_gid != new.st_gid
        || old.st_rdev != new.st_rdev
        || (old.st_mode & libc::S_IFMT != libc::S_IFDIR
            && (!same_time || old.st_size != new.st_size))
}

/// A regular file's `security.capability`, read from the file itself.
fn capability(tree: &Tree, rel: &[u8], st: &libc::stat) -> Option<Vec<u8>> {
    let (file, _) = tree.open_file(rel, st).ok().flatten()?;
    super::get_xattr(&file, "security.capability")
}
