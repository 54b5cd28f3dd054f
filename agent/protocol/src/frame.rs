//! Framing: a `u32` big-endian body length, then that many bytes of JSON.
//!
//! Reads are exact (no read-ahead buffer), so that after the first frame of a stream
//! connection the raw bytes that follow stay in the socket for whoever reads next.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::MAX_FRAME_LEN;

/// Why a frame could not be read, decoded, encoded or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly, at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("frame truncated: {got} of {expected} bytes arrived")]
    Truncated { expected: usize, got: usize },
    /// The length prefix announces more than [`MAX_FRAME_LEN`]; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The transport failed.
    #[error("frame I/O failed")]
    Io(#[source] io::Error),
    /// The body is not JSON, or not JSON of the expected message type.
    #[error("frame body is not a valid message")]
    Decode(#[source] serde_json::Error),
    /// The message could not be turned into JSON.
    #[error("message could not be encoded")]
    Encode(#[source] serde_json::Error),
}

impl FrameError {
    /// True if the transport gave up because a read or write timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads into `buf` until it is full or the peer closes; returns how many bytes arrived.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}

/// Reads one frame and returns its body, unparsed.
///
/// The announced length is checked against [`MAX_FRAME_LEN`] before any buffer is allocated.
pub fn read_frame_body<R: Read + ?Sized>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    match read_full(r, &mut header)? {
        0 => return Err(FrameError::Closed),
        4 => {}
        got => return Err(FrameError::Truncated { expected: 4, got }),
    }
    let len = u32::from_be_bytes(header);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        })?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got != len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(body)
}

/// Parses a frame body as a message of type `T`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(FrameError::Decode)
}

/// Reads one frame and parses it as a message of type `T`.
pub fn read_frame<T: DeserializeOwned, R: Read + ?Sized>(r: &mut R) -> Result<T, FrameError> {
    decode(&read_frame_body(r)?)
}

/// Encodes `msg` as a complete frame (length prefix included).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, msg).map_err(FrameError::Encode)?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    let prefix = u32::try_from(len)
        .map_err(|_| FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        })?
        .to_be_bytes();
    out[..4].copy_from_slice(&prefix);
    Ok(out)
}

/// Writes `msg` as one frame, in a single `write_all` so a frame is never interleaved.
pub fn write_frame<T: Serialize + ?Sized, W: Write + ?Sized>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectionHeader, Request, Response, PROTOCOL_VERSION};
    use std::io::Cursor;

    fn raw_frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trip_keeps_following_bytes_unread() {
        let hdr = ConnectionHeader::Hello {
            protocol_version: PROTOCOL_VERSION,
        };
        let mut buf = encode(&hdr).unwrap();
        buf.extend_from_slice(b"raw stdin bytes");
        let mut cur = Cursor::new(buf);
        let back: ConnectionHeader = read_frame(&mut cur).unwrap();
        assert_eq!(back, hdr);
        let mut rest = Vec::new();
        cur.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"raw stdin bytes");
    }

    #[test]
    fn two_frames_in_a_row() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Response::Ok).unwrap();
        write_frame(&mut buf, &Response::Started { pid: 7 }).unwrap();
        let mut cur = Cursor::new(buf);
        assert_eq!(read_frame::<Response, _>(&mut cur).unwrap(), Response::Ok);
        assert_eq!(
            read_frame::<Response, _>(&mut cur).unwrap(),
            Response::Started { pid: 7 }
        );
        assert!(matches!(
            read_frame::<Response, _>(&mut cur),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn empty_stream_is_clean_close() {
        assert!(matches!(
            read_frame_body(&mut Cursor::new(Vec::new())),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn truncated_header() {
        assert!(matches!(
            read_frame_body(&mut Cursor::new(vec![0, 0])),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn truncated_body() {
        let mut f = raw_frame(br#"{"type":"ok"}"#);
        f.truncate(f.len() - 3);
        assert!(matches!(
            read_frame_body(&mut Cursor::new(f)),
            Err(FrameError::Truncated {
                expected: 13,
                got: 10
            })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        // Only the header is present: a reader that allocated or waited for the body would
        // report truncation instead.
        let f = u32::MAX.to_be_bytes().to_vec();
        match read_frame_body(&mut Cursor::new(f)) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("unexpected {other:?}"),
        }
        let f = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        assert!(matches!(
            read_frame_body(&mut Cursor::new(f)),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_at_the_limit_is_accepted() {
        let body = vec![b' '; MAX_FRAME_LEN];
        let got = read_frame_body(&mut Cursor::new(raw_frame(&body))).unwrap();
        assert_eq!(got.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn encoding_refuses_oversized_messages() {
        let big = "x".repeat(MAX_FRAME_LEN);
        assert!(matches!(
            encode(&Request::StartProcess { id: big }),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_json_is_a_decode_error() {
        for body in [
            &b"\xff\xfe not json"[..],
            b"",
            b"{",
            b"[1,2,3]",
            b"{\"type\": 5}",
            b"null",
        ] {
            let r = read_frame::<Request, _>(&mut Cursor::new(raw_frame(body)));
            assert!(matches!(r, Err(FrameError::Decode(_))), "{body:?}: {r:?}");
        }
    }

    #[test]
    fn unknown_variant_is_a_decode_error() {
        let r = read_frame::<Request, _>(&mut Cursor::new(raw_frame(
            br#"{"type":"mount_share","tag":"rootfs"}"#,
        )));
        assert!(matches!(r, Err(FrameError::Decode(_))));
    }

    #[test]
    fn io_errors_and_timeouts_are_reported() {
        struct Failing(io::ErrorKind);
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(self.0))
            }
        }
        let e = read_frame_body(&mut Failing(io::ErrorKind::WouldBlock)).unwrap_err();
        assert!(e.is_timeout());
        let e = read_frame_body(&mut Failing(io::ErrorKind::ConnectionReset)).unwrap_err();
        assert!(matches!(e, FrameError::Io(_)) && !e.is_timeout());
    }
}
