//! The device driven like a hostile guest would: FUSE messages in descriptor chains of
//! virtio-queue's mock queue, served by the real server over a temporary directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, GetxattrIn, InHeader, InitIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut,
    OutHeader, ReadIn, SetattrIn, SetxattrIn, WriteIn, WriteOut, ROOT_ID,
};
use fuse_backend_rs::api::filesystem::SetattrValid;
use fuse_backend_rs::api::server::Server;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::request::{process_queue, RequestError, MAX_REPLY};
use super::*;

const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const MEM_SIZE: usize = 8 << 20;
const DATA_START: u64 = 1 << 20;
const REPLY_LEN: u32 = 64 << 10;
const QUEUE_LEN: u16 = 256;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One buffer of a chain: (guest address, length, device-writable).
type Buf = (u64, u32, bool);

/// A guest with one request queue and a FUSE session over `dir`.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    queue: Queue,
    server: Server<ConfinedFs>,
    next_desc: u16,
    next_used: u16,
    unique: u64,
}

/// A reply: the used length and the bytes of the reply buffer.
struct Reply {
    used: u32,
    bytes: Vec<u8>,
}

impl Reply {
    fn header(&self) -> OutHeader {
        *OutHeader::from_slice(&self.bytes[..16]).unwrap()
    }
    fn errno(&self) -> i32 {
        -self.header().error
    }
    fn body<T: ByteValued>(&self) -> T {
        assert_eq!(self.errno(), 0, "the request failed");
        *T::from_slice(&self.bytes[16..16 + std::mem::size_of::<T>()]).unwrap()
    }
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap, dir: &Path, options: ShareOptions) -> Self {
        // The rings at fixed places (the mock queue's layout overlaps its rings past half
        // the queue size, and these tests go round the rings).
        let mut queue = Queue::new(QUEUE_LEN).unwrap();
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let fs = ConfinedFs::new(dir, options).unwrap();
        Guest {
            mem,
            queue,
            server: Server::new(fs),
            next_desc: 0,
            next_used: 0,
            unique: 1,
        }
    }

    /// Puts one chain on the available ring.
    fn add_chain(&mut self, bufs: &[Buf]) {
        let base = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let last = i + 1 == bufs.len();
                let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
                let next = if last { 0 } else { base + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        for (i, desc) in descs.into_iter().enumerate() {
            let addr = GuestAddress(DESC_TABLE + 16 * u64::from(base + i as u16));
            self.mem.write_obj(desc, addr).unwrap();
        }
        let avail = GuestAddress(AVAIL_RING);
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % QUEUE_LEN));
        self.mem.write_obj(base, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        // Chains never wrap around the end of the descriptor table.
        self.next_desc = base + bufs.len() as u16;
        if self.next_desc > QUEUE_LEN - 8 {
            self.next_desc = 0;
        }
    }

    fn process(&mut self) -> Result<bool, RequestError> {
        process_queue(
            &mut self.queue,
            self.mem,
            &self.server,
            &AtomicBool::new(false),
        )
    }

    /// The next used element: (descriptor head, length).
    fn next_used(&mut self) -> (u32, u32) {
        let slot = u64::from(self.next_used % QUEUE_LEN);
        let addr = GuestAddress(USED_RING + 4 + 8 * slot);
        self.next_used = self.next_used.wrapping_add(1);
        (
            self.mem.read_obj(addr).unwrap(),
            self.mem.read_obj(addr.unchecked_add(4)).unwrap(),
        )
    }

    /// Sends raw chain buffers and returns the reply read from the first writable buffer.
    fn send_chain(&mut self, bufs: &[Buf]) -> Reply {
        // Poison the reply buffer so stale bytes never pass for a reply.
        let reply = bufs.iter().find(|b| b.2).copied();
        if let Some((addr, len, _)) = reply {
            if (addr as usize) < MEM_SIZE {
                let len = (len as usize).min(MEM_SIZE - addr as usize).min(1 << 20);
                self.mem
                    .write_slice(&vec![0xa5; len], GuestAddress(addr))
                    .unwrap();
            }
        }
        let head = self.next_desc;
        self.add_chain(bufs);
        self.process().unwrap();
        let (id, used) = self.next_used();
        assert_eq!(id, u32::from(head));
        let mut bytes = vec![0u8; used as usize];
        if let Some((addr, _, _)) = reply {
            if used > 0 {
                self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            }
        }
        Reply { used, bytes }
    }

    /// Sends a FUSE request: header (length, unique filled in) and body.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut msg = header.as_slice().to_vec();
        msg.extend_from_slice(body);
        self.mem
            .write_slice(&msg, GuestAddress(DATA_START))
            .unwrap();
        let reply_addr = DATA_START + (2 << 20);
        let reply = self.send_chain(&[
            (DATA_START, msg.len() as u32, false),
            (reply_addr, REPLY_LEN, true),
        ]);
        if reply.used > 0 {
            assert_eq!(
                reply.header().unique,
                self.unique,
                "reply to the wrong request"
            );
            assert_eq!(reply.header().len, reply.used);
        }
        reply
    }

    fn init(&mut self) {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags: 0,
        };
        let reply = self.request(Opcode::Init as u32, 0, init.as_slice());
        assert_eq!(reply.errno(), 0);
        let out: fuse_backend_rs::abi::fuse_abi::InitOut = reply.body();
        assert_eq!(out.major, 7);
    }

    fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut, i32> {
        let reply = self.request(Opcode::Lookup as u32, parent, &cstr(name));
        match reply.errno() {
            0 => Ok(reply.body()),
            e => Err(e),
        }
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let reply = self.request(Opcode::Open as u32, nodeid, open.as_slice());
        match reply.errno() {
            0 => Ok(reply.body::<OpenOut>().fh),
            e => Err(e),
        }
    }

    fn mknod(&mut self, name: &[u8], mode: u32, rdev: u32) -> i32 {
        let args = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend(cstr(name));
        self.request(Opcode::Mknod as u32, ROOT_ID, &body).errno()
    }

    fn create(&mut self, name: &[u8], flags: i32, mode: u32) -> Result<(EntryOut, u64), i32> {
        let args = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend(cstr(name));
        let reply = self.request(Opcode::Create as u32, ROOT_ID, &body);
        match reply.errno() {
            0 => {
                let entry: EntryOut = reply.body();
                let open = *OpenOut::from_slice(
                    &reply.bytes[16 + std::mem::size_of::<EntryOut>()..][..16],
                )
                .unwrap();
                Ok((entry, open.fh))
            }
            e => Err(e),
        }
    }

    fn setattr(&mut self, nodeid: u64, valid: SetattrValid, mode: u32, size: u64) -> i32 {
        let args = SetattrIn {
            valid: valid.bits(),
            mode,
            size,
            ..Default::default()
        };
        self.request(Opcode::Setattr as u32, nodeid, args.as_slice())
            .errno()
    }
}

