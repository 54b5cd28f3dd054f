//! A registry's answer to `docker search` (`image::search::parse_answer`): nothing panics,
//! and no result claims an automated build (dockerd no longer passes that on).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(results) = engine::image::search::parse_answer(data) {
        assert!(results.iter().all(|r| !r.is_automated));
    }
});
