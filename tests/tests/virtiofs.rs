//! virtio-fs end to end: real microVMs (`berth-vmm run --fs`) mounting host directories.
//! Files flow both ways, and every way out of a share that a guest can try fails: `..`,
//! symlinks planted by the host or swapped in by the guest, device nodes, read-only
//! shares. Like the other Linux microVM tests they need a KVM that runs Linux guests: on
//! hosts without one, `make test` runs this binary inside the emulated virtualization host.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_tests::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn ready() -> bool {
    require(linux_guests_supported(), "a KVM that runs Linux guests")
        && require(guest_artifacts(), "the guest kernel and initramfs")
}

/// Runs `script` with `sh -c` in a microVM with the given `--fs` shares.
fn vm(shares: &[String], script: &str) -> Finished {
    let runs = Scratch::new("virtiofs-run");
    let mut cmd = Command::new(bin("berth-vmm"));
    cmd.arg("run").args(["--mem", "256"]);
    cmd.args(["--boot-retries", &boot_retries().to_string()]);
    for share in shares {
        cmd.arg("--fs").arg(share);
    }
    cmd.args(["--", "sh", "-c", script]).env("TMPDIR", &runs.0);
    let out = run(cmd, b"", TIMEOUT);
    note_run_retries(&out.stderr);
    out
}

/// A share under a base directory, with a secret beside it that no guest may read.
struct Layout {
    base: Scratch,
    share: PathBuf,
    secret: String,
}

impl Layout {
    fn new(name: &str) -> Layout {
        let base = Scratch::new(name);
        let share = base.path("share");
        std::fs::create_dir(&share).unwrap();
        let secret = format!("HOST-SECRET-{}-{}", name, std::process::id());
        std::fs::write(base.path("secret"), &secret).unwrap();
        Layout {
            base,
            share,
            secret,
        }
    }

    fn spec(&self, tag: &str, options: &str) -> String {
        format!("{tag}={}{options}", self.share.display())
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.share.join(rel)
    }

    /// The base directory holds only the share and the secret, and the secret is intact.
    fn assert_outside_untouched(&self, out: &Finished) {
        let mut names: Vec<String> = std::fs::read_dir(&self.base.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret", "share"],
            "files appeared outside the share"
        );
        assert_eq!(
            std::fs::read_to_string(self.base.path("secret")).unwrap(),
            self.secret
        );
        assert!(
            !out.stdout.contains(&self.secret) && !out.stderr.contains(&self.secret),
            "the guest read the host's secret: {out:?}"
        );
    }
}

