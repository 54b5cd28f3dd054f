//! The control protocol of a running `berth-vmm` (its `--control` socket): one request per
//! connection, a JSON line each way, versioned.
//!
//! ```text
//! → {"version":1,"request":"pause"}
//! ← {"ok":true}
//! → {"version":1,"request":"snapshot","state":"/run/x/vm.state","memory":"/run/x/vm.mem"}
//! ← {"ok":false,"error":"cannot create /run/x/vm.state: Permission denied (os error 13)"}
//! ```
//!
//! Requests: `pause` (every vCPU parked, acknowledged), `resume`, `snapshot` (pauses, writes
//! the state and memory files; the VM stays paused), `shutdown` (the VMM stops the VM and
//! exits 0), `metrics` (`{"ok":true,"metrics":{"vcpus":[{"io_exits":..,"mmio_exits":..,
//! "interrupted":..}],"virtio":[{"device":{slot},"status":..,"interrupts":..,
//! "interrupts_again":..,"queues_next_used":[..]}]}}`). A request of another version, an unknown request or a line longer than
//! [`MAX_LINE`] gets an error reply naming it; the VMM is never affected by what a client
//! sends. New requests and reply fields may be added within a version (old clients ignore
//! what they do not know); a change of meaning is a new version.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol version this side speaks.
pub const VERSION: u32 = 1;
/// The longest line either side reads.
pub const MAX_LINE: usize = 64 << 10;

/// A request to a running VMM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Pause,
    Resume,
    Snapshot {
        state: PathBuf,
        memory: PathBuf,
    },
    Shutdown,
    /// Counters: every vCPU's exits by kind, every virtio device's interrupts and queue
    /// positions (the reply's `metrics`; its shape is the VMM's `VmMetrics`).
    Metrics,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    #[serde(flatten)]
    request: serde_json::Value,
}

/// The VMM's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            ok: true,
            error: None,
            metrics: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(message.into()),
            metrics: None,
        }
    }
}

/// Why a control request failed on the client's side, or what the VMM refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the VMM's control socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM's control socket failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("the VMM's reply is not valid: {0}")]
    BadReply(String),
    #[error("the VMM refused: {0}")]
    Refused(String),
}

/// Reads one line of at most [`MAX_LINE`] bytes (without its newline).
pub fn read_line(r: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = BufReader::new(r.take(MAX_LINE as u64 + 1)).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if line.len() > MAX_LINE {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                "a line without its end".to_string()
            },
        ));
    }
    line.pop();
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a line not in UTF-8"))
}

/// Decodes a request line; the error is what to reply.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let envelope: Envelope =
        serde_json::from_str(line).map_err(|e| format!("not a control request: {e}"))?;
    if envelope.version != VERSION {
        return Err(format!(
            "control protocol version {} is not spoken here (this VMM speaks version {VERSION})",
            envelope.version
        ));
    }
    serde_json::from_value(envelope.request).map_err(|e| format!("not a control request: {e}"))
}

/// Encodes a request as its line (with the newline).
pub fn encode_request(request: &Request) -> String {
    let mut value = serde_json::to_value(request).expect("requests serialise");
    if let serde_json::Value::Object(o) = &mut value {
        o.insert("version".into(), VERSION.into());
    }
    format!("{value}\n")
}

/// Encodes a reply as its line (with the newline).
pub fn encode_reply(reply: &Reply) -> String {
    format!(
        "{}\n",
        serde_json::to_string(reply).expect("replies serialise")
    )
}

/// Sends `request` to the VMM listening on `socket` and waits up to `timeout` for its reply.
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<(), ControlError> {
    exchange(socket, request, timeout).map(drop)
}

/// Asks the VMM behind `socket` for its counters (`metrics`).
pub fn metrics(socket: &Path, timeout: Duration) -> Result<serde_json::Value, ControlError> {
    exchange(socket, &Request::Metrics, timeout)?
        .metrics
        .ok_or_else(|| ControlError::BadReply("a metrics reply without metrics".into()))
}

/// Sends `request`, returns the VMM's successful reply.
fn exchange(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ControlError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ControlError::Io)?;
    stream
        .write_all(encode_request(request).as_bytes())
        .map_err(ControlError::Io)?;
    let line = read_line(&mut stream)
        .map_err(ControlError::Io)?
        .ok_or_else(|| ControlError::BadReply("the VMM closed the connection".into()))?;
    let reply: Reply =
        serde_json::from_str(&line).map_err(|e| ControlError::BadReply(e.to_string()))?;
    if reply.ok {
        Ok(reply)
    } else {
        Err(ControlError::Refused(reply.error.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_strangers_are_named() {
        for r in [
            Request::Pause,
            Request::Resume,
            Request::Shutdown,
            Request::Metrics,
            Request::Snapshot {
                state: "/s".into(),
                memory: "/m".into(),
            },
        ] {
            let line = encode_request(&r);
            assert!(line.contains("\"version\":1"), "{line}");
            assert_eq!(decode_request(line.trim_end()).unwrap(), r);
        }
        let e = decode_request(r#"{"version":2,"request":"pause"}"#).unwrap_err();
        assert!(e.contains("version 2 is not spoken here"), "{e}");
        let e = decode_request(r#"{"version":1,"request":"reboot"}"#).unwrap_err();
        assert!(e.contains("unknown variant `reboot`"), "{e}");
        assert!(decode_request("[]").is_err());
        assert!(decode_request(r#"{"version":1,"request":"snapshot"}"#).is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'x'; MAX_LINE + 10];
        let e = read_line(&mut &long[..]).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        assert_eq!(read_line(&mut &b"ab\n"[..]).unwrap().as_deref(), Some("ab"));
        assert_eq!(read_line(&mut &b""[..]).unwrap(), None);
        assert!(read_line(&mut &b"no end"[..]).is_err());
    }
}
