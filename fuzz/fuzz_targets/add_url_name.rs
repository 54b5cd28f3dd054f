//! The name ADD gives a download (`build::fetch::file_name`), from a URL's path (the
//! input's first line) and a `Content-Disposition` header (the rest): nothing panics, and a
//! name is one path element, never `.`, `..` or empty, so a download cannot land outside
//! its directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, disposition) = text.split_once('\n').unwrap_or((&text, ""));
    let disposition = (!disposition.is_empty()).then_some(disposition);
    if let Some(name) = engine::build::fetch::file_name(path, disposition) {
        assert!(
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']),
            "{name:?}"
        );
    }
});
