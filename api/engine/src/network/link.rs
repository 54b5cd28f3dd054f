//! Bridges and taps, made with the kernel's old interface ioctls (no netlink needed for
//! these few steps). Every function here acts on the network namespace of the calling
//! thread: call them through [`super::netns::NetNs::run`].

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An interface step that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {name}: {source}")]
pub struct LinkError {
    pub what: &'static str,
    pub name: String,
    #[source]
    pub source: io::Error,
}

// linux/sockios.h and linux/if_tun.h.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

fn err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> LinkError + 'a {
    move |source| LinkError {
        what,
        name: name.to_string(),
        source,
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl_ifreq(fd: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: each request used with this helper reads or writes one `struct ifreq`, which
    // `req` is, valid and exclusively borrowed for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut libc::ifreq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the interface
    // ioctls take an IPv4 address this way.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Whether an interface of that name exists here.
pub fn exists(name: &str) -> bool {
    let Ok(sock) = socket() else { return false };
    let mut req = ifreq(name);
    ioctl_ifreq(&sock, libc::SIOCGIFINDEX, &mut req).is_ok()
}

/// Brings `name` up.
pub fn set_up(name: &str) -> Result<(), LinkError> {
    let sock = socket().map_err(err("open a socket for", name))?;
    let mut req = ifreq(name);
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(err("read the flags of", name))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(err("bring up", name))
}

/// Creates bridge `name` (an existing one is reused) with `address/prefix` on it, up.
///
/// The bridge's hardware address is set (to `mac`), not left to the kernel: a bridge without
/// one takes the lowest of its ports' addresses, so it would change as containers' taps come
/// and go, and every running guest's cached address for its gateway would go stale with it
/// (their traffic to the gateway lost until their ARP entries expire, tens of seconds).
pub fn create_bridge(
    name: &str,
    mac: [u8; 6],
    address: Ipv4Addr,
    prefix: u8,
) -> Result<(), LinkError> {
    let sock = socket().map_err(err("open a socket for", name))?;
    let cname = CString::new(name).map_err(|_| LinkError {
        what: "name",
        name: name.to_string(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: SIOCBRADDBR reads a NUL-terminated interface name, which `cname` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR as _, cname.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(err("create the bridge", name)(e));
        }
    }
    let mut req = ifreq(name);
    // SAFETY: sockaddr is plain data; all zeros is a valid value.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    ioctl_ifreq(&sock, libc::SIOCSIFHWADDR, &mut req)
        .map_err(err("set the hardware address of", name))?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut req).map_err(err("set the address of", name))?;
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix.clamp(1, 32))));
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut req).map_err(err("set the netmask of", name))?;
    set_up(name)
}

/// The hardware address of interface `name`.
pub fn hardware_address(name: &str) -> Result<[u8; 6], LinkError> {
    let sock = socket().map_err(err("open a socket for", name))?;
    let mut req = ifreq(name);
    ioctl_ifreq(&sock, libc::SIOCGIFHWADDR, &mut req)
        .map_err(err("read the hardware address of", name))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// Deletes bridge `name` (down first, as the kernel requires). A missing one is no error.
pub fn delete_bridge(name: &str) -> Result<(), LinkError> {
    if !exists(name) {
        return Ok(());
    }
    let sock = socket().map_err(err("open a socket for", name))?;
    let mut req = ifreq(name);
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut req).map_err(err("read the flags of", name))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut req).map_err(err("bring down", name))?;
    let cname = CString::new(name).map_err(|_| LinkError {
        what: "name",
        name: name.to_string(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: SIOCBRDELBR reads a NUL-terminated interface name, which `cname` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRDELBR as _, cname.as_ptr()) } != 0 {
        return Err(err("delete the bridge", name)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates tap `name` with a virtio-net header (the VMM passes the guest's offload
/// header through) and no packet information, adds it to `bridge` and brings it up. The tap
/// lives as long as a descriptor of it is open: once the VMM that got it exits, it is gone.
pub fn create_tap(name: &str, bridge: &str) -> Result<OwnedFd, LinkError> {
    let path = c"/dev/net/tun";
    // SAFETY: open(2) of a constant NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err("open /dev/net/tun for", name)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    ioctl_ifreq(&tap, TUNSETIFF, &mut req).map_err(err("create the tap", name))?;
    let sock = socket().map_err(err("open a socket for", name))?;
    let mut req = ifreq(name);
    ioctl_ifreq(&sock, libc::SIOCGIFINDEX, &mut req).map_err(err("find", name))?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    let mut req = ifreq(bridge);
    req.ifr_ifru.ifru_ifindex = index;
    ioctl_ifreq(&sock, SIOCBRADDIF, &mut req).map_err(err("add a port to the bridge", bridge))?;
    set_up(name)?;
    Ok(tap)
}

/// The interface names in this namespace (from /proc/net/dev, which is per namespace as
/// seen by the reading thread: /proc/thread-self).
pub fn names() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}
