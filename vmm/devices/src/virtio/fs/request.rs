//! Queue processing: FUSE requests from descriptor chains to the server and back.
//!
//! [`process_queue`] is a pure function over a queue, guest memory and a FUSE server; the
//! worker thread calls it and the unit tests drive it with virtio-queue's mock queue. Every
//! chain gets an answer: a reply from the server, an error reply written here when the
//! request cannot be parsed or served, or (a chain with no usable reply buffer) a used entry
//! of length 0. Only a corrupt ring is an error of the queue, which then stops.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

use crate::GuestMemoryMmap;

/// The largest request a Linux guest sends: a 1 MiB write (FUSE's max_pages) plus headers.
/// Anything larger is refused before the server sees it, so no allocation the server makes
/// from guest-declared sizes can exceed this.
pub const MAX_REQUEST: usize = (1 << 20) + (4 << 10);
/// The largest reply buffer served, for the same reason (1 MiB reads and directory listings).
pub const MAX_REPLY: usize = (1 << 20) + (4 << 10);

const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();

/// Opcodes below FUSE's highest that it does not define: fuse-backend-rs turns the opcode
/// into its `Opcode` enum by transmutation when tracing is on, which these would make
/// undefined behaviour. They are answered here.
const UNDEFINED_OPCODES: [u32; 2] = [7, 19];

/// Why a queue stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The available ring is corrupt (index too far ahead, bad addresses).
    #[error("the queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// Writing the used ring failed.
    #[error("cannot complete a request: {0}")]
    Used(#[source] virtio_queue::Error),
}

/// Serves every pending request on `queue`. Returns whether the guest must be notified.
/// `stop` is checked between requests so that a device reset does not wait for a full queue.
pub fn process_queue<F: FileSystem + Sync>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    server: &Server<F>,
    stop: &AtomicBool,
) -> Result<bool, RequestError> {
    let mut used_any = false;
    // With EVENT_IDX the driver notifies only where avail_event says: re-arm after
    // draining, and drain again if requests slipped in meanwhile.
    loop {
        queue
            .disable_notification(mem)
            .map_err(RequestError::Queue)?;
        while let Some(chain) = queue.iter(mem).map_err(RequestError::Queue)?.next() {
            let head = chain.head_index();
            let len = serve(mem, chain, server);
            queue.add_used(mem, head, len).map_err(RequestError::Used)?;
            used_any = true;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        if stop.load(Ordering::Relaxed)
            || !queue
                .enable_notification(mem)
                .map_err(RequestError::Queue)?
        {
            break;
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(RequestError::Used)
}

/// Serves one request; returns the number of bytes written into its reply buffer.
pub fn serve<F: FileSystem + Sync>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    server: &Server<F>,
) -> u32 {
    // The reply buffer first: without one there is no way to answer at all.
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            crate::warn_limited!("virtio-fs: unusable reply buffer: {e}");
            return 0;
        }
    };
    let reply_room = writer.available_bytes();
    let mut reply = ErrorReply {
        mem,
        chain: &chain,
        room: reply_room,
    };
    if reply_room > MAX_REPLY {
        crate::warn_limited!("virtio-fs: reply buffer of {reply_room} bytes refused");
        return reply.send(0, libc::EINVAL);
    }
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            crate::warn_limited!("virtio-fs: unusable request buffer: {e}");
            return reply.send(0, libc::EINVAL);
        }
    };
    let request_len = reader.available_bytes();
    if request_len > MAX_REQUEST {
        crate::warn_limited!("virtio-fs: request of {request_len} bytes refused");
        return reply.send(0, libc::EINVAL);
    }
    let header: InHeader = match reader.clone().read_obj() {
        Ok(h) => h,
        Err(_) => {
            crate::warn_limited!("virtio-fs: request of {request_len} bytes has no FUSE header");
            return reply.send(0, libc::EINVAL);
        }
    };
    if UNDEFINED_OPCODES.contains(&header.opcode) {
        return reply.send(header.unique, libc::ENOSYS);
    }
    match server.handle_message(reader, Writer::from(writer), None, None) {
        // FUSE_DESTROY writes its reply but reports 0 bytes.
        Ok(0) if header.opcode == Opcode::Destroy as u32 && reply_room >= OUT_HEADER_LEN => {
            OUT_HEADER_LEN as u32
        }
        Ok(written) => written.min(reply_room) as u32,
        Err(e) => {
            crate::warn_limited!(
                "virtio-fs: request {} (opcode {}) failed: {e}",
                header.unique,
                header.opcode
            );
            reply.send(header.unique, libc::EINVAL)
        }
    }
}

/// Writes a bare error reply into a chain's reply buffer.
struct ErrorReply<'a> {
    mem: &'a GuestMemoryMmap,
    chain: &'a DescriptorChain<&'a GuestMemoryMmap>,
    room: usize,
}

impl ErrorReply<'_> {
    /// Writes the reply; returns its length, or 0 when the buffer cannot hold it (FORGET and
    /// other requests without a reply come with no buffer at all).
    fn send(&mut self, unique: u64, errno: i32) -> u32 {
        if self.room < OUT_HEADER_LEN {
            return 0;
        }
        let out = OutHeader {
            len: OUT_HEADER_LEN as u32,
            error: -errno,
            unique,
        };
        let written = VirtioFsWriter::new(self.mem, self.chain.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|mut w| w.write_all(out.as_slice()));
        match written {
            Ok(()) => OUT_HEADER_LEN as u32,
            Err(e) => {
                crate::warn_limited!("virtio-fs: cannot write an error reply: {e}");
                0
            }
        }
    }
}
