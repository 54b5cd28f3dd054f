//! Containers in real microVMs: berth's kernel and agent, driven through the agent
//! protocol by a small client of our own (each VM is a `berth-vmm boot` child with a hard
//! timeout). One test builds a busybox root filesystem inside the guest (from the
//! initramfs's busybox) and runs processes in it as a container; one shares a host
//! directory over virtio-fs as the root, as berthd will. Like the other Linux microVM tests
//! they need a KVM that runs Linux guests: on hosts without one, `make test` runs this
//! binary inside the emulated virtualization host.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_client::{
    AgentClient, ContainerSpec, DnsConfig, ErrorCode, ExitStatus, FsSource, HostsEntry, MountSpec,
    ProcessSpec, StdioStream,
};
use berth_tests::*;
use vmm_launcher::{BootSpec, Console, LaunchError, Share, VmmExit};

const TIMEOUT: Duration = Duration::from_secs(300);
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      app:x:1000:1000:App:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\nstaff:x:50:\napp:x:1000:\n";

fn ready() -> bool {
    require(linux_guests_supported(), "a KVM that runs Linux guests")
        && require(guest_artifacts(), "the guest kernel and initramfs")
}

/// One microVM: a `berth-vmm boot` child, its agent ready.
struct Vm {
    vmm: Child,
    dir: Scratch,
    uds: PathBuf,
}

impl Vm {
    /// Boots a VM with the given virtio-fs shares (tag, host directory).
    fn boot(shares: &[(&str, &Path)]) -> Vm {
        let dir = Scratch::new("container-vm");
        let uds = dir.path("vsock.sock");
        let mut spec = BootSpec::new(guest_dir().join("vmlinux"), 2, 256);
        spec.initrd = Some(guest_dir().join("initramfs.cpio"));
        spec.console = Console::File(dir.path("console.log"));
        spec.vsock_uds = Some(uds.clone());
        for (tag, path) in shares {
            spec.shares.push(Share {
                tag: tag.to_string(),
                dir: path.to_path_buf(),
                read_only: false,
                nosuid: false,
            });
        }
        let mut attempt = 0;
        let vmm = loop {
            let mut cmd = spec.command(&bin("berth-vmm"));
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            match vmm_launcher::launch(&mut cmd, &uds, TIMEOUT) {
                Ok(vmm) => break vmm,
                Err(
                    e @ (LaunchError::Exited(VmmExit::GuestShutdown) | LaunchError::Stalled(_)),
                ) if attempt < boot_retries() => {
                    attempt += 1;
                    note_retry(&format!("boot of a container VM: {e}"));
                }
                Err(e) => {
                    let console = std::fs::read_to_string(dir.path("console.log"));
                    panic!(
                        "the agent did not come up: {e}\nconsole:\n{}",
                        console.unwrap_or_default()
                    );
                }
            }
        };
        Vm { vmm, dir, uds }
    }

    fn client(&self) -> AgentClient {
        let mut c = AgentClient::connect(&self.uds, Duration::from_secs(60)).unwrap();
        c.set_request_timeout(Some(TIMEOUT));
        c
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path("console.log")).unwrap_or_default()
    }

    /// Shuts the VM down through the agent and checks the VMM exits cleanly.
    fn shutdown(mut self) {
        self.client()
            .shutdown(Some(Duration::from_secs(1)))
            .unwrap();
        let exit = vmm_launcher::wait_exit(&mut self.vmm, TIMEOUT).expect("the VMM exits");
        assert_eq!(exit, VmmExit::GuestShutdown, "{}", self.console());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.vmm.kill();
        let _ = self.vmm.wait();
    }
}

