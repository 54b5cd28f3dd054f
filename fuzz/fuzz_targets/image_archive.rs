//! `docker load` (docker-save and OCI layout archives) and `docker import` into an image
//! store: nothing panics, and nothing escapes the store.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use engine::image::archive::ImportOptions;
use engine::image::ImageStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = scratch::Scratch::get("archive");
    let store = ImageStore::open(&s.inside().join("image")).expect("an image store");
    let _ = store.load(data, &mut |_| {});
    let options = ImportOptions {
        tag: None,
        comment: "fuzz".into(),
        config: Default::default(),
    };
    let _ = store.import(data, &options);
    drop(store);
    s.check_and_clear();
});
