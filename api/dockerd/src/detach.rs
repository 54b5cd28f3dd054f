//! Detach keys (`docker attach --detach-keys`, `docker run -it`'s ctrl-p ctrl-q): on a
//! terminal stream, the sequence typed by the client ends its attachment and leaves the
//! container running, as dockerd does; the keys never reach the container. Streams without
//! a terminal are copied as they are (dockerd scans only terminal input).

/// Docker's default: ctrl-p, ctrl-q.
pub const DEFAULT: &[u8] = &[0x10, 0x11];

/// At most this many keys in a sequence: the scanner holds back up to this many bytes.
const MAX_KEYS: usize = 16;

/// Parses Docker's notation: comma-separated keys, each one character or `ctrl-X` with X
/// a letter or one of `@[\]^_`. An empty string means the default.
pub fn parse(spec: &str) -> Result<Vec<u8>, String> {
    if spec.is_empty() {
        return Ok(DEFAULT.to_vec());
    }
    let invalid = || format!("Invalid detach keys ({spec}) provided");
    let mut keys = Vec::new();
    for key in spec.split(',') {
        let byte = match key.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_lowercase();
                match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(invalid()),
                }
            }
            None if key.len() == 1 => key.as_bytes()[0],
            _ => return Err(invalid()),
        };
        keys.push(byte);
        if keys.len() > MAX_KEYS {
            return Err(invalid());
        }
    }
    Ok(keys)
}

/// Scans a client's input for the detach sequence. Bytes that might begin it are held
/// back until the next read says whether they do.
#[derive(Debug)]
pub struct Scanner {
    keys: Vec<u8>,
    matched: usize,
}

impl Scanner {
    pub fn new(keys: Vec<u8>) -> Scanner {
        Scanner { keys, matched: 0 }
    }

    /// Appends to `out` what goes on to the container; `true` once the whole sequence was
    /// typed (what follows it in `input` is dropped, as the client is detached).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        if self.keys.is_empty() {
            out.extend_from_slice(input);
            return false;
        }
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return true;
                }
                continue;
            }
            // Not the sequence after all: what was held back goes on, and this byte may
            // begin a new attempt.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return true;
                }
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_notation() {
        assert_eq!(parse("").unwrap(), DEFAULT);
        assert_eq!(parse("ctrl-p,ctrl-q").unwrap(), DEFAULT);
        assert_eq!(parse("ctrl-@,ctrl-[,ctrl-_,a").unwrap(), [0, 27, 31, b'a']);
        assert_eq!(parse("ctrl-X").unwrap(), [24]);
        for bad in ["ctrl-", "ctrl-1", "ab", "ctrl-p,", ",", "ctrl-pq"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, format!("Invalid detach keys ({bad}) provided"));
        }
        assert!(parse(&vec!["a"; MAX_KEYS + 1].join(",")).is_err());
    }

    fn run(keys: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut s = Scanner::new(keys.to_vec());
        let mut out = Vec::new();
        for c in chunks {
            if s.feed(c, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn the_sequence_detaches_and_never_reaches_the_container() {
        assert_eq!(
            run(DEFAULT, &[b"ls\n\x10\x11rest"]),
            (b"ls\n".to_vec(), true)
        );
        // Split across reads.
        assert_eq!(run(DEFAULT, &[b"a\x10", b"\x11"]), (b"a".to_vec(), true));
        // A partial sequence goes on once it is clear it is not the sequence.
        assert_eq!(run(DEFAULT, &[b"\x10x"]), (b"\x10x".to_vec(), false));
        assert_eq!(run(DEFAULT, &[b"\x10\x10\x11"]), (b"\x10".to_vec(), true));
        assert_eq!(run(b"\x11", &[b"ab\x11"]), (b"ab".to_vec(), true));
        assert_eq!(run(b"", &[b"\x10\x11"]), (b"\x10\x11".to_vec(), false));
    }
}