fn cstr(name: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.push(0);
    v
}

fn share() -> TempDir {
    let dir = TempDir::new_with_prefix("/tmp/berth-fs-test-").unwrap();
    std::fs::write(dir.as_path().join("hello.txt"), b"hello").unwrap();
    dir
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn config_space_holds_the_tag_and_queue_count() {
    let dir = share();
    let fs = Fs::new(&FsConfig {
        tag: "rootfs".into(),
        dir: dir.as_path().to_path_buf(),
        options: ShareOptions::default(),
    })
    .unwrap();
    let mut cfg = [0xffu8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"rootfs");
    assert!(cfg[6..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queues().len(), 1 + REQUEST_QUEUES);
    assert_ne!(fs.avail_features() & RING_INDIRECT_DESC, 0);
}

#[test]
fn bad_tags_and_dirs_are_refused() {
    let dir = share();
    let cfg = |tag: &str, dir: &Path| FsConfig {
        tag: tag.into(),
        dir: dir.to_path_buf(),
        options: ShareOptions::default(),
    };
    assert!(Fs::new(&cfg("", dir.as_path())).is_err());
    assert!(Fs::new(&cfg(&"x".repeat(37), dir.as_path())).is_err());
    assert!(Fs::new(&cfg("a\0b", dir.as_path())).is_err());
    assert!(Fs::new(&cfg(&"x".repeat(36), dir.as_path())).is_ok());
    // A regular file is a single-file share; nothing else but a directory is one.
    assert!(Fs::new(&cfg("t", &dir.as_path().join("hello.txt"))).is_ok());
    let fifo = std::ffi::CString::new(dir.as_path().join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(Fs::new(&cfg("t", &dir.as_path().join("fifo"))).is_err());
    assert!(Fs::new(&cfg("t", Path::new("/no/such/dir"))).is_err());
}

#[test]
fn init_lookup_and_read_through_the_queue() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let entry = g.lookup(ROOT_ID, b"hello.txt").unwrap();
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.size, 5);
    assert_eq!(g.lookup(ROOT_ID, b"missing").err(), Some(libc::ENOENT));
    let fh = g.open(entry.nodeid, libc::O_RDONLY).unwrap();
    let read = ReadIn {
        fh,
        offset: 1,
        size: 100,
        ..Default::default()
    };
    let reply = g.request(Opcode::Read as u32, entry.nodeid, read.as_slice());
    assert_eq!(reply.errno(), 0);
    assert_eq!(&reply.bytes[16..], b"ello");
    // The metrics' view of the ring: five requests made available and taken, a sixth
    // waiting, and (with EVENT_IDX) the device asks to be notified past the fifth.
    g.queue.set_event_idx(true);
    g.add_chain(&[]);
    let (driver, device, _) = crate::virtio::ring_positions(&g.queue, &m);
    assert_eq!((driver, device), (6, 5));
    g.queue.enable_notification(&m).unwrap();
    assert_eq!(crate::virtio::ring_positions(&g.queue, &m), (6, 5, 5));
}

#[test]
fn create_write_and_the_host_sees_it() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let (entry, fh) = g.create(b"new", libc::O_WRONLY, 0o640).unwrap();
    let data = b"written by the guest";
    let args = WriteIn {
        fh,
        offset: 0,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut body = args.as_slice().to_vec();
    body.extend_from_slice(data);
    let reply = g.request(Opcode::Write as u32, entry.nodeid, &body);
    assert_eq!(reply.body::<WriteOut>().size, data.len() as u32);
    let path = dir.as_path().join("new");
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
    // An existing name without O_EXCL is opened, not recreated.
    let (again, _) = g.create(b"new", libc::O_RDWR, 0o600).unwrap();
    assert_eq!(again.nodeid, entry.nodeid);
    assert_eq!(
        g.create(b"new", libc::O_RDWR | libc::O_EXCL, 0o600).err(),
        Some(libc::EEXIST)
    );
}

#[test]
fn malformed_messages_get_error_replies() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let reply_addr = DATA_START + (2 << 20);
    // A truncated header: 10 bytes where 40 are needed.
    m.write_slice(&[7u8; 10], GuestAddress(DATA_START)).unwrap();
    let r = g.send_chain(&[(DATA_START, 10, false), (reply_addr, 4096, true)]);
    assert_eq!(
        (r.used, r.errno(), r.header().unique),
        (16, libc::EINVAL, 0)
    );
    // No request bytes at all.
    let r = g.send_chain(&[(reply_addr, 4096, true)]);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    // Garbage and undefined opcodes: ENOSYS, with the request's unique.
    for opcode in [9999, 7, 19, 50, u32::MAX] {
        let r = g.request(opcode, ROOT_ID, &[1, 2, 3]);
        assert_eq!(r.errno(), libc::ENOSYS, "opcode {opcode}");
    }
    // A header that claims more bytes than the chain has.
    let mut header = InHeader {
        len: 4000,
        opcode: Opcode::Lookup as u32,
        unique: 77,
        nodeid: ROOT_ID,
        ..Default::default()
    };
    m.write_slice(header.as_slice(), GuestAddress(DATA_START))
        .unwrap();
    let r = g.send_chain(&[(DATA_START, 48, false), (reply_addr, 4096, true)]);
    assert_eq!(
        (r.used, r.errno(), r.header().unique),
        (16, libc::EINVAL, 77)
    );
    // A body shorter than its fixed part (MKDIR without MkdirIn).
    header.opcode = Opcode::Mkdir as u32;
    header.len = 44;
    m.write_slice(header.as_slice(), GuestAddress(DATA_START))
        .unwrap();
    let r = g.send_chain(&[(DATA_START, 44, false), (reply_addr, 4096, true)]);
    assert_eq!(r.errno(), libc::EINVAL);
    // A name without its NUL.
    let r = g.request(Opcode::Lookup as u32, ROOT_ID, b"hello.txt");
    assert_eq!(r.errno(), libc::EINVAL);
    // Requests on inodes and handles the server never gave out.
    assert_ne!(g.lookup(12345, b"x").unwrap_err(), 0);
    let read = ReadIn {
        fh: 999,
        size: 10,
        ..Default::default()
    };
    assert_ne!(
        g.request(Opcode::Read as u32, ROOT_ID, read.as_slice())
            .errno(),
        0
    );
    // A reply buffer too small for any reply: the chain is returned empty.
    let r = g.send_chain(&[(DATA_START, 48, false), (reply_addr, 8, true)]);
    assert_eq!(r.used, 0);
    // The session still works.
    assert!(g.lookup(ROOT_ID, b"hello.txt").is_ok());
}

