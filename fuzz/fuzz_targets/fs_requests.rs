//! The virtio-fs request path, the most security-critical code berth owns: a session of FUSE
//! requests from a hostile guest, in descriptor chains on the request queue, served by the
//! confined server over a shared directory. Nothing panics, and nothing outside the share
//! changes: the share holds a symlink to a sentinel file beside it, which no request may
//! write, link, rename, truncate or change the mode of.
//!
//! Input: records of [opcode, node, flags, length] then `length` body bytes. The harness
//! writes each request's FUSE header (so the fuzzer spends its effort on bodies), except
//! with flag 0x80, when the body is the whole request, header included.
#![no_main]

#[path = "ring.rs"]
mod ring;
#[path = "scratch.rs"]
mod scratch;

use std::sync::atomic::AtomicBool;

use devices::virtio::fs::request::process_queue;
use devices::virtio::fs::{ConfinedFs, ShareOptions};
use devices::GuestMemoryMmap;
use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, Opcode};
use fuse_backend_rs::api::server::Server;
use libfuzzer_sys::fuzz_target;
use ring::{Ring, QUEUE_LEN};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress};

const REQUESTS: u64 = 0x10000;
const REQUEST_ROOM: u64 = 0x1000;
const REPLIES: u64 = 0x100000;
const REPLY_ROOM: u64 = 0x4000;
const MAX_REQUESTS: usize = 64;
const MEM: usize = 0x200000;

struct Session {
    mem: GuestMemoryMmap,
    ring: Ring,
}

impl Session {
    /// Puts a request and its reply buffer on the ring as one chain (the request split in
    /// two buffers when `split`; a reply buffer of `reply_len` bytes).
    fn add(&mut self, request: &[u8], split: bool, reply_len: u32) {
        let slot = u64::from(self.ring.chains);
        let at = REQUESTS + slot * REQUEST_ROOM;
        let request = &request[..request.len().min(REQUEST_ROOM as usize)];
        self.mem.write_slice(request, GuestAddress(at)).unwrap();
        let len = request.len() as u32;
        let mut bufs = Vec::new();
        if split && len > 1 {
            bufs.push((at, len / 2, false));
            bufs.push((at + u64::from(len / 2), len - len / 2, false));
        } else {
            bufs.push((at, len, false));
        }
        bufs.push((REPLIES + slot * REPLY_ROOM, reply_len, true));
        self.ring.add(&self.mem, &bufs);
    }
}

fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    let mut msg = header.as_slice().to_vec();
    msg.extend_from_slice(body);
    msg
}

fuzz_target!(|data: &[u8]| {
    let scratch = scratch::Scratch::get("virtiofs");
    let share = scratch.inside();
    // Something to find: a directory with a file, and a way out that must stay shut.
    std::fs::create_dir(share.join("dir")).unwrap();
    std::fs::write(share.join("dir/file"), b"inside").unwrap();
    std::os::unix::fs::symlink("../outside/sentinel", share.join("escape")).unwrap();
    std::fs::write(share.join("top"), b"alone").unwrap();
    // Odd first bytes serve `top` alone (a bind of one file): nothing else of the share
    // may change then.
    let single = data.first().is_some_and(|b| b & 1 == 1);
    {
        let fs = ConfinedFs::new(
            share,
            ShareOptions {
                read_only: false,
                nosuid: true,
                file: single.then(|| "top".to_string()),
            },
        )
        .expect("a share");
        let server = Server::new(fs);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let ring = Ring::new(0);
        let mut queue = Queue::new(QUEUE_LEN).unwrap();
        queue.set_desc_table_address(Some(ring.desc_table() as u32), Some(0));
        queue.set_avail_ring_address(Some(ring.avail() as u32), Some(0));
        queue.set_used_ring_address(Some(ring.used() as u32), Some(0));
        queue.set_ready(true);
        let mut session = Session { mem, ring };
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags: u32::from_le_bytes(
                data.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or_default(),
            ),
        };
        session.add(
            &message(Opcode::Init as u32, 1, 0, init.as_slice()),
            false,
            REPLY_ROOM as u32,
        );
        let mut rest = data.get(4..).unwrap_or_default();
        let mut unique = 1;
        while rest.len() >= 4 && usize::from(session.ring.chains) < MAX_REQUESTS {
            let (opcode, node, flags) = (rest[0], rest[1], rest[2]);
            let len = usize::from(rest[3]) * 4;
            let body = &rest[4..(4 + len).min(rest.len())];
            rest = &rest[4 + body.len()..];
            unique += 1;
            let request = if flags & 0x80 != 0 {
                body.to_vec()
            } else {
                // Opcodes 1 to 52 and a few past FUSE's last.
                message(u32::from(opcode % 56) + 1, unique, u64::from(node), body)
            };
            let reply_len = if flags & 0x40 != 0 {
                u32::from(flags & 0x3f)
            } else {
                REPLY_ROOM as u32
            };
            session.add(&request, flags & 0x20 != 0, reply_len);
        }
        let _ = process_queue(&mut queue, &session.mem, &server, &AtomicBool::new(false));
    }
    if single {
        let names = scratch::sorted_names(share);
        assert_eq!(
            names,
            ["dir", "escape", "top"],
            "a single-file share changed"
        );
        assert_eq!(std::fs::read(share.join("dir/file")).unwrap(), b"inside");
    }
    scratch.check_and_clear();
});