struct Output {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

fn reader(mut s: UnixStream) -> std::thread::JoinHandle<String> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

fn run(c: &mut AgentClient, id: &str, spec: ProcessSpec) -> Output {
    let tty = spec.tty;
    c.create_process(id, &spec).unwrap();
    let out = reader(c.attach(id, StdioStream::Stdout).unwrap());
    let err = (!tty).then(|| reader(c.attach(id, StdioStream::Stderr).unwrap()));
    c.start_process(id)
        .unwrap_or_else(|e| panic!("starting {id}: {e}"));
    let status = c.wait_process(id).unwrap();
    Output {
        stdout: out.join().unwrap(),
        stderr: err.map(|e| e.join().unwrap()).unwrap_or_default(),
        status,
    }
}

/// `sh -c script` in the agent's own root (not a container).
fn sh(script: &str) -> ProcessSpec {
    let mut s = ProcessSpec::new(["/bin/sh", "-c", script]);
    s.env = vec![PATH.into()];
    s
}

/// `sh -c script` in container `c`, started the way berthd will start it.
fn sh_in(c: &str, script: &str) -> ProcessSpec {
    let mut s = sh(script);
    s.argv[0] = "sh".into();
    s.container = Some(c.to_owned());
    s.user = Some(String::new());
    s
}

const OK: ExitStatus = ExitStatus {
    code: 0,
    signal: None,
};

/// Builds a busybox root filesystem at `root` with a shell script run by `sh` (inside the
/// guest) or on the host.
fn rootfs_script(root: &str) -> String {
    format!(
        "set -e; r={root}; mkdir -p $r/bin $r/etc $r/home/app $r/tmp; \
         cp /bin/busybox $r/bin/busybox; \
         for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $r/bin/$a; done; \
         printf '{}' > $r/etc/passwd; printf '{}' > $r/etc/group; \
         chown 1000:1000 $r/home/app; chmod 1777 $r/tmp",
        PASSWD.replace('\n', "\\n"),
        GROUP.replace('\n', "\\n")
    )
}

#[test]
fn a_container_from_a_guest_directory() {
    if !ready() {
        return;
    }
    let vm = Vm::boot(&[]);
    let mut c = vm.client();
    let o = run(&mut c, "build", sh(&rootfs_script("/tmp/ct")));
    assert_eq!(o.status, OK, "{}", o.stderr);

    let mut spec = ContainerSpec::new(
        FsSource::Directory {
            path: "/tmp/ct".into(),
        },
        "ctr-host",
    );
    spec.hosts = vec![HostsEntry {
        address: "10.0.0.2".into(),
        names: vec!["ctr-host".into()],
    }];
    spec.dns = Some(DnsConfig {
        nameservers: vec!["10.0.0.1".into()],
        ..DnsConfig::default()
    });
    c.create_container("c1", &spec).unwrap();

    // The main process: user, working directory (created), environment, hostname, PID 1;
    // /proc is the one mounted last, by that process.
    let mut p = sh_in(
        "c1",
        "id; pwd; echo \"HOME=$HOME HOSTNAME=$HOSTNAME FOO=$FOO\"; hostname; \
         cat /etc/hostname; tail -1 /etc/hosts; cat /etc/resolv.conf; echo pid $$; \
         test -e /init || echo no agent binary; \
         awk '$2 == \"/proc\" || $2 == \"/sys\" || $2 == \"/dev/pts\" { print $2, $3, substr($4, 1, 2) }' \
           /proc/mounts; \
         ls /dev | tr '\\n' ' '; echo; exec sleep 1000",
    );
    p.user = Some("app".into());
    p.cwd = "/work".into();
    p.env.push("FOO=bar".into());
    c.create_process("main", &p).unwrap();
    let out = c.attach("main", StdioStream::Stdout).unwrap();
    let err = reader(c.attach("main", StdioStream::Stderr).unwrap());
    c.start_process("main").unwrap();
    // Read up to the line that ends the script's output; the process lives on (sleep).
    let mut first = String::new();
    let mut out = out;
    out.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    while !first.contains("zero \n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "output ended early: {first}\n{}", vm.console());
        first.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(
        first,
        "uid=1000(app) gid=1000(app) groups=10(wheel),29(audio),1000(app)\n\
         /work\n\
         HOME=/home/app HOSTNAME=ctr-host FOO=bar\n\
         ctr-host\nctr-host\n10.0.0.2\tctr-host\nnameserver 10.0.0.1\npid 1\n\
         no agent binary\n\
         /dev/pts devpts rw\n/sys sysfs ro\n/proc proc rw\n\
         core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero \n",
    );

    // docker exec: the same root, namespaces and hostname; the main process is PID 1;
    // Docker's default capabilities.
    let o = run(
        &mut c,
        "exec",
        sh_in(
            "c1",
            "hostname; stat -c %U /work; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
             ls /home; echo $PPID; grep CapEff /proc/self/status",
        ),
    );
    assert_eq!(
        o.stdout, "ctr-host\nroot\nsleep 1000 \napp\n0\nCapEff:\t00000000a80425fb\n",
        "{}",
        o.stderr
    );
    // Not found and not executable, looked up inside the container.
    let mut p = ProcessSpec::new(["no-such-program"]);
    p.container = Some("c1".into());
    c.create_process("nf", &p).unwrap();
    let e = c.start_process("nf").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert_eq!(c.wait_process("nf").unwrap().code, 127);
    let mut p = ProcessSpec::new(["/etc/passwd"]);
    p.container = Some("c1".into());
    c.create_process("nx", &p).unwrap();
    assert_eq!(
        c.start_process("nx").unwrap_err().code(),
        Some(ErrorCode::PermissionDenied)
    );
    assert_eq!(c.wait_process("nx").unwrap().code, 126);
    // A user that is not there, in Docker's words.
    let mut p = sh_in("c1", "true");
    p.user = Some("nobody".into());
    c.create_process("nouser", &p).unwrap();
    let e = c.start_process("nouser").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("unable to find user nobody: no matching entries in passwd file"),
        "{e}"
    );

    // The VM itself is untouched: its hostname, and the container's mounts are not its.
    let o = run(
        &mut c,
        "outside",
        sh("hostname; grep -c /tmp/ct /proc/mounts || true"),
    );
    assert_eq!(o.stdout, "(none)\n0\n", "{}", o.stderr);

    // The main process ends: the container is stopped, and then deleted.
    c.signal("main", libc::SIGKILL).unwrap();
    assert_eq!(c.wait_process("main").unwrap().code, 137);
    assert!(err.join().unwrap().is_empty());
    c.create_process("late", &sh_in("c1", "true")).unwrap();
    assert_eq!(
        c.start_process("late").unwrap_err().code(),
        Some(ErrorCode::InvalidState)
    );
    c.delete_container("c1").unwrap();
    drop(c);
    vm.shutdown();
}

#[test]
fn a_container_from_a_virtiofs_share() {
    if !ready() {
        return;
    }
    let base = Scratch::new("container-share");
    let root = base.path("rootfs");
    let script = rootfs_script(root.to_str().unwrap());
    let built = Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(built.success());
    std::fs::write(root.join("etc/hostname"), "image\n").unwrap();
    let volume = base.path("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("seed"), "seeded on the host\n").unwrap();
    // The container's user (app) writes into it, as into a world-writable host directory.
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o1777)).unwrap();