#[test]
fn buffers_outside_memory_or_too_large_are_refused() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let reply_addr = DATA_START + (2 << 20);
    let outside = MEM_SIZE as u64 + 0x1000;
    // The request outside guest memory: an error reply.
    let r = g.send_chain(&[(outside, 64, false), (reply_addr, 4096, true)]);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    // Straddling the end of memory.
    let r = g.send_chain(&[(MEM_SIZE as u64 - 16, 64, false), (reply_addr, 4096, true)]);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    // The reply buffer outside guest memory: nothing can be written.
    let r = g.send_chain(&[(DATA_START, 48, false), (outside, 4096, true)]);
    assert_eq!(r.used, 0);
    // Reply buffers and requests beyond the size caps (descriptors may alias each other,
    // so a small guest can offer huge buffers).
    let big = (MAX_REPLY / 2 + 4096) as u32;
    let r = g.send_chain(&[
        (DATA_START, 48, false),
        (reply_addr, big, true),
        (reply_addr, big, true),
    ]);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    let r = g.send_chain(&[
        (DATA_START, big, false),
        (DATA_START, big, false),
        (reply_addr, 4096, true),
    ]);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    assert!(g.lookup(ROOT_ID, b"hello.txt").is_ok());
}

#[test]
fn a_corrupt_ring_stops_the_queue() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    m.write_obj(1000u16, GuestAddress(AVAIL_RING + 2)).unwrap();
    assert!(matches!(g.process(), Err(RequestError::Queue(_))));
}

