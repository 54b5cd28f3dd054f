//! Image references and reference filters, as clients send them (`docker run NAME`,
//! `docker images --filter reference=PATTERN`): nothing panics, a parsed reference printed
//! in full reads back as itself, and glob matching ends.
#![no_main]

use engine::image::glob_match;
use engine::image::reference::{AnyReference, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse_normalized(s) {
        let again = Reference::parse_normalized(&r.to_string())
            .unwrap_or_else(|e| panic!("{r} does not read back: {e}"));
        assert_eq!(again, r);
        let _ = Reference::parse_normalized(&r.familiar());
    }
    let _ = AnyReference::parse(s);
    // A pattern, then a name.
    if let Some((pattern, name)) = s.split_once('\n') {
        let _ = glob_match(pattern, name);
    }
});
