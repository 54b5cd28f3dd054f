//! Detach keys as a client names them (`detachKeys`, an exec's `DetachKeys`), then a
//! terminal's input scanned for them: nothing panics, and how the input is split into reads
//! changes nothing of what reaches the container or of whether the client detached.
#![no_main]

use berthd::detach::{parse, Scanner};
use libfuzzer_sys::fuzz_target;

/// What `keys` lets through from `input` read `chunk` bytes at a time, and whether the
/// client detached.
fn scan(keys: &[u8], input: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut scanner = Scanner::new(keys.to_vec());
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        if scanner.feed(piece, &mut out) {
            return (out, true);
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    // The keys' notation up to the first NUL, the typed input after it; the first byte of
    // the input also picks the read size.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (spec, rest) = data.split_at(split);
    let Ok(spec) = std::str::from_utf8(spec) else {
        return;
    };
    let Ok(keys) = parse(spec) else {
        return;
    };
    assert!(
        !keys.is_empty() && keys.len() <= 16,
        "{spec:?} gave {keys:?}"
    );
    let input = rest.get(1..).unwrap_or_default();
    let chunk = usize::from(rest.get(1).copied().unwrap_or(1));
    let whole = scan(&keys, input, input.len());
    assert_eq!(scan(&keys, input, chunk), whole, "reads of {chunk} bytes");
    assert_eq!(scan(&keys, input, 1), whole, "reads of one byte");
    // What passes through is never longer than what was typed.
    assert!(whole.0.len() <= input.len());
});
