//! The body of `POST /containers/create`: checked against the shape dockerd decodes, then
//! read option by option. Nothing panics; what is accepted merges with an image's defaults.
#![no_main]

use engine::container::spec::{merge, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(request) = parse(&body) {
        let mut config = request.config;
        merge(&mut config, &Default::default());
        let _ = config.argv();
    }
});
