//! Tar streams of layer stacks: `docker export` (a container's whole merged file system:
//! its image and its changes, whiteouts applied) and the new layer of `docker commit` (the
//! upper dir alone, overlayfs's whiteouts turned into the image spec's `.wh.` entries).
//!
//! Entries are written as they are read, parents first, siblings by name; nothing is built
//! in memory but the current path's sibling lists. A regular file is opened only after it
//! was listed, by openat2 below its layer's root, and written with the size of what was
//! opened (a file a running guest truncates meanwhile is padded with zeros, one it extends
//! is cut: a tar entry's size is fixed by its header). Symlinks are written as symlinks,
//! devices and FIFOs as headers: nothing is followed or opened but regular files. Files
//! with more than one link are written once, then as hard links to their first path.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{carried_xattrs, child, merge, Kind, LayerFsError, Merged, Tree};

/// The image spec's whiteout prefix and opaque marker.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What a layer stream held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerSummary {
    /// Entries written (whiteouts and opaque markers included): 0 is an empty layer.
    pub entries: u64,
    /// Upper entries whose name starts with `.wh.`, which a layer cannot carry (it would
    /// read them as whiteouts): left out.
    pub skipped_names: u64,
}

/// Writes a stack's entries as tar, remembering hard links.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    /// (device, inode) of files with several links → the path first written.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    /// The owner every entry is written with instead of its own (COPY --chown).
    owner: Option<(u32, u32)>,
}

fn header(kind: tar::EntryType, st: &libc::stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

/// Reads exactly `left` bytes of `inner`, zeros after its end.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

impl<W: Write> Writer<W> {
    fn new(out: W) -> Self {
        Writer {
            tar: tar::Builder::new(out),
            links: HashMap::new(),
            entries: 0,
            owner: None,
        }
    }

    /// A header for an entry examined as `st`, with the writer's owner if it has one.
    fn head(&self, kind: tar::EntryType, st: &libc::stat) -> tar::Header {
        let mut h = header(kind, st);
        if let Some((uid, gid)) = self.owner {
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(gid));
        }
        h
    }

    /// A directory entry named `name` with `st`'s mode, owner and time.
    fn dir(&mut self, name: &[u8], st: &libc::stat) -> Result<(), LayerFsError> {
        let mut h = self.head(tar::EntryType::Directory, st);
        let mut name = name.to_vec();
        if !name.ends_with(b"/") {
            name.push(b'/');
        }
        append_named(&mut self.tar, &mut h, &name, io::empty()).map_err(LayerFsError::Write)
    }

    /// An empty regular file (a whiteout or an opaque marker) at `rel`.
    fn marker(&mut self, rel: &[u8], st: &libc::stat) -> Result<(), LayerFsError> {
        let mut h = header(tar::EntryType::Regular, st);
        append_named(&mut self.tar, &mut h, rel, io::empty()).map_err(LayerFsError::Write)?;
        self.entries += 1;
        Ok(())
    }

    /// The entry `rel` of `tree`, as it was listed (`kind`, `st`), named `name` in the
    /// archive. An entry that went away or changed kind since it was listed is left out.
    fn entry(
        &mut self,
        tree: &Tree,
        rel: &[u8],
        name: &[u8],
        kind: Kind,
        st: &libc::stat,
    ) -> Result<(), LayerFsError> {
        let write = LayerFsError::Write;
        match kind {
            Kind::Dir => self.dir(name, st)?,
            Kind::File => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        let mut h = self.head(tar::EntryType::Link, st);
                        let target = first.clone();
                        append_link(&mut self.tar, &mut h, name, &target).map_err(write)?;
                        self.entries += 1;
                        return Ok(());
                    }
                }
                let Some((file, now)) = tree.open_file(rel, st)? else {
                    return Ok(());
                };
                let xattrs = carried_xattrs(&file);
                if !xattrs.is_empty() {
                    let keys: Vec<(String, Vec<u8>)> = xattrs
                        .into_iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v))
                        .collect();
                    self.tar
                        .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), &v[..])))
                        .map_err(write)?;
                }
                let size = u64::try_from(now.st_size).unwrap_or(0);
                let mut h = self.head(tar::EntryType::Regular, &now);
                h.set_size(size);
                let data = Exactly {
                    inner: file.take(size),
                    left: size,
                };
                append_named(&mut self.tar, &mut h, name, data).map_err(write)?;
                if st.st_nlink > 1 {
                    self.links.insert(key, name.to_vec());
                }
            }
            Kind::Symlink => {
                let Some(target) = tree.read_link(rel)? else {
                    return Ok(());
                };
                let mut h = self.head(tar::EntryType::Symlink, st);
                append_link(&mut self.tar, &mut h, name, target.as_bytes()).map_err(write)?;
            }
            Kind::Fifo | Kind::Char | Kind::Block => {
                let entry = match kind {
                    Kind::Fifo => tar::EntryType::Fifo,
                    Kind::Char => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                };
                let mut h = self.head(entry, st);
                if kind != Kind::Fifo {
                    h.set_device_major(libc::major(st.st_rdev)).map_err(write)?;
                    h.set_device_minor(libc::minor(st.st_rdev)).map_err(write)?;
                }
                append_named(&mut self.tar, &mut h, name, io::empty()).map_err(write)?;
            }
            // Sockets live only while their process does (Docker leaves them out too);
            // whiteouts are the caller's to translate.
            Kind::Socket | Kind::Whiteout => return Ok(()),
        }
        self.entries += 1;
        Ok(())
    }

    fn finish(self) -> Result<u64, LayerFsError> {
        let entries = self.entries;
        let mut out = self.tar.into_inner().map_err(LayerFsError::Write)?;
        out.flush().map_err(LayerFsError::Write)?;
        Ok(entries)
    }
}

