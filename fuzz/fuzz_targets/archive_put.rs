//! `PUT /containers/{id}/archive` (`docker cp` into a container): a client's tar stream,
//! plain or gzip, extracted into a directory confined to the container's root. Nothing
//! panics, and nothing is written, linked or removed outside that root, whatever the
//! archive's paths, links and types.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use engine::container::archive::{extract, ExtractOptions};
use libfuzzer_sys::fuzz_target;

/// Destinations a client may name, picked by the input's first byte.
const PATHS: &[&str] = &["/", "/dir", "/dir/", "/dir/.", "/link", "/file", "/missing"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, tar)) = data.split_first() else {
        return;
    };
    let s = scratch::Scratch::get("archive-put");
    // What a container's root may already hold: a directory, a file, and a symlink that
    // would lead to the scratch's sentinel if followed outside the root.
    std::fs::create_dir(s.inside().join("dir")).unwrap();
    std::fs::write(s.inside().join("file"), b"x").unwrap();
    std::os::unix::fs::symlink("../outside", s.inside().join("link")).unwrap();
    let root = std::fs::File::open(s.inside()).unwrap();
    let opts = ExtractOptions {
        no_overwrite_dir_non_dir: pick & 0x80 != 0,
        copy_uid_gid: pick & 0x40 != 0,
    };
    let path = PATHS[usize::from(pick & 0x3f) % PATHS.len()];
    let _ = extract(&root, path, tar, opts);
    drop(root);
    s.check_and_clear();
});
