//! The agent's reading of an image's /etc/passwd and /etc/group (both the image's, so the
//! container's author's) for `--user`, `--group-add` and HOME: NUL-separated user, passwd,
//! group. Nothing panics.
#![no_main]

use berth_agent::user::{additional_groups, home_for_uid, resolve_user, Databases};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let db = Databases {
        passwd: parts.next().map(<[u8]>::to_vec),
        group: parts.next().map(<[u8]>::to_vec),
    };
    if let Ok(id) = resolve_user(&user, &db) {
        let _ = home_for_uid(id.uid, &db);
    }
    let _ = additional_groups(&[user], &db);
});
