//! `docker import --change` / `docker commit --change` lines (Dockerfile instructions, with
//! JSON and shell forms), NUL between them: applying them never panics.
#![no_main]

use engine::image::changes::apply;
use engine::image::config::ContainerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let changes: Vec<String> = s.split('\0').map(String::from).collect();
    let mut config = ContainerConfig::default();
    let _ = apply(&mut config, &changes);
});