/// Appends `h` named `name` byte for byte: the tar crate would normalise a path (`./a` would
/// become `a`, and `docker cp`'s archives of `dir/.` must start with `./`: the CLI rebases
/// them on it). A name too long for the header goes through the tar crate's long names,
/// with a PAX `path` record carrying the exact bytes when normalising would change them.
fn append_named<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &[u8],
    data: impl Read,
) -> io::Result<()> {
    let slot = &mut h.as_old_mut().name;
    if name.len() <= slot.len() {
        slot.fill(0);
        slot[..name.len()].copy_from_slice(name);
        h.set_cksum();
        return tar.append(h, data);
    }
    let mut normal = name.strip_prefix(b"./").unwrap_or(name);
    while let Some(rest) = normal.strip_prefix(b"/") {
        normal = rest;
    }
    if normal.len() != name.len() {
        tar.append_pax_extensions([("path", name)])?;
    }
    tar.append_data(h, Path::new(std::ffi::OsStr::from_bytes(normal)), data)
}

/// A symlink or hard link entry (`h` says which) whose target is written byte for byte (the
/// tar crate's `append_link` normalises it as a path: `/` would become `//`, `./x` `x`), in
/// a GNU long-link entry when it does not fit the header.
fn append_link<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut tar::Header,
    name: &[u8],
    target: &[u8],
) -> io::Result<()> {
    let slot_len = h.as_old().linkname.len();
    if target.len() > slot_len {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongLink);
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(target.len() as u64 + 1);
        long.set_cksum();
        tar.append(&long, target.chain(&[0u8][..]))?;
    }
    let slot = &mut h.as_old_mut().linkname;
    slot.fill(0);
    let n = target.len().min(slot_len);
    slot[..n].copy_from_slice(&target[..n]);
    append_named(tar, h, name, io::empty())
}

/// `docker export`: the merged file system of `stack` (topmost first: the container's upper
/// dir, then its image's layers) as a tar stream.
pub fn export(stack: &[Tree], out: impl Write) -> Result<(), LayerFsError> {
    let what = stack.first().map_or("the container", |t| t.what);
    let all: Vec<usize> = (0..stack.len()).collect();
    let mut w = Writer::new(out);
    let mut frames: Vec<(Vec<u8>, std::vec::IntoIter<Merged>)> =
        vec![(Vec::new(), merge(stack, b"", &all)?.into_iter())];
    while let Some((rel, entries)) = frames.last_mut() {
        let Some(m) = entries.next() else {
            frames.pop();
            continue;
        };
        let path = child(rel, &m.name, what)?;
        let Some(tree) = stack.get(m.layer) else {
            continue;
        };
        w.entry(tree, &path, &path, m.kind, &m.st)?;
        if m.kind == Kind::Dir {
            let below = merge(stack, &path, &m.dirs)?;
            frames.push((path, below.into_iter()));
        }
    }
    w.finish()?;
    Ok(())
}

