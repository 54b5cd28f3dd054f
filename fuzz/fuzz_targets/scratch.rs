//! A scratch directory for targets that write files: `inside` is handed to the code under
//! test; `outside`, beside it, holds a sentinel. After each input, nothing but `inside` may
//! have changed: a write, link or removal that escaped is a finding, not just a panic.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SENTINEL: &[u8] = b"berth fuzz sentinel\n";

pub struct Scratch {
    base: PathBuf,
    inside: PathBuf,
    sentinel_ino: u64,
}

impl Scratch {
    /// This process's scratch directory for `name`, made once.
    pub fn get(name: &str) -> &'static Scratch {
        static SCRATCH: OnceLock<Scratch> = OnceLock::new();
        SCRATCH.get_or_init(|| {
            let base =
                std::env::temp_dir().join(format!("berth-fuzz-{name}-{}", std::process::id()));
            if base.exists() {
                engine::fsutil::remove_tree(&base).expect("an old scratch directory");
            }
            std::fs::create_dir_all(base.join("outside")).unwrap();
            let sentinel = base.join("outside/sentinel");
            std::fs::write(&sentinel, SENTINEL).unwrap();
            let inside = base.join("inside");
            std::fs::create_dir(&inside).unwrap();
            let sentinel_ino = std::fs::metadata(&sentinel).unwrap().ino();
            Scratch {
                base,
                inside,
                sentinel_ino,
            }
        })
    }

    pub fn inside(&self) -> &Path {
        &self.inside
    }

    /// Asserts nothing outside `inside` changed, then empties `inside` for the next input.
    pub fn check_and_clear(&self) {
        let names = sorted_names(&self.base);
        assert_eq!(
            names,
            ["inside", "outside"],
            "something escaped into {:?}",
            self.base
        );
        let outside: Vec<_> = std::fs::read_dir(self.base.join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["sentinel"], "something escaped into outside/");
        let sentinel = self.base.join("outside/sentinel");
        let meta = std::fs::symlink_metadata(&sentinel).unwrap();
        assert!(
            meta.is_file() && meta.ino() == self.sentinel_ino && meta.nlink() == 1,
            "the sentinel was replaced or linked to"
        );
        assert_eq!(
            std::fs::read(&sentinel).unwrap(),
            SENTINEL,
            "the sentinel was written"
        );
        assert_eq!(meta.mode() & 0o7777, 0o644, "the sentinel's mode changed");
        engine::fsutil::remove_tree(&self.inside).expect("removing what was made inside");
        std::fs::create_dir(&self.inside).unwrap();
    }
}

/// The names in directory `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}
