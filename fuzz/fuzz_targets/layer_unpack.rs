//! A layer (plain, gzip, bzip2, zstd or xz tar, as `docker import`, `docker load` and registries
//! deliver it, its author hostile) unpacked into a directory: nothing panics, nothing is written,
//! linked or removed outside that directory, and what was unpacked can be removed.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use engine::image::unpack::unpack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = scratch::Scratch::get("unpack");
    let _ = unpack(data, s.inside(), &mut std::io::sink());
    s.check_and_clear();
});
