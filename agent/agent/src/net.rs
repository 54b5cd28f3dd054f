//! The VM's network interfaces, configured as the host set up their other ends: loopback up
//! at boot (Docker's `--network none` still has `lo`), and each `eth<N>` given its MAC,
//! IPv4 address, MTU and default route on [`agent_protocol::Request::ConfigureNetwork`],
//! which answers once each has its link.
//!
//! Plain ioctls on an `AF_INET` socket: the guest kernel has no netlink users here and
//! these few settings are all a container's interface needs. The container's processes
//! share the VM's network namespace, so what is set here is what they see.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use agent_protocol::InterfaceConfig;

/// Why an interface could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a configuration socket")]
    Socket(#[source] io::Error),
    #[error("the VM has no interface {0}")]
    NoInterface(String),
    #[error("cannot {what} of {name}")]
    Ioctl {
        what: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{0:?} is not a valid address")]
    Address(String),
    #[error("{name} reported no link within {waited:?}")]
    NoCarrier { name: String, waited: Duration },
}

/// How long a configured interface may take to report its link up. The VM's device says
/// the link is up as soon as its backend is attached (a clone's, at restore); the guest
/// kernel takes that in on a workqueue, and until then the interface drops what is sent
/// (a container's first DNS query or ARP request lost). Seconds only on a loaded emulated
/// host; past this, something is wrong and is said.
const CARRIER_TIMEOUT: Duration = Duration::from_secs(20);

fn socket() -> Result<OwnedFd, NetError> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses);
    // all zeros is a valid value of it.
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

/// One interface ioctl that reads or writes `req`.
fn ioctl(
    sock: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    what: &'static str,
    name: &str,
) -> Result<(), NetError> {
    // SAFETY: every request passed here (SIOC[GS]IF*) reads and writes one `struct ifreq`,
    // which `req` is, valid and exclusively borrowed for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(NetError::NoInterface(name.to_string()));
        }
        return Err(NetError::Ioctl {
            what,
            name: name.to_string(),
            source,
        });
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
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is plain
    // bytes; this is how the kernel's interface ioctls take an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Brings interface `name` up (or keeps it up).
fn set_up(sock: &OwnedFd, name: &str) -> Result<(), NetError> {
    let mut req = ifreq(name);
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, "read the flags", name)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member, which is what is read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, "bring up", name)
}

/// Brings the loopback interface up, as every container (even `--network none`) has it.
pub fn loopback_up() -> Result<(), NetError> {
    let sock = socket()?;
    set_up(&sock, "lo")
}

/// Configures each interface: its MAC, MTU, address and netmask, up, and the default route
/// through the first gateway given.
pub fn configure(interfaces: &[InterfaceConfig]) -> Result<(), NetError> {
    let sock = socket()?;
    let mut default_route = None;
    for iface in interfaces {
        let name = format!("eth{}", iface.index);
        let address: Ipv4Addr = iface
            .address
            .parse()
            .map_err(|_| NetError::Address(iface.address.clone()))?;
        let mut mac = [0u8; 6];
        for (byte, hex) in mac.iter_mut().zip(iface.mac.split(':')) {
            *byte =
                u8::from_str_radix(hex, 16).map_err(|_| NetError::Address(iface.mac.clone()))?;
        }

        let mut req = ifreq(&name);
        // SAFETY: all-zero sockaddr is valid plain data.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        ioctl(
            &sock,
            libc::SIOCSIFHWADDR,
            &mut req,
            "set the MAC address",
            &name,
        )?;

        let mut req = ifreq(&name);
        req.ifr_ifru.ifru_mtu = iface.mtu as libc::c_int;
        ioctl(&sock, libc::SIOCSIFMTU, &mut req, "set the MTU", &name)?;

        let mut req = ifreq(&name);
        req.ifr_ifru.ifru_addr = sockaddr_in(address);
        ioctl(&sock, libc::SIOCSIFADDR, &mut req, "set the address", &name)?;

        let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(iface.prefix_len.clamp(1, 32))));
        let mut req = ifreq(&name);
        req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        ioctl(
            &sock,
            libc::SIOCSIFNETMASK,
            &mut req,
            "set the netmask",
            &name,
        )?;

        set_up(&sock, &name)?;
        if default_route.is_none() {
            if let Some(gw) = &iface.gateway {
                let gw: Ipv4Addr = gw.parse().map_err(|_| NetError::Address(gw.clone()))?;
                default_route = Some((gw, name.clone()));
            }
        }
    }
    if let Some((gateway, name)) = default_route {
        add_default_route(&sock, gateway, &name)?;
    }
    for iface in interfaces {
        wait_for_link(&sock, &format!("eth{}", iface.index))?;
    }
    Ok(())
}

/// Waits until interface `name` (up) has its link, so that nothing the container sends
/// first is dropped.
fn wait_for_link(sock: &OwnedFd, name: &str) -> Result<(), NetError> {
    let start = Instant::now();
    loop {
        let mut req = ifreq(name);
        ioctl(sock, libc::SIOCGIFFLAGS, &mut req, "read the flags", name)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        // IFF_RUNNING: the kernel's operational state is up (carrier on, qdisc active).
        if flags & libc::IFF_RUNNING as libc::c_short != 0 {
            return Ok(());
        }
        if start.elapsed() >= CARRIER_TIMEOUT {
            return Err(NetError::NoCarrier {
                name: name.to_string(),
                waited: CARRIER_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr, name: &str) -> Result<(), NetError> {
    // SAFETY: rtentry is plain data (addresses, integers and a pointer left null); all
    // zeros is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads one `struct rtentry`, which `rt` is, valid for the call; its
    // device pointer is null (the kernel picks the interface by the gateway's subnet).
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &mut rt) };
    if r != 0 {
        let source = io::Error::last_os_error();
        // A refreshed configuration of the same VM: the route is already there.
        if source.raw_os_error() != Some(libc::EEXIST) {
            return Err(NetError::Ioctl {
                what: "add the default route",
                name: name.to_string(),
                source,
            });
        }
    }
    Ok(())
}
