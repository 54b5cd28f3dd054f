//! xz streams (`docker load` and `docker import` of a `.tar.xz`, ADD of an xz archive, a
//! tar put into a container), decoded as they are read, as dockerd decodes them.
//!
//! The decoder is xz4rust, a memory-safe Rust port of xz-embedded built without `unsafe`.
//! Its dictionary grows as a stream asks, up to [`DICT_MAX`]: `xz -9` writes streams that
//! need 64 MiB, so every preset of xz(1) decodes, and a hostile stream cannot make the daemon
//! hold more than that for it.

use std::io::{self, BufRead, Read};

use xz4rust::{XzDecoder, XzError, XzNextBlockResult};

/// The largest dictionary a stream may ask for: that of `xz -9` and `xz -9e`.
pub const DICT_MAX: usize = 64 << 20;

/// The first dictionary allocated; it grows to what the stream's header asks, up to
/// [`DICT_MAX`].
const DICT_FIRST: usize = 1 << 20;

/// Every stream of a multi-stream xz file (as `cat a.xz b.xz` or `xz --block-list` make),
/// with the zero padding the format allows between them, decoded as it is read.
pub struct XzStreams<R> {
    source: R,
    decoder: Box<XzDecoder<'static>>,
    /// The last stream ended and no other follows.
    done: bool,
    /// A stream ended: what follows is padding, another stream or the end.
    between: bool,
}

impl<R: BufRead> XzStreams<R> {
    pub fn new(source: R) -> Self {
        Self {
            source,
            decoder: XzDecoder::in_heap_with_alloc_dict_size(DICT_FIRST, DICT_MAX),
            done: false,
            between: false,
        }
    }

    /// Skips the zero padding after a stream; true when another stream follows it.
    fn next_stream(&mut self) -> io::Result<bool> {
        let mut padding = 0u64;
        loop {
            let buf = self.source.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let more = zeros < buf.len();
            self.source.consume(zeros);
            padding += zeros as u64;
            if more {
                if !padding.is_multiple_of(4) {
                    return Err(invalid(
                        "the padding between xz streams is not a multiple of 4",
                    ));
                }
                self.decoder.reset();
                return Ok(true);
            }
        }
        if !padding.is_multiple_of(4) {
            return Err(invalid(
                "the padding after an xz stream is not a multiple of 4",
            ));
        }
        Ok(false)
    }
}

impl<R: BufRead> Read for XzStreams<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            if self.between {
                if !self.next_stream()? {
                    self.done = true;
                    return Ok(0);
                }
                self.between = false;
            }
            let input = self.source.fill_buf()?;
            if input.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the xz stream ends early",
                ));
            }
            let (used, made) = match self.decoder.decode(input, buf) {
                Ok(XzNextBlockResult::NeedMoreData(used, made)) => (used, made),
                Ok(XzNextBlockResult::EndOfStream(used, made)) => {
                    self.between = true;
                    (used, made)
                }
                // No progress with input and room to write: the stream is broken (the
                // decoder keeps partial headers itself, so more input is never what it lacks).
                Err(XzError::NeedsLargerInputBuffer) => {
                    return Err(invalid("the xz stream makes no progress"))
                }
                Err(XzError::DictionaryTooLarge(size)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, DictLimit(size)))
                }
                Err(e) => return Err(invalid(&format!("invalid xz stream: {e}"))),
            };
            self.source.consume(used);
            if made > 0 {
                return Ok(made);
            }
        }
    }
}

/// A stream whose dictionary is over [`DICT_MAX`]: refused, never copied packed (ADD).
#[derive(Debug, thiserror::Error)]
#[error(
    "the xz stream needs a dictionary of {} MiB, over the {} MiB of xz -9",
    .0.div_ceil(1 << 20),
    DICT_MAX >> 20
)]
pub struct DictLimit(u64);

/// Whether `e` is an xz stream refused for its dictionary ([`DictLimit`]).
pub fn is_dict_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DictLimit>())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf 'hello\n' | xz` (xz 5.4, CRC64, one block).
    const HELLO: &[u8] = include_bytes!("testdata/hello.xz");
    /// `printf 'world\n' | xz -9 --check=sha256`.
    const WORLD: &[u8] = include_bytes!("testdata/world.xz");

    fn decode(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // A one-byte buffer: every header and block crosses a boundary of the reads.
        let mut r = XzStreams::new(io::BufReader::with_capacity(1, input));
        let mut chunk = [0u8; 3];
        loop {
            match r.read(&mut chunk)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[test]
    fn streams_decode_one_after_another_across_padding() {
        assert_eq!(decode(HELLO).unwrap(), b"hello\n");
        assert_eq!(decode(WORLD).unwrap(), b"world\n");
        let mut two = HELLO.to_vec();
        two.extend_from_slice(&[0; 8]);
        two.extend_from_slice(WORLD);
        two.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&two).unwrap(), b"hello\nworld\n");
    }

    #[test]
    fn broken_streams_are_refused() {
        // Cut short, anywhere.
        for cut in [1, 12, HELLO.len() / 2, HELLO.len() - 1] {
            assert!(decode(&HELLO[..cut]).is_err(), "cut at {cut}");
        }
        // A flipped bit in the data: its check fails.
        let mut bad = HELLO.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        assert!(decode(&bad).is_err());
        // Padding of other than a multiple of 4, between streams or after the last.
        let mut odd = HELLO.to_vec();
        odd.extend_from_slice(&[0; 3]);
        assert!(decode(&odd).is_err());
        odd.extend_from_slice(WORLD);
        assert!(decode(&odd).is_err());
        // Something else after a stream.
        let mut trailing = HELLO.to_vec();
        trailing.extend_from_slice(b"junk");
        assert!(decode(&trailing).is_err());
    }

    #[test]
    fn a_dictionary_over_that_of_xz_9_is_refused() {
        // `printf 'big\n' | xz --lzma2=dict=128MiB`: the header asks for 128 MiB.
        let big = include_bytes!("testdata/dict128.xz");
        let e = decode(big).unwrap_err();
        assert!(is_dict_limit(&e), "{e}");
        assert_eq!(
            e.to_string(),
            "the xz stream needs a dictionary of 128 MiB, over the 64 MiB of xz -9"
        );
    }
}
