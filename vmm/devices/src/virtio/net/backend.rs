//! Where the net device's frames go: a tap device handed over by the VMM's starter, or (in
//! tests and fuzzing) one end of a `SOCK_SEQPACKET` socket pair, which keeps frame
//! boundaries as a tap does.
//!
//! The device never opens a host path or creates an interface: it is given a descriptor.
//! That is what lets the VMM run confined later (no `/dev/net/tun`, no CAP_NET_ADMIN).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The offload flags of TUNSETOFFLOAD (linux/if_tun.h).
pub mod offload {
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
}

/// Why a descriptor cannot serve as the device's backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("descriptor {fd} is not a tap device: {source}")]
    NotATap {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "descriptor {fd} is a tun/tap device with flags {flags:#x}; a tap opened with \
         IFF_TAP|IFF_NO_PI|IFF_VNET_HDR is needed"
    )]
    WrongFlags { fd: RawFd, flags: u32 },
    #[error("cannot make descriptor {fd} non-blocking: {source}")]
    NonBlocking {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a socket pair: {0}")]
    SocketPair(#[source] std::io::Error),
}

/// A frame source and sink. Every frame read or written starts with the 12-byte virtio-net
/// header (the tap is told to use that size at activation). Reads and writes never block:
/// a read with nothing to read is `WouldBlock`.
pub trait Backend: Send + AsRawFd {
    /// Reads one frame into `buf`, returning its length (header included).
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame (header included).
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// Sets the header size to 12 and the offloads the driver can take (TUNSETOFFLOAD
    /// flags, [`offload`]).
    fn configure(&mut self, offloads: u32) -> std::io::Result<()>;
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_whole(file: &mut File, frame: &[u8]) -> std::io::Result<()> {
    // A tap or a packet socket takes a frame whole or not at all.
    let n = file.write(frame)?;
    if n != frame.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("{n} of {} bytes written", frame.len()),
        ));
    }
    Ok(())
}

/// The virtio-net header size the device and the tap agree on (VERSION_1: with
/// `num_buffers`).
const VNET_HDR_SIZE: libc::c_int = 12;

/// A tap device opened by the VMM's starter with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR.
#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Takes `fd` as the device's tap after checking it is one, with the flags the device
    /// relies on (no packet information prefix, a virtio-net header on every frame); makes
    /// it non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Tap, BackendError> {
        let raw = fd.as_raw_fd();
        // struct ifreq: 16 bytes of name, then the flags (a short) in a 24-byte union.
        let mut ifreq = [0u8; 40];
        // SAFETY: TUNGETIFF writes one struct ifreq (40 bytes on 64-bit Linux) into the
        // buffer given, which is that large and lives across the call; on a descriptor
        // that is not a tun/tap device it fails with EBADFD or ENOTTY and writes nothing.
        let rc = unsafe { libc::ioctl(raw, libc::TUNGETIFF, ifreq.as_mut_ptr()) };
        if rc < 0 {
            return Err(BackendError::NotATap {
                fd: raw,
                source: std::io::Error::last_os_error(),
            });
        }
        let flags = u32::from(u16::from_ne_bytes([ifreq[16], ifreq[17]]));
        let wanted = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u32;
        if flags & wanted != wanted || flags & libc::IFF_TUN as u32 != 0 {
            return Err(BackendError::WrongFlags { fd: raw, flags });
        }
        set_nonblocking(raw).map_err(|source| BackendError::NonBlocking { fd: raw, source })?;
        Ok(Tap {
            file: File::from(fd),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        write_whole(&mut self.file, frame)
    }

    fn configure(&mut self, offloads: u32) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        let size: libc::c_int = VNET_HDR_SIZE;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a
        // live local.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; it touches no memory of ours.
        if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(offloads)) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One end of a `SOCK_SEQPACKET` socket pair standing in for a tap (tests, fuzzing): each
/// frame is one message, header included.
#[derive(Debug)]
pub struct SocketBackend {
    file: File,
}

impl SocketBackend {
    /// A backend and the other end of its pair (left blocking, for the test's side).
    pub fn pair() -> Result<(SocketBackend, OwnedFd), BackendError> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into the array given, which holds two;
        // the result is checked before they are used.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(BackendError::SocketPair(std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_nonblocking(ours.as_raw_fd()).map_err(BackendError::SocketPair)?;
        Ok((
            SocketBackend {
                file: File::from(ours),
            },
            theirs,
        ))
    }
}

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for SocketBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        write_whole(&mut self.file, frame)
    }

    fn configure(&mut self, _offloads: u32) -> std::io::Result<()> {
        Ok(())
    }
}
