//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and its validation.

use serde::{Deserialize, Serialize};
use vm_memory::{ByteValued, Le16, Le32, Le64};

/// Size of the header on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload we accept in one guest packet or put in one packet to the guest
/// (Linux's own cap is 64 KiB).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// The host's CID.
pub const HOST_CID: u64 = 2;

/// Stream sockets; the only type berth offers.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more.
pub mod shutdown {
    pub const RCV: u32 = 1;
    pub const SEND: u32 = 2;
}

/// The header as it sits in guest memory (little endian, packed).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawHeader {
    pub src_cid: Le64,
    pub dst_cid: Le64,
    pub src_port: Le32,
    pub dst_port: Le32,
    pub len: Le32,
    pub type_: Le16,
    pub op: Le16,
    pub flags: Le32,
    pub buf_alloc: Le32,
    pub fwd_cnt: Le32,
}

// SAFETY: RawHeader is repr(C, packed) and made only of little-endian integer wrappers, so
// it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for RawHeader {}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_LEN);

/// A decoded header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl From<RawHeader> for Header {
    fn from(r: RawHeader) -> Self {
        Header {
            src_cid: r.src_cid.into(),
            dst_cid: r.dst_cid.into(),
            src_port: r.src_port.into(),
            dst_port: r.dst_port.into(),
            len: r.len.into(),
            type_: r.type_.into(),
            op: r.op.into(),
            flags: r.flags.into(),
            buf_alloc: r.buf_alloc.into(),
            fwd_cnt: r.fwd_cnt.into(),
        }
    }
}

impl From<Header> for RawHeader {
    fn from(h: Header) -> Self {
        RawHeader {
            src_cid: h.src_cid.into(),
            dst_cid: h.dst_cid.into(),
            src_port: h.src_port.into(),
            dst_port: h.dst_port.into(),
            len: h.len.into(),
            type_: h.type_.into(),
            op: h.op.into(),
            flags: h.flags.into(),
            buf_alloc: h.buf_alloc.into(),
            fwd_cnt: h.fwd_cnt.into(),
        }
    }
}

/// Why a packet from the guest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The descriptor chain is shorter than a header.
    #[error("descriptor chain holds {0} bytes, less than a vsock header")]
    Short(usize),
    /// The header claims more payload than the chain carries or than we accept.
    #[error("header claims {claimed} payload bytes; the chain holds {available}, the limit is {MAX_PAYLOAD}")]
    BadLength { claimed: u32, available: usize },
    /// The source CID is not the guest's.
    #[error("source CID {0} is not the guest's")]
    SpoofedSource(u64),
    /// A payload on an operation that carries none.
    #[error("operation {0} carries a payload")]
    UnexpectedPayload(u16),
}

/// Checks a guest packet's header against the guest's CID and the bytes that follow it.
pub fn validate(h: &Header, guest_cid: u64, payload_available: usize) -> Result<(), PacketError> {
    if h.src_cid != guest_cid {
        return Err(PacketError::SpoofedSource(h.src_cid));
    }
    if h.len as usize > payload_available || h.len as usize > MAX_PAYLOAD {
        return Err(PacketError::BadLength {
            claimed: h.len,
            available: payload_available,
        });
    }
    if h.len != 0 && h.op != op::RW {
        return Err(PacketError::UnexpectedPayload(h.op));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 1025,
            len: 10,
            type_: TYPE_STREAM,
            op: op::RW,
            ..Default::default()
        }
    }

    #[test]
    fn roundtrip_through_the_wire_layout() {
        let h = good();
        let raw = RawHeader::from(h);
        let bytes = raw.as_slice().to_vec();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(&bytes[..8], &3u64.to_le_bytes());
        let back = Header::from(*RawHeader::from_slice(&bytes).unwrap());
        assert_eq!(back, h);
    }

    #[test]
    fn validation() {
        assert_eq!(validate(&good(), 3, 10), Ok(()));
        assert!(matches!(
            validate(&good(), 3, 9),
            Err(PacketError::BadLength { .. })
        ));
        assert_eq!(validate(&good(), 4, 10), Err(PacketError::SpoofedSource(3)));
        let mut big = good();
        big.len = u32::MAX;
        assert!(matches!(
            validate(&big, 3, usize::MAX),
            Err(PacketError::BadLength { .. })
        ));
        let mut req = good();
        req.op = op::REQUEST;
        assert_eq!(
            validate(&req, 3, 10),
            Err(PacketError::UnexpectedPayload(op::REQUEST))
        );
    }
}