#[test]
fn names_stay_one_component() {
    let m = mem();
    let dir = share();
    std::fs::create_dir(dir.as_path().join("sub")).unwrap();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let sub = g.lookup(ROOT_ID, b"sub").unwrap().nodeid;
    for name in [&b".."[..], b".", b"", b"sub/..", b"../etc", b"/etc"] {
        assert_eq!(
            g.lookup(ROOT_ID, name).err(),
            Some(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(g.lookup(sub, name).err(), Some(libc::EINVAL), "{name:?}");
    }
    assert_eq!(
        g.lookup(ROOT_ID, &[b'a'; 256]).err(),
        Some(libc::ENAMETOOLONG)
    );
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mut body = mkdir.as_slice().to_vec();
    body.extend(cstr(b"../escaped"));
    assert_eq!(
        g.request(Opcode::Mkdir as u32, sub, &body).errno(),
        libc::EINVAL
    );
    assert!(!dir.as_path().join("escaped").exists());
    assert!(!dir.as_path().parent().unwrap().join("escaped").exists());
}

#[test]
fn symlinks_are_never_followed_by_the_host() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", root.join("rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    let mut g = Guest::new(&m, root, ShareOptions::default());
    g.init();
    for name in [&b"abs"[..], b"rel"] {
        let link = g.lookup(ROOT_ID, name).unwrap();
        assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        // A symlink inode is no directory to look into...
        assert_eq!(g.lookup(link.nodeid, b"etc").err(), Some(libc::ENOTDIR));
        // ...nor one to open or list.
        let open = OpenIn::default();
        let r = g.request(Opcode::Opendir as u32, link.nodeid, open.as_slice());
        assert_eq!(r.errno(), libc::ENOTDIR);
    }
    let link = g.lookup(ROOT_ID, b"passwd").unwrap();
    assert_eq!(
        g.open(link.nodeid, libc::O_RDONLY).err(),
        Some(libc::EACCES)
    );
    // Only the guest follows symlinks, by reading them.
    let r = g.request(Opcode::Readlink as u32, link.nodeid, &[]);
    assert_eq!(&r.bytes[16..], b"/etc/passwd");
    // Changing a symlink's mode or size is refused without touching the target.
    let before = std::fs::metadata("/etc/passwd").unwrap();
    assert_ne!(g.setattr(link.nodeid, SetattrValid::SIZE, 0, 0), 0);
    g.setattr(link.nodeid, SetattrValid::MODE, 0o777, 0);
    let after = std::fs::metadata("/etc/passwd").unwrap();
    assert_eq!((before.len(), before.mode()), (after.len(), after.mode()));
}

#[test]
fn a_symlink_swapped_in_after_lookup_changes_nothing() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    std::fs::create_dir(root.join("d")).unwrap();
    let mut g = Guest::new(&m, root, ShareOptions::default());
    g.init();
    let d = g.lookup(ROOT_ID, b"d").unwrap().nodeid;
    // The directory is replaced by a symlink to / between requests: the inode the guest
    // holds is the directory itself, wherever it went.
    std::fs::rename(root.join("d"), root.join("moved")).unwrap();
    std::os::unix::fs::symlink("/", root.join("d")).unwrap();
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mut body = mkdir.as_slice().to_vec();
    body.extend(cstr(b"made"));
    assert_eq!(g.request(Opcode::Mkdir as u32, d, &body).errno(), 0);
    assert!(root.join("moved/made").is_dir());
    assert!(!Path::new("/made").exists());
    assert_eq!(g.lookup(d, b"etc").err(), Some(libc::ENOENT));
}

