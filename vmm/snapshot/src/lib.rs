//! The snapshot seam: what every part of a VM that a snapshot carries implements
//! ([`Persist`]), and the one file format its state is written in ([`write`], [`read`]).
//!
//! A snapshot is two files: the state file this crate reads and writes (devices, vCPUs,
//! interrupt controllers, clock, the device layout) and guest memory, written and mapped by
//! the vmm crate. State is plain data: file descriptors, sockets, threads and guest memory
//! are never in it; a restore gets them as [`Persist::Resources`], the per-VM host
//! resources of the VM being restored (its own vsock socket, its own share, its memory).
//!
//! # The file
//! ```text
//! offset  size  field
//!      0     8  magic "BERTHSNP"
//!      8     4  format version, little-endian (FORMAT_VERSION)
//!     12     8  payload length N, little-endian (at most MAX_PAYLOAD)
//!     20     N  payload: the state, serde JSON
//!   20+N     4  CRC-32 (IEEE) of bytes 0 .. 20+N, little-endian
//! ```
//! The length is checked against [`MAX_PAYLOAD`] before anything is allocated and the
//! checksum before anything is decoded, so a corrupt or hostile file is an error naming
//! what is wrong, never a large allocation or a half-restored VM.
//!
//! # Compatibility
//! The format version changes only when the layout above changes. Within a version the
//! payload evolves under two rules: a new field has a default (`#[serde(default)]`), so an
//! older snapshot restores into newer code; a field is never reused for another meaning,
//! renamed or retyped; one that goes away stops being written and its name is retired.
//! Unknown fields are refused (`#[serde(deny_unknown_fields)]` on every state): newer
//! state in older code is an error, never state silently dropped. ARCHITECTURE.md states
//! the same policy.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first bytes of every snapshot state file.
pub const MAGIC: [u8; 8] = *b"BERTHSNP";
/// The layout of the file (header, payload, checksum), not of the state inside it.
pub const FORMAT_VERSION: u32 = 1;
/// The largest payload read: far above what a VM's state needs (its devices and vCPUs take
/// tens of KiB), far below what would hurt to allocate.
pub const MAX_PAYLOAD: u64 = 16 << 20;

const HEADER_LEN: usize = 8 + 4 + 8;

/// Something a snapshot carries: a device, the VM's interrupt controllers, a vCPU.
pub trait Persist: Sized {
    /// The state: plain data that serialises.
    type State: Serialize + DeserializeOwned;
    /// What a restore needs besides the state: the restored VM's own host resources.
    type Resources;
    /// Why a restore failed.
    type Error;

    /// The state as it is now (the VM paused).
    fn save(&self) -> Self::State;

    /// Rebuilds from `state` with the restored VM's `resources`.
    fn restore(resources: Self::Resources, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Why a state file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot write the snapshot: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot read the snapshot: {0}")]
    Read(#[source] std::io::Error),
    #[error("cannot encode the snapshot's state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("not a berth snapshot (its first bytes are not {:?})", std::str::from_utf8(&MAGIC).unwrap_or_default())]
    NotASnapshot,
    #[error(
        "the snapshot is in format version {found}; this berth reads version {FORMAT_VERSION}"
    )]
    Version { found: u32 },
    #[error("the snapshot's state is {len} bytes, more than the limit of {MAX_PAYLOAD}")]
    TooLarge { len: u64 },
    #[error("the snapshot is truncated: {0}")]
    Truncated(&'static str),
    #[error(
        "the snapshot is corrupt: its checksum is {found:#010x}, its content's is {computed:#010x}"
    )]
    Checksum { found: u32, computed: u32 },
    #[error("the snapshot has bytes after its checksum")]
    TrailingBytes,
    #[error("the snapshot's state does not decode: {0}")]
    Decode(#[source] serde_json::Error),
}

/// Writes `state` as a snapshot state file.
pub fn write<T: Serialize>(mut out: impl Write, state: &T) -> Result<(), SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let len = payload.len() as u64;
    if len > MAX_PAYLOAD {
        return Err(SnapshotError::TooLarge { len });
    }
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&payload);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    out.write_all(&file).map_err(SnapshotError::Write)?;
    out.flush().map_err(SnapshotError::Write)
}

/// Reads a snapshot state file written by [`write`], checking everything before decoding.
pub fn read<T: DeserializeOwned>(mut input: impl Read) -> Result<T, SnapshotError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(&mut input, &mut header, "no complete header")?;
    if header[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(SnapshotError::Version { found });
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(SnapshotError::TooLarge { len });
    }
    // At most MAX_PAYLOAD, checked above.
    let mut payload = vec![0u8; len as usize];
    read_exact(
        &mut input,
        &mut payload,
        "the state is shorter than its header says",
    )?;
    let mut crc = [0u8; 4];
    read_exact(&mut input, &mut crc, "no checksum")?;
    let found = u32::from_le_bytes(crc);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(&payload);
    let computed = hasher.finalize();
    if found != computed {
        return Err(SnapshotError::Checksum { found, computed });
    }
    let mut extra = [0u8; 1];
    match input.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(SnapshotError::TrailingBytes),
        Err(e) => return Err(SnapshotError::Read(e)),
    }
    serde_json::from_slice(&payload).map_err(SnapshotError::Decode)
}

fn read_exact(
    input: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated(what),
        _ => SnapshotError::Read(e),
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct State {
        a: u32,
        b: Vec<u16>,
        #[serde(default)]
        added_later: bool,
    }

    fn file() -> Vec<u8> {
        let mut out = Vec::new();
        write(
            &mut out,
            &State {
                a: 7,
                b: vec![1, 2],
                added_later: true,
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let state: State = read(&file()[..]).unwrap();
        assert_eq!(
            state,
            State {
                a: 7,
                b: vec![1, 2],
                added_later: true
            }
        );
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = file();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "truncated: no complete header"),
            (good[..10].to_vec(), "truncated: no complete header"),
            (good[..good.len() - 5].to_vec(), "truncated"),
            (good[..good.len() - 2].to_vec(), "truncated: no checksum"),
            ([&good[..], b"x"].concat(), "bytes after its checksum"),
        ];
        let mut magic = good.clone();
        magic[0] = b'X';
        cases.push((magic, "not a berth snapshot"));
        let mut version = good.clone();
        version[8] = 2;
        cases.push((version, "format version 2; this berth reads version 1"));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push((huge, "more than the limit of 16777216"));
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        cases.push((flipped, "corrupt: its checksum"));
        for (bytes, want) in cases {
            let e = read::<State>(&bytes[..]).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?}: {e}");
        }
    }

    #[test]
    fn a_field_added_later_defaults_and_an_unknown_one_is_refused() {
        let mut old = Vec::new();
        write(&mut old, &serde_json::json!({"a": 1, "b": []})).unwrap();
        let state: State = read(&old[..]).unwrap();
        assert!(!state.added_later);
        let mut newer = Vec::new();
        write(
            &mut newer,
            &serde_json::json!({"a": 1, "b": [], "from_the_future": 1}),
        )
        .unwrap();
        let e = read::<State>(&newer[..]).unwrap_err().to_string();
        assert!(e.contains("unknown field `from_the_future`"), "{e}");
    }
}