/// The layer `docker commit` adds: every entry of `upper` (an overlayfs upper dir), a
/// whiteout as `.wh.<name>`, an opaque directory followed by its `.wh..wh..opq`.
pub fn layer(upper: &Tree, out: impl Write) -> Result<LayerSummary, LayerFsError> {
    let mut w = Writer::new(out);
    let mut summary = LayerSummary::default();
    let Some(root) = upper.list(b"")? else {
        w.finish()?;
        return Ok(summary);
    };
    let mut frames = vec![(Vec::new(), root.nodes.into_iter())];
    while let Some((rel, nodes)) = frames.last_mut() {
        let Some(node) = nodes.next() else {
            frames.pop();
            continue;
        };
        if node.name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            summary.skipped_names += 1;
            continue;
        }
        let path = child(rel, &node.name, upper.what)?;
        match node.kind {
            Kind::Whiteout => {
                let mut name = WHITEOUT_PREFIX.to_vec();
                name.extend_from_slice(node.name.as_bytes());
                let marker = child(rel, std::ffi::OsStr::from_bytes(&name), upper.what)?;
                w.marker(&marker, &node.st)?;
            }
            Kind::Dir => {
                let Some(listing) = upper.list(&path)? else {
                    continue;
                };
                w.entry(upper, &path, &path, node.kind, &node.st)?;
                if listing.opaque {
                    let marker = child(&path, OPAQUE_MARKER.as_ref(), upper.what)?;
                    w.marker(&marker, &node.st)?;
                }
                frames.push((path, listing.nodes.into_iter()));
            }
            kind => w.entry(upper, &path, &path, kind, &node.st)?,
        }
    }
    summary.entries = w.finish()?;
    Ok(summary)
}

/// `docker cp`'s archive of one entry of `tree`: `rel` (`""` for the tree's root), examined
/// as `st`, written under the name `name` (the archive's entries start with it, as dockerd
/// rebases them), and for a directory everything below it, parents first. The tree is one
/// directory, not a stack (a container's mounted root, where overlayfs did the merging).
pub fn subtree(
    tree: &Tree,
    rel: &[u8],
    st: &libc::stat,
    name: &[u8],
    out: impl Write,
) -> Result<(), LayerFsError> {
    let mut c = Composer::new(out, None);
    c.tree(tree, rel, st, name)?;
    c.finish()?;
    Ok(())
}

/// A tar stream put together from entries of several trees, each under a name of the
/// caller's (the builder's COPY and ADD layers: the destination's parents, then each
/// source).
pub struct Composer<W: Write>(Writer<W>);

impl<W: Write> Composer<W> {
    /// Entries from [`Composer::tree`] are written with `owner` (uid, gid) when given.
    pub fn new(out: W, owner: Option<(u32, u32)>) -> Self {
        let mut w = Writer::new(out);
        w.owner = owner;
        Composer(w)
    }

    /// A directory entry named `name` with `st`'s mode, times and owner (never the
    /// composer's: a destination's parents keep their own).
    pub fn dir(&mut self, name: &[u8], st: &libc::stat) -> Result<(), LayerFsError> {
        let owner = self.0.owner.take();
        let done = self.0.dir(name, st);
        self.0.owner = owner;
        done?;
        self.0.entries += 1;
        Ok(())
    }

    /// The entry `rel` of `tree` (examined as `st`) named `name`, and for a directory
    /// everything below it, parents first.
    pub fn tree(
        &mut self,
        tree: &Tree,
        rel: &[u8],
        st: &libc::stat,
        name: &[u8],
    ) -> Result<(), LayerFsError> {
        let w = &mut self.0;
        let kind = Kind::of(st);
        w.entry(tree, rel, name, kind, st)?;
        if kind == Kind::Dir {
            if let Some(listing) = tree.list(rel)? {
                let mut frames = vec![(rel.to_vec(), name.to_vec(), listing.nodes.into_iter())];
                while let Some((rel, name, nodes)) = frames.last_mut() {
                    let Some(node) = nodes.next() else {
                        frames.pop();
                        continue;
                    };
                    let path = child(rel, &node.name, tree.what)?;
                    let shown = child(name, &node.name, tree.what)?;
                    w.entry(tree, &path, &shown, node.kind, &node.st)?;
                    if node.kind == Kind::Dir {
                        if let Some(below) = tree.list(&path)? {
                            frames.push((path, shown, below.nodes.into_iter()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the stream; returns how many entries it holds.
    pub fn finish(self) -> Result<u64, LayerFsError> {
        self.0.finish()
    }
}