#[test]
fn device_nodes_are_neither_created_nor_opened() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    let planted = test_gate::require(test_gate::root(), "planting a device node in a share") && {
        let path = CString::new(root.join("null").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; mknod only creates a file.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "mknod as root: {}", std::io::Error::last_os_error());
        true
    };
    let mut g = Guest::new(&m, root, ShareOptions::default());
    g.init();
    let chr = libc::S_IFCHR | 0o666;
    let blk = libc::S_IFBLK | 0o666;
    let dev = |major: u32, minor: u32| (major << 8) | minor;
    assert_eq!(g.mknod(b"mem", chr, dev(1, 1)), libc::EPERM);
    assert_eq!(g.mknod(b"sda", blk, dev(8, 0)), libc::EPERM);
    assert_eq!(g.mknod(b"zero", blk, 0), libc::EPERM);
    assert!(!root.join("mem").exists() && !root.join("sda").exists());
    assert_eq!(g.mknod(b"fifo", libc::S_IFIFO | 0o644, 0), 0);
    assert_eq!(g.mknod(b"sock", libc::S_IFSOCK | 0o644, 0), 0);
    assert_eq!(g.mknod(b"file", libc::S_IFREG | 0o644, 0), 0);
    // Opening a FIFO on the host would block the device: refused like devices.
    let fifo = g.lookup(ROOT_ID, b"fifo").unwrap().nodeid;
    assert_eq!(g.open(fifo, libc::O_RDONLY).err(), Some(libc::EACCES));
    if is_root() {
        // The overlayfs whiteout (0:0) names no device and may be created.
        assert_eq!(g.mknod(b"whiteout", libc::S_IFCHR, 0), 0);
    }
    if planted {
        let null = g.lookup(ROOT_ID, b"null").unwrap();
        assert_eq!(null.attr.mode & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(g.open(null.nodeid, libc::O_RDWR).err(), Some(libc::EACCES));
        assert_eq!(
            g.open(null.nodeid, libc::O_RDONLY).err(),
            Some(libc::EACCES)
        );
        assert_eq!(
            g.setattr(null.nodeid, SetattrValid::SIZE, 0, 0),
            libc::EINVAL
        );
        // CREATE of an existing device node without O_EXCL does not open it either.
        assert_eq!(
            g.create(b"null", libc::O_RDWR, 0o666).err(),
            Some(libc::EACCES)
        );
    }
}

#[test]
fn read_only_shares_refuse_every_change() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    let mut g = Guest::new(
        &m,
        root,
        ShareOptions {
            read_only: true,
            ..ShareOptions::default()
        },
    );
    g.init();
    let hello = g.lookup(ROOT_ID, b"hello.txt").unwrap().nodeid;
    assert!(g.open(hello, libc::O_RDONLY).is_ok());
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(g.open(hello, flags).err(), Some(libc::EROFS), "{flags:#o}");
    }
    assert_eq!(
        g.create(b"new", libc::O_WRONLY, 0o644).err(),
        Some(libc::EROFS)
    );
    assert_eq!(g.mknod(b"fifo", libc::S_IFIFO | 0o644, 0), libc::EROFS);
    assert_eq!(g.setattr(hello, SetattrValid::MODE, 0o777, 0), libc::EROFS);
    assert_eq!(g.setattr(hello, SetattrValid::SIZE, 0, 0), libc::EROFS);
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mut body = mkdir.as_slice().to_vec();
    body.extend(cstr(b"d"));
    assert_eq!(
        g.request(Opcode::Mkdir as u32, ROOT_ID, &body).errno(),
        libc::EROFS
    );
    assert_eq!(
        g.request(Opcode::Unlink as u32, ROOT_ID, &cstr(b"hello.txt"))
            .errno(),
        libc::EROFS
    );
    let mut body = cstr(b"l");
    body.extend(cstr(b"target"));
    assert_eq!(
        g.request(Opcode::Symlink as u32, ROOT_ID, &body).errno(),
        libc::EROFS
    );
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read_dir(root).unwrap().count(), 1);
}

#[test]
fn only_user_xattrs_are_visible_or_writable() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let hello = g.lookup(ROOT_ID, b"hello.txt").unwrap().nodeid;
    let set = |g: &mut Guest, name: &[u8], value: &[u8]| {
        let args = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend(cstr(name));
        body.extend_from_slice(value);
        g.request(Opcode::Setxattr as u32, hello, &body).errno()
    };
    for name in [
        &b"security.capability"[..],
        b"trusted.overlay.opaque",
        b"system.posix_acl_access",
        b"user.",
    ] {
        assert_eq!(set(&mut g, name, b"y"), libc::EPERM, "{name:?}");
    }
    let user_ok = set(&mut g, b"user.berth", b"value");
    let xattrs = if user_ok == libc::EOPNOTSUPP {
        Err("the share's file system (under /tmp) has no user xattrs".to_string())
    } else {
        Ok(())
    };
    if !test_gate::require(xattrs, "user extended attributes") {
        return;
    }
    assert_eq!(user_ok, 0);
    if is_root() {
        let path = CString::new(dir.as_path().join("hello.txt").as_os_str().as_bytes()).unwrap();
        let name = CString::new("trusted.hidden").unwrap();
        // SAFETY: valid C strings and a 1-byte value.
        let rc =
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0);
    }
    let get = |g: &mut Guest, name: &[u8]| {
        let args = GetxattrIn {
            size: 100,
            padding: 0,
        };
        let mut body = args.as_slice().to_vec();
        body.extend(cstr(name));
        g.request(Opcode::Getxattr as u32, hello, &body)
    };
    let r = get(&mut g, b"user.berth");
    assert_eq!(&r.bytes[16..], b"value");
    assert_eq!(get(&mut g, b"trusted.hidden").errno(), libc::ENODATA);
    let args = GetxattrIn {
        size: 1000,
        padding: 0,
    };
    let r = g.request(Opcode::Listxattr as u32, hello, args.as_slice());
    assert_eq!(&r.bytes[16..], b"user.berth\0");
}

