//! Assembles the test guests with the system's GNU assembler and linker (binutils, which
//! every machine that builds Rust with gcc already has).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const VARIANTS: &[&str] = &["HELLO", "IDLE", "PANIC", "FLOOD", "TRIPLE", "COUNT"];

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (binutils must be installed)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from("asm/guest.S");
    let script = PathBuf::from("asm/guest.ld");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", script.display());
    for variant in VARIANTS {
        let lower = variant.to_lowercase();
        let object = out.join(format!("{lower}.o"));
        let elf = out.join(format!("{lower}.elf"));
        // gcc runs the C preprocessor over .S before handing it to `as`.
        run(Command::new("cc")
            .args(["-c", "-m64", "-nostdlib", "-fno-pic"])
            .arg(format!("-DVARIANT_{variant}"))
            .arg(&src)
            .arg("-o")
            .arg(&object));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "--build-id=none",
                "-static",
            ])
            .arg("-T")
            .arg(&script)
            .arg(&object)
            .arg("-o")
            .arg(&elf));
    }
}
