//! A Dockerfile as `docker build` sends it, read by the classic builder's parser
//! (`engine::build::dockerfile`), then every shell-form argument through what the executor
//! does with it: word splitting, key=value pairs and expansion. Nothing panics or overflows
//! the stack (nesting such as `${A:-${A:-…}}` is as deep as the input makes it), and every
//! instruction starts on a later line than the one before.
#![no_main]

use engine::build::dockerfile::{expand, pairs, parse, words, Args};
use libfuzzer_sys::fuzz_target;

fn lookup(name: &str) -> Option<String> {
    (name == "A").then(|| "v".to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(dockerfile) = parse(data) else {
        return;
    };
    let escape = dockerfile.escape;
    let mut last = 0;
    for i in &dockerfile.instructions {
        assert!(i.line > last, "line {} after line {last}", i.line);
        last = i.line;
        assert!(!i.original.is_empty() && i.original == i.original.trim());
        if let Args::Shell(text) = &i.args {
            let _ = words(text, escape, &lookup);
            let _ = pairs(text, escape, true, &lookup);
            let _ = expand(text, escape, &lookup);
        }
    }
});
