//! `bench-fsops DIR MIB FILES`: the file I/O that `bench-fs` measures, run inside a
//! container on its bind mount or volume. Prints one JSON line: sequential write and read
//! (MB/s, 1 MiB blocks, the write fsynced, the file's cached pages dropped with
//! `posix_fadvise` before the read) and small-file rates (creates, stats, unlinks per
//! second over FILES empty files). Timings are taken here, so a container's start is not
//! in them.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(mib), Some(files)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: bench-fsops DIR MIB FILES");
        std::process::exit(2);
    };
    let (Ok(mib), Ok(files)) = (mib.parse::<usize>(), files.parse::<usize>()) else {
        eprintln!("usage: bench-fsops DIR MIB FILES");
        std::process::exit(2);
    };
    if let Err(e) = measure(Path::new(dir), mib, files) {
        eprintln!("bench-fsops: {e}");
        std::process::exit(1);
    }
}

fn measure(dir: &Path, mib: usize, files: usize) -> std::io::Result<()> {
    let data = dir.join("bench-fsops.data");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut f = std::fs::File::create(&data)?;
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    drop(f);
    let write = mib as f64 * 1.048_576 / started.elapsed().as_secs_f64();

    let mut f = std::fs::File::open(&data)?;
    // SAFETY: posix_fadvise takes an open descriptor and plain integers.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0usize;
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => total += n,
        }
    }
    let read = total as f64 / 1e6 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&data)?;

    let small = dir.join("bench-fsops.small");
    std::fs::create_dir_all(&small)?;
    let names: Vec<_> = (0..files).map(|i| small.join(format!("f{i}"))).collect();
    let rate = |started: Instant| files as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for n in &names {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(n)?;
    }
    let creates = rate(started);
    let started = Instant::now();
    for n in &names {
        std::fs::metadata(n)?;
    }
    let stats = rate(started);
    let started = Instant::now();
    for n in &names {
        std::fs::remove_file(n)?;
    }
    let unlinks = rate(started);
    std::fs::remove_dir(&small)?;
    println!(
        "{{\"write_mbs\":{write:.1},\"read_mbs\":{read:.1},\"creates\":{creates:.0},\"stats\":{stats:.0},\"unlinks\":{unlinks:.0}}}"
    );
    Ok(())
}
