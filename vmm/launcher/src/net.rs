//! A VM's network card as its starter sees it: the MAC address (parsed, formatted, made up
//! for a new VM) and the tap descriptor the VMM inherits.
//!
//! The VMM never opens a tap itself: the engine opens it (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)
//! and hands the descriptor over across exec, which is what [`inherit_fd`] arranges.

use std::os::fd::RawFd;
use std::process::Command;

/// Why a MAC address is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error(
        "{0:?} is not a MAC address (six hex bytes separated by colons, as 02:42:ac:11:00:02)"
    )]
    Syntax(String),
    #[error("{0} is a multicast address; a network card needs a unicast one")]
    Multicast(String),
    #[error("{0} is the null address")]
    Zero(String),
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits in either case; `-` also accepted as separator).
/// Any address parses; [`check_unicast`] says whether a card may use it.
pub fn parse_mac(text: &str) -> Result<[u8; 6], MacError> {
    let syntax = || MacError::Syntax(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(syntax)?;
        // from_str_radix alone would take a sign ("+2").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether a card may use `mac`: not multicast (nor broadcast), not all zeros.
pub fn check_unicast(mac: &[u8; 6]) -> Result<(), MacError> {
    if mac[0] & 1 != 0 {
        return Err(MacError::Multicast(format_mac(mac)));
    }
    if *mac == [0; 6] {
        return Err(MacError::Zero(format_mac(mac)));
    }
    Ok(())
}

/// Lets the process `cmd` starts inherit descriptor `fd` under the same number (its
/// close-on-exec flag is cleared in the child, between fork and exec; the parent's copy
/// keeps its flag, so no other child inherits it). The caller keeps `fd` open until the
/// child has started.
pub fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
    // which is async-signal-safe; it allocates nothing and touches no memory shared with
    // the parent. In the child `fd` is the parent's descriptor of the same number.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_format_and_are_checked() {
        let mac = parse_mac("02:42:AC:11:00:02").unwrap();
        assert_eq!(mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02-42-ac-11-00-02"), Ok(mac));
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "02:42:ac:11:00:zz",
            "0242ac110002",
            "+2:42:ac:11:00:02",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(check_unicast(&mac).is_ok());
        assert!(matches!(
            check_unicast(&parse_mac("01:00:5e:00:00:01").unwrap()),
            Err(MacError::Multicast(_))
        ));
        assert!(check_unicast(&[0xff; 6]).is_err());
        assert!(check_unicast(&[0; 6]).is_err());
    }

    #[test]
    fn a_child_inherits_the_descriptor_it_is_given_and_no_other() {
        use std::os::fd::AsRawFd;
        // std opens every descriptor close-on-exec.
        let given = std::fs::File::open("/dev/null").unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let probe = |fd: RawFd| format!("test -e /proc/self/fd/{fd} && echo open || echo closed");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "{}; {}",
            probe(given.as_raw_fd()),
            probe(other.as_raw_fd())
        ));
        inherit_fd(&mut cmd, given.as_raw_fd());
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "open\nclosed\n");
        // The parent's copy kept its flag.
        // SAFETY: F_GETFD on a descriptor this test owns.
        let flags = unsafe { libc::fcntl(given.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }
}