#[test]
fn nosuid_shares_strip_set_id_bits() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    std::fs::write(root.join("suid"), b"binary").unwrap();
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut g = Guest::new(
        &m,
        root,
        ShareOptions {
            nosuid: true,
            ..ShareOptions::default()
        },
    );
    g.init();
    let mode_of = |name: &str| std::fs::metadata(root.join(name)).unwrap().mode() & 0o7777;
    let (entry, _) = g.create(b"made", libc::O_WRONLY, 0o6755).unwrap();
    assert_eq!(mode_of("made"), 0o755);
    assert_eq!(g.setattr(entry.nodeid, SetattrValid::MODE, 0o4711, 0), 0);
    assert_eq!(mode_of("made"), 0o711);
    let mkdir = MkdirIn {
        mode: 0o6775,
        umask: 0,
    };
    let mut body = mkdir.as_slice().to_vec();
    body.extend(cstr(b"dir"));
    assert_eq!(g.request(Opcode::Mkdir as u32, ROOT_ID, &body).errno(), 0);
    let dir_node = g.lookup(ROOT_ID, b"dir").unwrap().nodeid;
    assert_eq!(g.setattr(dir_node, SetattrValid::MODE, 0o6775, 0), 0);
    assert_eq!(mode_of("dir"), 0o2775, "set-group-ID stays on directories");
    // A set-id file the guest opens for writing loses its bits first.
    let suid = g.lookup(ROOT_ID, b"suid").unwrap().nodeid;
    assert!(g.open(suid, libc::O_RDONLY).is_ok());
    assert_eq!(mode_of("suid"), 0o4755);
    assert!(g.open(suid, libc::O_WRONLY).is_ok());
    assert_eq!(mode_of("suid"), 0o755);
}

