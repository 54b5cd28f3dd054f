//! Query strings and Docker's `filters` parameter, as they arrive in a request's URL.
#![no_main]

use berthd::query::Query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let q = Query::parse(Some(s));
    let _ = q.filters();
    let _ = q.int::<u64>("t");
    let _ = q.int::<i32>("tail");
    let _ = q.flag("all");
    let _ = q.all("filters");
    // The same bytes as the filters' JSON itself.
    let _ = Query::parse(Some(&format!("filters={s}"))).filters();
});