    let vm = Vm::boot(&[("rootfs", &root), ("vol0", &volume)]);
    let mut c = vm.client();
    let mut spec = ContainerSpec::new(
        FsSource::Virtiofs {
            tag: "rootfs".into(),
        },
        "shared-root",
    );
    // docker run -v: a second share, mounted at a path the image does not have.
    spec.mounts = vec![MountSpec {
        source: FsSource::Virtiofs { tag: "vol0".into() },
        destination: "/var/lib/data".into(),
        readonly: false,
        file: None,
    }];
    c.create_container("web", &spec).unwrap();
    let mut p = sh_in(
        "web",
        "id -un; id -G; cat /etc/hostname; echo from the container > /home/app/note; \
         awk '$2 == \"/\" || $2 == \"/var/lib/data\" { print $2, $3 }' /proc/mounts; \
         cat /var/lib/data/seed; echo into the volume > /var/lib/data/out; tty",
    );
    p.user = Some("app:staff".into());
    p.group_add = vec!["audio".into()];
    p.cwd = "/home/app".into();
    p.tty = true;
    let o = run(&mut c, "main", p);
    assert_eq!(o.status, OK, "{}\n{}", o.stdout, vm.console());
    assert_eq!(
        o.stdout,
        "app\r\n50 29\r\nshared-root\r\n/ virtiofs\r\n/var/lib/data virtiofs\r\n\
         seeded on the host\r\n/dev/pts/0\r\n"
    );
    // The container's write reached the host's directory, as the user; the generated
    // /etc/hostname did not replace the image's file.
    let note = root.join("home/app/note");
    assert_eq!(
        std::fs::read_to_string(&note).unwrap(),
        "from the container\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&note).unwrap().uid(), 1000);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "image\n"
    );
    // The volume's mount point was made in the image; the write reached the volume.
    assert!(root.join("var/lib/data").is_dir());
    assert_eq!(
        std::fs::read_to_string(volume.join("out")).unwrap(),
        "into the volume\n"
    );
    drop(c);
    vm.shutdown();
}