#[test]
fn set_id_bits_pass_on_ordinary_shares() {
    let m = mem();
    let dir = share();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    g.create(b"made", libc::O_WRONLY, 0o4755).unwrap();
    let mode = std::fs::metadata(dir.as_path().join("made"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

#[test]
fn the_device_serves_requests_on_its_worker_thread() {
    let m = mem();
    let dir = share();
    let mut fs = Fs::new(&FsConfig {
        tag: "t".into(),
        dir: dir.as_path().to_path_buf(),
        options: ShareOptions::default(),
    })
    .unwrap();
    // The driver configures the request queue where a mock queue lives.
    let vq = MockSplitQueue::new(&m, 256);
    {
        let q = &mut fs.queues_mut()[1];
        q.set_size(256);
        q.set_desc_table_address(Some(vq.desc_table_addr().0 as u32), Some(0));
        q.set_avail_ring_address(Some(vq.avail_addr().0 as u32), Some(0));
        q.set_used_ring_address(Some(vq.used_addr().0 as u32), Some(0));
        q.set_ready(true);
    }
    let hiprio = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
    {
        let q = &mut fs.queues_mut()[0];
        q.set_size(16);
        q.set_desc_table_address(Some(hiprio.desc_table_addr().0 as u32), Some(0));
        q.set_avail_ring_address(Some(hiprio.avail_addr().0 as u32), Some(0));
        q.set_used_ring_address(Some(hiprio.used_addr().0 as u32), Some(0));
        q.set_ready(true);
    }
    let irq = Arc::new(IrqTrigger::new(EventFd::new(0).unwrap()));
    fs.activate(m.clone(), irq.clone()).unwrap();
    // FUSE_INIT, queued after activation, announced through the queue's eventfd.
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0,
        flags: 0,
    };
    let header = InHeader {
        len: 40 + 16,
        opcode: Opcode::Init as u32,
        unique: 5,
        ..Default::default()
    };
    let mut msg = header.as_slice().to_vec();
    msg.extend_from_slice(init.as_slice());
    m.write_slice(&msg, GuestAddress(DATA_START)).unwrap();
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(DATA_START, msg.len() as u32, NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(DATA_START + 0x1000, 4096, WRITE, 0)),
    ];
    // Quiesced (a snapshot is being taken): the request waits, memory is left alone.
    fs.quiesce();
    vq.add_desc_chains(&descs, 0).unwrap();
    fs.queue_events()[1].write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(irq.status(), 0);
    assert_eq!(fs.queue_snapshots()[1].next_used, 0);
    assert!(m
        .read_obj::<OutHeader>(GuestAddress(DATA_START + 0x1000))
        .is_ok_and(|out| out.unique == 0));
    fs.unquiesce();
    // The interrupt eventfd is blocking: this waits for the worker's reply.
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    let out: OutHeader = m.read_obj(GuestAddress(DATA_START + 0x1000)).unwrap();
    assert_eq!((out.unique, out.error), (5, 0));
    assert!(fs.is_activated());
    assert_eq!(
        fs.queue_snapshots()[1].next_used,
        1,
        "the worker's position"
    );
    // Reset stops the worker and drops the session.
    fs.reset();
    assert!(!fs.is_activated());
    assert_eq!(fs.tag(), "t");
}

/// The names in a READDIRPLUS reply, with the offset of the last entry.
fn direntplus_names(body: &[u8]) -> (Vec<String>, u64) {
    let mut names = vec![];
    let mut last_off = 0;
    let mut p = 0;
    let entry_len = std::mem::size_of::<EntryOut>();
    while p + entry_len + 24 <= body.len() {
        let d = p + entry_len;
        let off = u64::from_le_bytes(body[d + 8..d + 16].try_into().unwrap());
        let namelen = u32::from_le_bytes(body[d + 16..d + 20].try_into().unwrap()) as usize;
        let name = &body[d + 24..d + 24 + namelen];
        names.push(String::from_utf8_lossy(name).into_owned());
        last_off = off;
        p = d + ((24 + namelen + 7) & !7);
    }
    (names, last_off)
}

#[test]
fn listing_while_deleting_sees_every_entry_on_tmpfs() {
    // What `rm -rf` does (list a page, delete it, list the next) must see every entry, also
    // where directory offsets are positions: tmpfs up to Linux 6.5 (the emulated host's
    // 6.1 fails this without the fix; newer kernels keep stable offsets and pass anyway).
    let Ok(dir) = TempDir::new_with_prefix("/dev/shm/berth-fs-test-") else {
        eprintln!("listing_while_deleting_sees_every_entry_on_tmpfs: no /dev/shm");
        return;
    };
    let many = dir.as_path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..300 {
        std::fs::write(many.join(format!("file-{i:04}")), b"").unwrap();
    }
    let m = mem();
    let mut g = Guest::new(&m, dir.as_path(), ShareOptions::default());
    g.init();
    let node = g.lookup(ROOT_ID, b"many").unwrap().nodeid;
    let open = OpenIn::default();
    let fh = g
        .request(Opcode::Opendir as u32, node, open.as_slice())
        .body::<OpenOut>()
        .fh;
    let mut seen = 0;
    let mut offset = 0;
    loop {
        let read = ReadIn {
            fh,
            offset,
            size: 4096,
            ..Default::default()
        };
        let r = g.request(Opcode::Readdirplus as u32, node, read.as_slice());
        assert_eq!(r.errno(), 0);
        let (names, last) = direntplus_names(&r.bytes[16..]);
        if names.is_empty() {
            break;
        }
        for name in &names {
            let unlink = g.request(Opcode::Unlink as u32, node, &cstr(name.as_bytes()));
            assert_eq!(unlink.errno(), 0, "{name}");
        }
        seen += names.len();
        offset = last;
    }
    assert_eq!(seen, 300);
    assert_eq!(std::fs::read_dir(&many).unwrap().count(), 0);
}

#[test]
fn a_restored_device_serves_the_restored_vms_own_directory() {
    use crate::virtio::mmio::{MmioTransport, MmioTransportResources};
    use snapshot::Persist;
    let m = mem();
    let template_dir = share();
    std::fs::write(template_dir.as_path().join("only-in-template"), b"").unwrap();
    let clone_dir = share();
    std::fs::write(clone_dir.as_path().join("only-in-clone"), b"").unwrap();
    let config = |dir: &TempDir| FsConfig {
        tag: "root".into(),
        dir: dir.as_path().to_path_buf(),
        options: ShareOptions::default(),
    };
    let mut fs = Fs::new(&config(&template_dir)).unwrap();
    let vq = MockSplitQueue::new(&m, 256);
    let hiprio = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
    for (q, mock, size) in [(0, &hiprio, 16), (1, &vq, 256)] {
        let q = &mut fs.queues_mut()[q];
        q.set_size(size);
        q.set_desc_table_address(Some(mock.desc_table_addr().0 as u32), Some(0));
        q.set_avail_ring_address(Some(mock.avail_addr().0 as u32), Some(0));
        q.set_used_ring_address(Some(mock.used_addr().0 as u32), Some(0));
        q.set_ready(true);
    }
    let irq = Arc::new(IrqTrigger::new(EventFd::new(0).unwrap()));
    let template = MmioTransport::new(fs, m.clone(), irq);
    let mut saved = template.save();
    // What the guest's driver had negotiated before the template was snapshotted.
    saved.acked_features = crate::virtio::features::VERSION_1;
    saved.device_status = crate::virtio::status::ACKNOWLEDGE
        | crate::virtio::status::DRIVER
        | crate::virtio::status::FEATURES_OK
        | crate::virtio::status::DRIVER_OK;
    drop(template);
    let irq = Arc::new(IrqTrigger::new(EventFd::new(0).unwrap()));
    let restored = MmioTransport::<Fs>::restore(
        MmioTransportResources {
            mem: m.clone(),
            irq: irq.clone(),
            device: config(&clone_dir),
        },
        &saved,
    )
    .unwrap();
    assert!(restored.device().is_activated());
    assert_eq!(restored.save(), saved);
    // The guest mounts the share: a new session, over the clone's directory.
    let request = |unique: u64, opcode: Opcode, nodeid: u64, body: &[u8]| -> OutHeader {
        let header = InHeader {
            len: (40 + body.len()) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        let mut msg = header.as_slice().to_vec();
        msg.extend_from_slice(body);
        let at = DATA_START + unique * 0x2000;
        m.write_slice(&msg, GuestAddress(at)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(at, msg.len() as u32, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(at + 0x1000, 4096, WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        restored.device().queue_events()[1].write(1).unwrap();
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        m.read_obj(GuestAddress(at + 0x1000)).unwrap()
    };
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0,
        flags: 0,
    };
    assert_eq!(request(1, Opcode::Init, 0, init.as_slice()).error, 0);
    assert_eq!(
        request(2, Opcode::Lookup, ROOT_ID, b"only-in-clone\0").error,
        0
    );
    assert_eq!(
        -request(3, Opcode::Lookup, ROOT_ID, b"only-in-template\0").error,
        libc::ENOENT
    );
    // Another layout: refused by name.
    for (change, want) in [
        (
            FsConfig {
                tag: "data".into(),
                ..config(&clone_dir)
            },
            "has tag root, this VM's has data",
        ),
        (
            FsConfig {
                options: ShareOptions {
                    read_only: true,
                    ..ShareOptions::default()
                },
                ..config(&clone_dir)
            },
            "policy",
        ),
    ] {
        let e = Fs::restore(change, &saved.device)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn a_single_file_share_serves_that_file_alone() {
    let m = mem();
    let dir = share();
    let root = dir.as_path();
    std::fs::write(root.join("secret.txt"), b"not yours").unwrap();
    let only = ShareOptions {
        file: Some("hello.txt".into()),
        ..ShareOptions::default()
    };
    let mut g = Guest::new(&m, root, only.clone());
    g.init();
    assert_eq!(g.lookup(ROOT_ID, b"secret.txt").err(), Some(libc::ENOENT));
    let hello = g.lookup(ROOT_ID, b"hello.txt").unwrap().nodeid;
    assert!(g.open(hello, libc::O_RDWR).is_ok());
    // Its directory is neither listed nor changed.
    let opendir = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let listed = g.request(Opcode::Opendir as u32, ROOT_ID, opendir.as_slice());
    assert_eq!(listed.errno(), libc::EACCES);
    assert_eq!(
        g.create(b"planted", libc::O_WRONLY, 0o644).err(),
        Some(libc::EACCES)
    );
    assert_eq!(g.mknod(b"fifo", libc::S_IFIFO | 0o644, 0), libc::EACCES);
    let unlink = g.request(Opcode::Unlink as u32, ROOT_ID, &cstr(b"hello.txt"));
    assert_eq!(unlink.errno(), libc::EACCES);
    assert_eq!(
        g.setattr(ROOT_ID, SetattrValid::MODE, 0o777, 0),
        libc::EACCES
    );
    assert_eq!(g.setattr(hello, SetattrValid::SIZE, 0, 2), 0);
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"he");
    assert!(!root.join("planted").exists());
    // The one entry must be a regular file when the device is made.
    std::os::unix::fs::symlink("secret.txt", root.join("link")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    for name in ["link", "sub", "missing", "../etc", ""] {
        let made = Fs::new(&FsConfig {
            tag: "f".into(),
            dir: root.to_path_buf(),
            options: ShareOptions {
                file: Some(name.into()),
                ..ShareOptions::default()
            },
        });
        assert!(made.is_err(), "{name:?}");
    }
}

#[test]
fn a_file_given_as_the_share_is_shared_alone() {
    let dir = share();
    let fs = Fs::new(&FsConfig {
        tag: "one".into(),
        dir: dir.as_path().join("hello.txt"),
        options: ShareOptions::default(),
    })
    .unwrap();
    assert_eq!(fs.dir(), std::fs::canonicalize(dir.as_path()).unwrap());
    assert_eq!(fs.file(), Some("hello.txt"));
    // A snapshot of a directory share restores as a single-file one: which it is belongs
    // to the host side, as the directory does.
    let placeholder = share();
    let saved = snapshot::Persist::save(
        &Fs::new(&FsConfig {
            tag: "one".into(),
            dir: placeholder.as_path().to_path_buf(),
            options: ShareOptions::default(),
        })
        .unwrap(),
    );
    let restored = <Fs as snapshot::Persist>::restore(
        FsConfig {
            tag: "one".into(),
            dir: dir.as_path().join("hello.txt"),
            options: ShareOptions::default(),
        },
        &saved,
    )
    .unwrap();
    assert_eq!(restored.file(), Some("hello.txt"));
}
