//! The agent as PID 1, without a VM: fresh PID and mount namespaces on the host stand in for
//! the guest (with a private /dev, see below). It boots (mounts, /dev/ptmx, stdio), serves, reaps orphans as init, and on
//! Shutdown calls reboot(2), which in a child PID namespace ends that namespace (its init
//! dies of SIGHUP) instead of the machine. Needs root and unshare(1).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_client::{AgentClient, Endpoint, ExitStatus, ProcessSpec, ReadyListener, StdioStream};

const T: Duration = Duration::from_secs(30);

struct Namespace {
    unshare: Child,
    root: PathBuf,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // --kill-child takes the agent (and with it the whole namespace) down too.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The namespace's mounts were private to it: on the host these are empty dirs.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn read_all(mut s: impl std::io::Read) -> String {
    let mut v = String::new();
    s.read_to_string(&mut v).unwrap();
    v
}

fn run(c: &mut AgentClient, id: &str, spec: ProcessSpec) -> (String, ExitStatus) {
    c.create_process(id, &spec).unwrap();
    let out = c.attach(id, StdioStream::Stdout).unwrap();
    let reader = std::thread::spawn(move || read_all(out));
    c.start_process(id).unwrap();
    let status = c.wait_process(id).unwrap();
    (reader.join().unwrap(), status)
}

fn sh(script: &str) -> ProcessSpec {
    let mut s = ProcessSpec::new(["/bin/sh", "-c", script]);
    s.env = vec!["PATH=/usr/bin:/usr/sbin".into()];
    s
}

const OK: ExitStatus = ExitStatus {
    code: 0,
    signal: None,
};

#[test]
fn agent_as_pid1_in_a_pid_namespace() {
    let host = test_gate::and(test_gate::root(), || {
        test_gate::exists("/usr/bin/unshare", "util-linux")?;
        test_gate::exists("/usr/lib64", "a merged-/usr host")
    });
    if !test_gate::require(host, "the PID 1 test") {
        return;
    }
    let root = std::env::temp_dir().join(format!("berth-agent-pid1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["usr", "sock", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    std::fs::copy(common::agent_bin(), root.join("init")).unwrap();
    let ready = ReadyListener::bind_path(root.join("sock/vm.sock_1025")).unwrap();
    let unshare = Command::new("/usr/bin/unshare")
        .args([
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .args(["--", "/bin/sh", "-ec"])
        .arg(
            // /dev is a private tmpfs with a few host nodes bound in, so that nothing the
            // agent does there can reach the host's devtmpfs (one instance, shared by every
            // mount of it). The agent sees /dev mounted and leaves it; an empty ptmx file
            // takes its bind mount of the devpts multiplexer.
            "mount -o bind,ro /usr \"$1/usr\"
             mount -t tmpfs -o mode=0755 tmpfs \"$1/dev\"
             for n in null zero full random urandom tty; do
               : > \"$1/dev/$n\"; mount --bind /dev/$n \"$1/dev/$n\"
             done
             : > \"$1/dev/ptmx\"
             exec chroot \"$1\" /init --listen-unix /sock/agent.sock \
               --ready-unix /sock/vm.sock_1025",
        )
        .arg("sh")
        .arg(&root)
        .env("BERTH_AGENT_LOG", "debug")
        .spawn()
        .unwrap();
    let mut ns = Namespace {
        unshare,
        root: root.clone(),
    };
    ready.wait(T).unwrap();
    let mut c =
        AgentClient::connect_endpoint(Endpoint::Unix(root.join("sock/agent.sock")), T).unwrap();

    // Boot: every mount is in place, and this is a PID namespace of its own.
    let (out, status) = run(
        &mut c,
        "mounts",
        sh("cat /proc/1/comm; \
            for m in /proc /sys /dev /dev/pts /dev/shm /run /tmp /sys/fs/cgroup /dev/ptmx; do \
              mountpoint -q $m && echo ok $m || echo missing $m; done; \
            readlink /dev/fd; stat -c %a /dev/shm"),
    );
    assert_eq!(status, OK);
    assert_eq!(
        out,
        "init\nok /proc\nok /sys\nok /dev\nok /dev/pts\nok /dev/shm\nok /run\nok /tmp\n\
         ok /sys/fs/cgroup\nok /dev/ptmx\n/proc/self/fd\n1777\n"
    );

    // A tty comes from the agent's own devpts instance, which starts numbering at 0.
    let mut spec = sh("tty");
    spec.tty = true;
    let (out, status) = run(&mut c, "tty", spec);
    assert_eq!((out.as_str(), status), ("/dev/pts/0\r\n", OK));

    // As init, the agent reaps orphans: the background sleep outlives its shell, then
    // must not stay a zombie.
    let (out, _) = run(&mut c, "orphan", sh("sleep 0.3 & echo $!"));
    let orphan = out.trim().to_owned();
    let probe = format!(
        "for i in $(seq 100); do test -e /proc/{orphan} || {{ echo gone; exit 0; }}; \
         sleep 0.1; done; cat /proc/{orphan}/stat"
    );
    let (out, _) = run(&mut c, "probe", sh(&probe));
    assert_eq!(out, "gone\n");

    // Shutdown: processes are stopped and reboot(2) ends the namespace (SIGHUP to its init).
    c.create_process("long", &ProcessSpec::new(["/usr/bin/sleep", "30"]))
        .unwrap();
    c.start_process("long").unwrap();
    let start = Instant::now();
    c.shutdown(Some(Duration::from_millis(500))).unwrap();
    let status = loop {
        if let Some(s) = ns.unshare.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < T, "the namespace did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    // unshare re-raises its child's fatal signal.
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
}
