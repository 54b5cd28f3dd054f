//! What makes a VM restored from a snapshot its own: every clone of one snapshot wakes up
//! with the same kernel random state, the wall clock of the moment the snapshot was taken,
//! and the template's hostname. Before anything runs in a clone, the host sends random
//! bytes, the time and a hostname ([`agent_protocol::Request::Refresh`]) and this module
//! applies them: the bytes go into the kernel's pool, credited (RNDADDENTROPY), and the CRNG
//! is forced to reseed from it at once (RNDRESEEDCRNG), so `/dev/urandom`, `getrandom(2)`
//! and the kernel's own users (UUIDs, TCP sequence numbers, ASLR) diverge between clones.
//! The agent keeps no random generator of its own to reseed.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("cannot open /dev/urandom")]
    Open(#[source] io::Error),
    #[error("the kernel refused the host's entropy (RNDADDENTROPY)")]
    AddEntropy(#[source] io::Error),
    #[error("the kernel refused to reseed its random generator (RNDRESEEDCRNG)")]
    Reseed(#[source] io::Error),
    #[error("cannot set the wall clock")]
    Clock(#[source] io::Error),
    #[error("cannot set the hostname")]
    Hostname(#[source] io::Error),
}

// linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `struct rand_pool_info` with `entropy` as its buffer, in 32-bit words as the kernel
/// reads it: entropy_count (bits credited), buf_size (bytes), then the bytes.
fn rand_pool_info(entropy: &[u8]) -> Vec<u32> {
    let bits = u32::try_from(entropy.len() * 8).unwrap_or(u32::MAX);
    let bytes = u32::try_from(entropy.len()).unwrap_or(u32::MAX);
    let mut words = vec![bits, bytes];
    for chunk in entropy.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        words.push(u32::from_ne_bytes(w));
    }
    words
}

/// Mixes `entropy` into the kernel's pool, reseeds the CRNG, sets the wall clock to
/// `realtime_ns` and the hostname to `hostname` when given.
pub fn refresh(
    entropy: &[u8],
    realtime_ns: u64,
    hostname: Option<&str>,
) -> Result<(), RefreshError> {
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(RefreshError::Open)?;
    let info = rand_pool_info(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buffer is buf_size bytes long:
    // `info` holds the two header words and at least that many bytes after them, and
    // outlives the call.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(RefreshError::AddEntropy(io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of ours.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(RefreshError::Reseed(io::Error::last_os_error()));
    }
    let ts = libc::timespec {
        tv_sec: (realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(RefreshError::Clock(io::Error::last_os_error()));
    }
    if let Some(name) = hostname {
        nix::unistd::sethostname(name).map_err(|e| RefreshError::Hostname(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_holds_the_bits_the_length_and_every_byte() {
        let words = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(words.len(), 4);
        assert_eq!(words[0], 40);
        assert_eq!(words[1], 5);
        assert_eq!(words[2].to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(words[3].to_ne_bytes(), [5, 0, 0, 0]);
    }
}