const MOUNT: &str = "mkdir -p /mnt/s && mount -t virtiofs s /mnt/s && cd /mnt/s";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The checksum the guest printed for `name` (sha256sum's "HASH  PATH" lines).
fn guest_sum(out: &Finished, name: &str) -> String {
    out.stdout
        .lines()
        .find(|l| l.ends_with(&format!("  {name}")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no checksum of {name}: {out:?}"))
        .to_string()
}

#[test]
fn files_flow_both_ways_with_directories_links_and_modes() {
    if !ready() {
        return;
    }
    let l = Layout::new("flow");
    std::fs::write(l.file("host.txt"), "from the host\n").unwrap();
    std::fs::create_dir(l.file("dir")).unwrap();
    std::fs::write(l.file("dir/nested.txt"), "nested\n").unwrap();
    let script = format!(
        "set -e; {MOUNT}
         cat host.txt dir/nested.txt
         echo 'from the guest' > guest.txt
         mkdir -p made/deeper
         echo deep > made/deeper/file
         mv guest.txt made/renamed.txt
         ln made/renamed.txt hardlink
         ln -s made/renamed.txt symlink
         cat symlink
         chmod 640 made/renamed.txt
         echo appended >> host.txt
         rm dir/nested.txt
         rmdir dir
         ls -la . made made/deeper
         stat -c 'STAT %h %a %n' made/renamed.txt hardlink
         cd / && umount /mnt/s && echo UNMOUNTED"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert_eq!(out.code(), 0, "{out:?}");
    for expected in [
        "from the host",
        "nested",
        "from the guest",
        "symlink -> made/renamed.txt",
        "STAT 2 640 made/renamed.txt",
        "STAT 2 640 hardlink",
        "UNMOUNTED",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected:?} missing: {out:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(l.file("host.txt")).unwrap(),
        "from the host\nappended\n"
    );
    let renamed = std::fs::metadata(l.file("made/renamed.txt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(l.file("made/renamed.txt")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(renamed.mode() & 0o7777, 0o640);
    assert_eq!(renamed.nlink(), 2);
    assert_eq!(
        std::fs::metadata(l.file("hardlink")).unwrap().ino(),
        renamed.ino()
    );
    assert_eq!(
        std::fs::read_link(l.file("symlink")).unwrap(),
        Path::new("made/renamed.txt")
    );
    assert_eq!(
        std::fs::read_to_string(l.file("made/deeper/file")).unwrap(),
        "deep\n"
    );
    assert!(!l.file("dir").exists());
    assert!(!l.file("guest.txt").exists());
    l.assert_outside_untouched(&out);
}

#[test]
fn large_files_keep_every_byte() {
    if !ready() {
        return;
    }
    let l = Layout::new("large");
    // 5 MiB + a bit of pseudo-random bytes, written by the host.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(l.file("host.bin"), &data).unwrap();
    let script = format!(
        "set -e; {MOUNT}
         sha256sum host.bin
         tail -c 1234567 host.bin > tail.bin
         dd if=/dev/urandom of=guest.bin bs=65536 count=100 2>/dev/null
         dd if=/dev/urandom of=odd.bin bs=1000 count=3001 2>/dev/null
         cp guest.bin copy.bin
         sha256sum guest.bin odd.bin copy.bin tail.bin"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(guest_sum(&out, "host.bin"), sha256(&l.file("host.bin")));
    for name in ["guest.bin", "odd.bin", "copy.bin", "tail.bin"] {
        assert_eq!(guest_sum(&out, name), sha256(&l.file(name)), "{name}");
    }
    assert_eq!(
        std::fs::metadata(l.file("guest.bin")).unwrap().len(),
        6_553_600
    );
    assert_eq!(
        std::fs::metadata(l.file("odd.bin")).unwrap().len(),
        3_001_000
    );
    assert_eq!(
        std::fs::read(l.file("tail.bin")).unwrap(),
        &data[data.len() - 1_234_567..]
    );
    assert_eq!(guest_sum(&out, "guest.bin"), guest_sum(&out, "copy.bin"));
}

#[test]
fn thousands_of_files_stay_open_to_the_guest() {
    if !ready() {
        return;
    }
    // The guest's kernel keeps every inode it looked up until memory runs short, and the
    // server holds a descriptor for each: far more than the default limit of 1024.
    let l = Layout::new("many");
    for d in 0..40 {
        let dir = l.file(&format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let script = format!(
        "{MOUNT} || exit 1
         echo FILES $(find . -type f | wc -l)
         echo LINES $(cat d*/f* | wc -l)
         for d in d*; do touch $d/new; done
         echo NEW $(ls d*/new | wc -l)
         rm -rf d* && echo REMOVED"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(out.stdout.contains("FILES 2000\n"), "{out:?}");
    assert!(out.stdout.contains("LINES 2000\n"), "{out:?}");
    assert!(out.stdout.contains("NEW 40\n"), "{out:?}");
    // Listing while deleting (rm -rf) sees every entry, also on a tmpfs with positional
    // directory offsets (Linux 6.1, as in the emulated host).
    assert!(out.stdout.contains("REMOVED"), "{out:?}");
    assert_eq!(std::fs::read_dir(&l.share).unwrap().count(), 0);
    l.assert_outside_untouched(&out);
}

#[test]
fn a_read_only_share_refuses_every_change() {
    if !ready() {
        return;
    }
    let l = Layout::new("ro");
    std::fs::write(l.file("file"), "original\n").unwrap();
    std::fs::create_dir(l.file("dir")).unwrap();
    let attempts = [
        "echo x > new",
        "echo x >> file",
        "echo x > file",
        "mkdir newdir",
        "rm file",
        "rmdir dir",
        "mv file moved",
        "ln file hard",
        "ln -s file soft",
        "chmod 777 file",
        "touch file",
        "truncate -s 0 file",
        "mkfifo fifo",
    ];
    let mut script = format!("{MOUNT} || exit 1\ncat file\n");
    for attempt in attempts {
        script.push_str(&format!("{attempt} 2>&1 && echo 'CHANGED: {attempt}'\n"));
    }
    let out = vm(&[l.spec("s", ":ro")], &script);
    assert!(out.stdout.starts_with("original\n"), "{out:?}");
    assert!(!out.stdout.contains("CHANGED"), "{out:?}");
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(l.file("file")).unwrap(),
        "original\n"
    );
    let meta = std::fs::metadata(l.file("file")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    let mut names: Vec<_> = std::fs::read_dir(&l.share)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "file"]);
    l.assert_outside_untouched(&out);
}

#[test]
fn dotdot_from_the_share_stays_in_the_guest() {
    if !ready() {
        return;
    }
    let l = Layout::new("dotdot");
    std::fs::write(l.file("inside"), "inside\n").unwrap();
    let script = format!(
        "{MOUNT} || exit 1
         cd /mnt/s/.. && pwd && ls -la
         cat secret ../secret /mnt/s/../secret /mnt/s/../../secret 2>&1
         ls -la /mnt/s/.. /mnt/s/../.. /mnt/s/../../.. 2>&1
         cd /mnt/s && cd ../../../.. && pwd
         cat /mnt/s/inside"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(
        out.stdout.contains("\n/mnt\n") || out.stdout.starts_with("/mnt\n"),
        "{out:?}"
    );
    assert!(out.stdout.trim_end().ends_with("inside"), "{out:?}");
    assert!(
        !out.stdout.contains(" share\n"),
        "the host's base listed: {out:?}"
    );
    l.assert_outside_untouched(&out);
}

#[test]
fn symlinks_planted_by_the_host_resolve_inside_the_guest() {
    if !ready() {
        return;
    }
    let l = Layout::new("planted");
    let secret_path = l.base.path("secret");
    std::os::unix::fs::symlink("/", l.file("to-root")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", l.file("up")).unwrap();
    std::os::unix::fs::symlink(&secret_path, l.file("abs-secret")).unwrap();
    std::os::unix::fs::symlink("../secret", l.file("rel-secret")).unwrap();
    std::os::unix::fs::symlink(&l.base.0, l.file("abs-base")).unwrap();
    std::fs::create_dir(l.file("d")).unwrap();
    std::os::unix::fs::symlink("../../secret", l.file("d/deep-secret")).unwrap();
    let rel_from_root = secret_path.strip_prefix("/").unwrap().display().to_string();
    let script = format!(
        "{MOUNT} || exit 1
         for f in to-root up abs-secret rel-secret; do readlink $f; done
         cat abs-secret rel-secret d/deep-secret to-root/{rel_from_root} up/{rel_from_root} 2>&1
         ls -la abs-base/ up/ to-root/ 2>&1
         echo overwritten > rel-secret 2>&1
         echo overwritten > abs-secret 2>&1
         mkdir -p abs-base/new 2>&1
         echo DONE"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(out.stdout.contains("DONE"), "{out:?}");
    // The guest sees the symlinks as they are...
    assert!(out.stdout.starts_with("/\n../../../../../..\n"), "{out:?}");
    // ...and follows them in its own file system, never the host's.
    l.assert_outside_untouched(&out);
    assert_eq!(
        std::fs::read_link(l.file("rel-secret")).unwrap(),
        Path::new("../secret")
    );
}

#[test]
fn symlinks_swapped_in_by_the_guest_do_not_escape() {
    if !ready() {
        return;
    }
    let l = Layout::new("swap");
    std::fs::create_dir(l.file("d")).unwrap();
    std::fs::write(l.file("d/file"), "inside\n").unwrap();
    let base = l.base.0.display();
    // A background loop keeps replacing the directory d with symlinks pointing out of the
    // share (relative, absolute to /, absolute to the host's base directory) while the
    // foreground reads, writes and lists through d, a number of rounds (not a time: under
    // emulation with other VMs busy, a few seconds are a round or two).
    let script = format!(
        "{MOUNT} || exit 1
         swap() {{
           while [ ! -e /tmp/stop-swapping ]; do
             for target in ../.. / {base} ../secret; do
               mv d d.real 2>/dev/null; ln -s $target d 2>/dev/null
               rm -f d; mv d.real d 2>/dev/null
             done
           done
         }}
         swap &
         n=0
         while [ $n -lt 40 ]; do
           cat d/file d/secret d/../secret 2>/dev/null
           echo written > d/new 2>/dev/null
           ls d/ 2>/dev/null | grep -v -e file -e new
           n=$((n+1))
         done
         touch /tmp/stop-swapping
         wait
         echo ROUNDS $n"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(out.stdout.contains("ROUNDS"), "{out:?}");
    assert!(
        out.stdout.contains("inside"),
        "the race never read the file: {out:?}"
    );
    l.assert_outside_untouched(&out);
    // Whatever the guest wrote landed inside the share (or in its own file system).
    for entry in walk(&l.share) {
        assert!(entry.starts_with(&l.share));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            all.extend(walk(&path));
        }
        all.push(path);
    }
    all
}

/// A loop device on the host over a file holding `content`, detached on drop.
struct LoopDevice {
    path: String,
}

impl LoopDevice {
    fn new(backing: &Path, content: &str) -> Result<LoopDevice, String> {
        let mut data = content.as_bytes().to_vec();
        data.resize(1 << 20, b'#');
        std::fs::write(backing, data).map_err(|e| e.to_string())?;
        let _ = Command::new("modprobe").arg("loop").output();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(LoopDevice { path })
    }

    fn rdev(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().rdev()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).output();
    }
}

#[test]
fn device_nodes_are_not_created_and_host_devices_are_not_reachable() {
    if !ready() {
        return;
    }
    let l = Layout::new("devices");
    let backing = Scratch::new("devices-backing");
    // A host block device whose content the guest must never see, planted in the share as
    // an image layer could carry it.
    let disk_secret = format!("DISK-SECRET-{}", std::process::id());
    let dev = LoopDevice::new(&backing.path("disk.img"), &disk_secret);
    if !require(
        dev.as_ref().map(|_| ()).map_err(Clone::clone),
        "a loop device",
    ) {
        return;
    }
    let dev = dev.unwrap();
    let node = std::ffi::CString::new(l.file("disk").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mknod creates a file and touches no memory.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFBLK | 0o666, dev.rdev()) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    let script = format!(
        "{MOUNT} || exit 1
         mknod chr c 1 3 2>&1 && echo MADE-CHR
         mknod blk b 8 0 2>&1 && echo MADE-BLK
         mknod mem c 1 1 2>&1 && echo MADE-MEM
         mkfifo fifo && echo MADE-FIFO
         ls -la disk
         cat disk 2>&1 | head -c 200
         dd if=disk bs=512 count=1 2>&1 | head -c 200
         echo overwrite > disk 2>&1 || echo WRITE-REFUSED
         echo DONE"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(out.stdout.contains("DONE"), "{out:?}");
    for made in ["MADE-CHR", "MADE-BLK", "MADE-MEM"] {
        assert!(!out.stdout.contains(made), "{made}: {out:?}");
    }
    assert!(out.stdout.contains("MADE-FIFO"), "{out:?}");
    assert!(std::fs::symlink_metadata(l.file("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    for name in ["chr", "blk", "mem"] {
        assert!(
            std::fs::symlink_metadata(l.file(name)).is_err(),
            "{name} exists"
        );
    }
    assert!(
        !out.stdout.contains(&disk_secret),
        "the guest read the host's disk: {out:?}"
    );
    let backing_now = std::fs::read(backing.path("disk.img")).unwrap();
    assert!(
        backing_now.starts_with(disk_secret.as_bytes()),
        "the host's disk changed"
    );
    l.assert_outside_untouched(&out);
}

/// Hard links are the image store's concern: a link the host made to a file outside the
/// share is that file, and the guest reads and writes it. berthd unpacks layers so that
/// their hard links stay inside the layer, and never links into a share from outside.
#[test]
fn a_hard_link_made_by_the_host_is_the_same_file() {
    if !ready() {
        return;
    }
    let l = Layout::new("hardlink");
    let outside = Scratch::new("hardlink-outside");
    std::fs::write(outside.path("linked"), "outside content\n").unwrap();
    std::fs::write(outside.path("other"), "not linked\n").unwrap();
    std::fs::hard_link(outside.path("linked"), l.file("hl")).unwrap();
    let script = format!(
        "{MOUNT} || exit 1
         cat hl
         stat -c 'LINKS %h' hl
         echo 'changed by the guest' > hl
         ls -la /mnt/s"
    );
    let out = vm(&[l.spec("s", "")], &script);
    assert!(out.stdout.contains("outside content"), "{out:?}");
    assert!(out.stdout.contains("LINKS 2"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(outside.path("linked")).unwrap(),
        "changed by the guest\n"
    );
    // The link reaches that one file, nothing beside it.
    assert!(!out.stdout.contains("not linked"), "{out:?}");
    l.assert_outside_untouched(&out);
}

#[test]
fn two_shares_with_and_without_set_id_bits() {
    if !ready() {
        return;
    }
    let a = Layout::new("suid");
    let b = Layout::new("nosuid");
    let script = "mkdir -p /mnt/a /mnt/b && mount -t virtiofs a /mnt/a && mount -t virtiofs b /mnt/b
         for m in a b; do echo '#!/bin/sh' > /mnt/$m/tool; chmod 4755 /mnt/$m/tool; mkdir /mnt/$m/g; chmod 2775 /mnt/$m/g; done
         stat -c 'MODE %a %n' /mnt/a/tool /mnt/b/tool /mnt/b/g";
    let out = vm(&[a.spec("a", ""), b.spec("b", ":nosuid")], script);
    assert_eq!(out.code(), 0, "{out:?}");
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(a.file("tool")), 0o4755);
    assert_eq!(mode(b.file("tool")), 0o755);
    assert_eq!(mode(b.file("g")), 0o2775);
    assert!(out.stdout.contains("MODE 755 /mnt/b/tool"), "{out:?}");
    a.assert_outside_untouched(&out);
    b.assert_outside_untouched(&out);
}

#[test]
fn bad_share_options_are_clear_errors() {
    if !ready() {
        return;
    }
    let runs = Scratch::new("virtiofs-bad");
    let attempt = |shares: &[&str]| {
        let mut cmd = Command::new(bin("berth-vmm"));
        cmd.arg("run");
        for s in shares {
            cmd.arg("--fs").arg(s);
        }
        cmd.args(["--", "true"]).env("TMPDIR", &runs.0);
        run(cmd, b"", TIMEOUT)
    };
    let out = attempt(&["data=/no/such/dir"]);
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr.contains("virtio-fs share /no/such/dir"),
        "{out:?}"
    );
    let out = attempt(&["no-equals-sign"]);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("TAG=DIR"), "{out:?}");
    let dir = runs.0.display().to_string();
    let out = attempt(&[&format!("a={dir}"), &format!("a={dir}")]);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("used twice"), "{out:?}");
}
