//! Builds the busybox images and the Debian image the end-to-end tests import and load, into the cache they
//! read (`berth_tests::busybox_image`), before the emulated hosts start: there, under one
//! emulated CPU shared with running microVMs, compiling `netprobe` took over two minutes,
//! and every host built the same images again. A test still builds an image it finds
//! missing, so this is a head start, never a requirement.

fn main() {
    for kind in ["rootfs", "archive", "netprobe"] {
        let started = std::time::Instant::now();
        let path = berth_tests::busybox_image(kind);
        println!(
            "berth-test-images: {kind}: {} ({:.1} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let started = std::time::Instant::now();
    let path = berth_tests::debian_image();
    println!(
        "berth-test-images: debian: {} ({:.1} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
