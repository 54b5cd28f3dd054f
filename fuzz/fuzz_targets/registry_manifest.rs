//! A registry's manifest or index, as `docker pull` reads it (`image::pull::parse_manifest`):
//! nothing panics, an index gives a well-formed digest, and an image's descriptors are
//! well-formed with sizes that are not negative.
#![no_main]

use engine::image::pull::{parse_manifest, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_manifest(data) {
        Ok(Parsed::Index { digest, .. }) => {
            assert!(engine::image::reference::valid_digest(&digest), "{digest}")
        }
        Ok(Parsed::Image { config, layers }) => {
            for d in std::iter::once(&config).chain(&layers) {
                assert!(d.size >= 0 && engine::image::reference::valid_digest(&d.digest));
            }
        }
        Err(_) => {}
    }
});
