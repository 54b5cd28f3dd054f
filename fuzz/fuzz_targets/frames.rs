//! Everything a peer can send, as raw bytes: a stream of frames, and bare frame bodies,
//! through every decoder both sides use. Nothing may panic; whatever decodes and validates
//! must survive an encode/decode round trip unchanged.
#![no_main]

use std::io::Cursor;

use agent_protocol::{
    decode, encode, parse_header, parse_request, read_frame_body, Notification, Response,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(msg: &T, parse: impl Fn(&[u8]) -> Option<T>)
where
    T: serde::Serialize + PartialEq + std::fmt::Debug,
{
    // Re-encoding may grow past the frame cap (escapes); that is a clean error.
    if let Ok(frame) = encode(msg) {
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(parse(&frame[4..]).as_ref(), Some(msg));
    }
}

fn check(body: &[u8]) {
    if let Ok(h) = parse_header(body) {
        assert!(h.validate().is_ok());
        round_trip(&h, |b| parse_header(b).ok());
    }
    if let Ok(r) = parse_request(body) {
        assert!(r.validate().is_ok());
        round_trip(&r, |b| parse_request(b).ok());
    } else if let Err(e) = parse_request(body) {
        let _ = (e.code(), e.describe());
    }
    if let Ok(r) = decode::<Response>(body) {
        if r.validate().is_ok() {
            round_trip(&r, |b| decode::<Response>(b).ok());
        }
    }
    if let Ok(n) = decode::<Notification>(body) {
        let _ = n.validate();
        round_trip(&n, |b| decode::<Notification>(b).ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    for _ in 0..16 {
        match read_frame_body(&mut cur) {
            Ok(body) => check(&body),
            Err(_) => break,
        }
    }
    check(data);
});
