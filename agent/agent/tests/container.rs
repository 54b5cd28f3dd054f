//! Containers through the agent's server run on the host (root needed: mounts,
//! namespaces, pivot_root), over its Unix-socket transport and the real client. The root
//! filesystem is a directory built from the host's static busybox, with our own
//! /etc/passwd and /etc/group.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_client::{
    AgentClient, ContainerSpec, DnsConfig, Endpoint, ErrorCode, ExitStatus, FsSource, HostsEntry,
    MountSpec, ProcessSpec, ReadyListener, Rlimit, RlimitResource, StdioStream,
};

const T: Duration = Duration::from_secs(30);
const BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      app:x:1000:1000:App:/home/app:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\n\
                     wheel:x:10:root,app\n\
                     staff:x:50:\n\
                     audio:x:29:app\n\
                     app:x:1000:\n\
                     nogroup:x:65534:\n";

/// Whether these tests can run here (root for mounts, namespaces and pivot_root; a static
/// busybox); under CI they must.
fn available() -> bool {
    test_gate::require(
        test_gate::and(test_gate::root(), || {
            test_gate::exists(BUSYBOX, "busybox-static")
        }),
        "the container tests",
    )
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-agent-ct-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A busybox root filesystem: /bin/busybox with a link per applet, /etc/passwd and
/// /etc/group, /home/app owned by app, and no /proc, /dev, /sys (the agent makes them).
fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "home/app", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(root.join("etc/group"), GROUP).unwrap();
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

struct TestAgent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl TestAgent {
    fn start(name: &str) -> TestAgent {
        let dir = temp_dir(name);
        let sock = dir.join("agent.sock");
        let ready = ReadyListener::bind(&dir.join("vm.sock")).unwrap();
        let child = Command::new(common::agent_bin())
            .arg("--listen-unix")
            .arg(&sock)
            .arg("--ready-unix")
            .arg(ready.path())
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("BERTH_AGENT_LOG", "debug")
            .spawn()
            .unwrap();
        ready.wait(T).unwrap();
        TestAgent { child, dir, sock }
    }

    fn client(&self) -> AgentClient {
        let mut c = AgentClient::connect_endpoint(Endpoint::Unix(self.sock.clone()), T).unwrap();
        c.set_request_timeout(Some(T));
        c
    }

    /// A fresh busybox rootfs under the agent's directory.
    fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        busybox_rootfs(&root);
        root
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Asked first: the agent kills every container's processes and exits. Killed
        // alone, it would leave them running (a test that failed once left a busy loop
        // spinning for an hour).
        if let Ok(mut c) = AgentClient::connect_endpoint(Endpoint::Unix(self.sock.clone()), T) {
            c.set_request_timeout(Some(T));
            let _ = c.shutdown(Some(Duration::from_millis(200)));
            let deadline = Instant::now() + T;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every mount was in the containers' own namespaces, gone with the agent: these
        // are plain files again.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dir_spec(root: &Path, hostname: &str) -> ContainerSpec {
    ContainerSpec::new(
        FsSource::Directory {
            path: root.to_str().unwrap().to_owned(),
        },
        hostname,
    )
}

/// `sh -c script` in container `c`, as Docker would start it (user "" unless set).
fn sh_in(c: &str, script: &str) -> ProcessSpec {
    let mut s = ProcessSpec::new(["sh", "-c", script]);
    s.env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    s.container = Some(c.to_owned());
    s.user = Some(String::new());
    s
}

struct Output {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

fn reader(mut s: UnixStream) -> std::thread::JoinHandle<String> {
    s.set_read_timeout(Some(T)).unwrap();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
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

fn exited(code: i32) -> ExitStatus {
    ExitStatus { code, signal: None }
}

/// Starts a long-running init in container `c` (so that later processes exec into it).
fn start_init(client: &mut AgentClient, c: &str) -> u32 {
    let mut spec = ProcessSpec::new(["sleep", "1000"]);
    spec.container = Some(c.to_owned());
    client.create_process(&format!("{c}-init"), &spec).unwrap();
    client.start_process(&format!("{c}-init")).unwrap()
}

#[test]
fn a_process_sees_its_user_workdir_env_and_hostname() {
    if !available() {
        return;
    }
    let a = TestAgent::start("identity");
    let mut c = a.client();
    let root = a.rootfs("root");
    let mut spec = dir_spec(&root, "c0ffee");
    spec.domainname = "example.org".into();
    c.create_container("c1", &spec).unwrap();

    let mut p = sh_in(
        "c1",
        "id; pwd; echo \"HOME=$HOME HOSTNAME=$HOSTNAME FOO=$FOO\"; hostname; \
         cat /etc/hostname; cat /proc/sys/kernel/domainname; stat -c '%U %a' .; touch mine && echo wrote",
    );
    p.user = Some("app".into());
    p.cwd = "/work/dir".into();
    p.env.push("FOO=bar baz".into());
    p.rlimits = vec![Rlimit {
        resource: RlimitResource::Nofile,
        soft: 321,
        hard: 654,
    }];
    let o = run(&mut c, "p1", p);
    assert_eq!(o.status, exited(1), "{}", o.stderr);
    assert_eq!(
        o.stdout,
        // The kernel keeps supplementary groups sorted.
        "uid=1000(app) gid=1000(app) groups=10(wheel),29(audio),1000(app)\n\
         /work/dir\n\
         HOME=/home/app HOSTNAME=c0ffee FOO=bar baz\n\
         c0ffee\nc0ffee\nexample.org\nroot 755\n",
        "{}",
        o.stderr
    );
    // Docker creates the working directory as root: the user cannot write there.
    assert!(o.stderr.contains("Permission denied"), "{}", o.stderr);
    assert!(root.join("work/dir").is_dir());

    // The init has exited, and with it the container (Docker: it stopped). Later
    // processes of a running container (docker exec) resolve users the same way.
    c.create_container("c2", &dir_spec(&root, "c0ffee"))
        .unwrap();
    start_init(&mut c, "c2");
    // A numeric user without an entry: gid 0, HOME "/"; user:group; --group-add.
    let mut p = sh_in("c2", "id -u; id -g; id -G; echo $HOME; ulimit -n");
    p.user = Some("4321".into());
    p.rlimits = vec![Rlimit {
        resource: RlimitResource::Nofile,
        soft: 321,
        hard: 654,
    }];
    let o = run(&mut c, "p2", p);
    assert_eq!(o.stdout, "4321\n0\n0\n/\n321\n", "{}", o.stderr);
    let mut p = sh_in("c2", "id -u; id -g; id -G");
    p.user = Some("app:staff".into());
    p.group_add = vec!["audio".into(), "777".into()];
    let o = run(&mut c, "p3", p);
    assert_eq!(o.stdout, "1000\n50\n50 29 777\n", "{}", o.stderr);
    // Root by default, with root's memberships; an explicit HOME wins.
    let mut p = sh_in("c2", "id; echo $HOME");
    p.env.push("HOME=/elsewhere".into());
    let o = run(&mut c, "p4", p);
    assert_eq!(
        o.stdout,
        "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n/elsewhere\n"
    );
}

#[test]
fn users_that_do_not_resolve_are_refused_in_dockers_words() {
    if !available() {
        return;
    }
    let a = TestAgent::start("nouser");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "h")).unwrap();
    for (id, user, group_add, message) in [
        (
            "u1",
            "foo",
            vec![],
            "unable to find user foo: no matching entries in passwd file",
        ),
        (
            "u2",
            "app:nosuch",
            vec![],
            "unable to find group nosuch: no matching entries in group file",
        ),
        (
            "u3",
            "-5",
            vec![],
            "uids and gids must be in range 0-2147483647",
        ),
        (
            "u4",
            "app",
            vec!["nosuch".to_owned()],
            "Unable to find group nosuch: no matching entries in group file",
        ),
    ] {
        let mut p = sh_in("c1", "true");
        p.user = Some(user.into());
        p.group_add = group_add;
        c.create_process(id, &p).unwrap();
        let e = c.start_process(id).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(e.to_string().ends_with(message), "{e}");
    }
    // Without /etc/passwd, numeric users still work and names do not.
    std::fs::remove_file(root.join("etc/passwd")).unwrap();
    let mut p = sh_in("c1", "id -u; echo $HOME");
    p.user = Some("1000:1000".into());
    assert_eq!(run(&mut c, "u5", p).stdout, "1000\n/\n");
}

#[test]
fn the_container_gets_dockers_mounts_and_devices() {
    if !available() {
        return;
    }
    let a = TestAgent::start("mounts");
    let mut c = a.client();
    let root = a.rootfs("root");
    let mut spec = dir_spec(&root, "h");
    spec.shm_size = Some(8 << 20);
    c.create_container("c1", &spec).unwrap();
    let o = run(
        &mut c,
        "m",
        sh_in(
            "c1",
            "echo pid $$; \
             for m in /proc /dev /dev/pts /dev/shm /dev/mqueue /sys /sys/fs/cgroup \
                      /etc/hostname /etc/hosts /etc/resolv.conf; do \
               awk -v m=$m '$2 == m { print m, $3, substr($4, 1, 2) }' /proc/mounts; done; \
             ls /dev; stat -c '%n %a %t:%T' /dev/null /dev/tty /dev/urandom; \
             readlink /dev/ptmx; readlink /dev/fd; \
             stat -c '%n %t:%T' /proc/keys; ls /sys/firmware | wc -l; \
             echo x > /proc/sys/kernel/domainname || echo ro /proc/sys; \
             df -k /dev/shm | awk 'NR == 2 { print $2 }'",
        ),
    );
    assert_eq!(o.status, exited(0), "{}", o.stderr);
    let want = "pid 1\n\
        /proc proc rw\n\
        /dev tmpfs rw\n\
        /dev/pts devpts rw\n\
        /dev/shm tmpfs rw\n\
        /dev/mqueue mqueue rw\n\
        /sys sysfs ro\n\
        /sys/fs/cgroup cgroup2 ro\n";
    assert!(o.stdout.starts_with(want), "{}\n{}", o.stdout, o.stderr);
    for line in [
        "\n/etc/hostname ",
        "\n/etc/hosts ",
        "\n/etc/resolv.conf ",
        "\ncore\nfd\nfull\nmqueue\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n",
        "\n/dev/null 666 1:3\n/dev/tty 666 5:0\n/dev/urandom 666 1:9\n",
        "\npts/ptmx\n/proc/self/fd\n",
        "\n/proc/keys 1:3\n0\n",
        "\nro /proc/sys\n8192\n",
    ] {
        assert!(o.stdout.contains(line), "missing {line:?} in:\n{}", o.stdout);
    }
    assert!(o.stderr.contains("Read-only file system"), "{}", o.stderr);
}

#[test]
fn exec_lands_in_the_same_container_and_cannot_see_the_agent() {
    if !available() {
        return;
    }
    let a = TestAgent::start("exec");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "shared"))
        .unwrap();
    let init = start_init(&mut c, "c1");
    let o = run(
        &mut c,
        "e1",
        sh_in(
            "c1",
            "echo $$ > /tmp/first; hostname; ps -o pid,args | sed 1d | sort -n | head -1; \
             awk '{ print $4 }' /proc/self/stat",
        ),
    );
    // The init is PID 1 of the container; the exec'd shell's parent (the agent) is outside.
    assert_eq!(o.stdout, "shared\n    1 sleep 1000\n0\n", "{}", o.stderr);
    // Same root: the file the first one wrote; the host's files are not there, nor the
    // agent's; PATH is looked up inside (the host has bash, the container has not).
    let o = run(
        &mut c,
        "e2",
        sh_in(
            "c1",
            "cat /tmp/first >/dev/null && echo shared root; \
             test -e /usr/lib/os-release || echo no host files; \
             cat /proc/1/cmdline | tr '\\0' ' '; echo",
        ),
    );
    assert_eq!(
        o.stdout, "shared root\nno host files\nsleep 1000 \n",
        "{}",
        o.stderr
    );
    let mut p = ProcessSpec::new(["bash", "-c", "true"]);
    p.container = Some("c1".into());
    c.create_process("bash", &p).unwrap();
    let e = c.start_process("bash").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(
        e.to_string()
            .ends_with("exec: \"bash\": executable file not found in $PATH"),
        "{e}"
    );
    assert_eq!(c.wait_process("bash").unwrap(), exited(127));
    // A file without x bits named by path: 126; as a PATH candidate it is skipped (127).
    std::fs::write(root.join("bin/script"), "#!/bin/sh\necho hi\n").unwrap();
    for (id, argv0, code, exit) in [
        (
            "noexec-path",
            "/bin/script",
            ErrorCode::PermissionDenied,
            126,
        ),
        ("noexec-lookup", "script", ErrorCode::NotFound, 127),
    ] {
        let mut p = ProcessSpec::new([argv0]);
        p.container = Some("c1".into());
        c.create_process(id, &p).unwrap();
        let e = c.start_process(id).unwrap_err();
        assert_eq!(e.code(), Some(code), "{id}: {e}");
        assert_eq!(c.wait_process(id).unwrap(), exited(exit));
    }
    // Deleting a container with a running process is refused; once its init is gone, the
    // container takes no new processes (Docker: it has stopped).
    let e = c.delete_container("c1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    c.signal("c1-init", libc::SIGKILL).unwrap();
    assert_eq!(
        c.wait_process("c1-init").unwrap(),
        ExitStatus {
            code: 137,
            signal: Some(9)
        }
    );
    let _ = init;
    c.create_process("late", &sh_in("c1", "true")).unwrap();
    let e = c.start_process("late").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    c.delete_container("c1").unwrap();
    assert!(
        !a.dir.join("state/containers/c1").exists(),
        "the container's state directory stays behind"
    );
    let e = c.create_process("gone", &sh_in("c1", "true")).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownContainer), "{e}");
}

#[test]
fn a_failed_init_leaves_the_container_usable() {
    if !available() {
        return;
    }
    let a = TestAgent::start("failed-init");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "h")).unwrap();
    let mut p = ProcessSpec::new(["/no/such/program"]);
    p.container = Some("c1".into());
    c.create_process("bad", &p).unwrap();
    assert_eq!(
        c.start_process("bad").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // The next process is the container's init, with a working /proc.
    let o = run(
        &mut c,
        "good",
        sh_in("c1", "echo $$; ls /proc/1/ns | wc -l"),
    );
    assert_eq!(o.status, exited(0), "{}", o.stderr);
    assert!(o.stdout.starts_with("1\n"), "{}", o.stdout);
}

#[test]
fn etc_files_are_generated_and_bind_mounted() {
    if !available() {
        return;
    }
    let a = TestAgent::start("etc");
    let mut c = a.client();
    let root = a.rootfs("root");
    std::fs::write(root.join("etc/hosts"), "image hosts\n").unwrap();
    let mut spec = dir_spec(&root, "web1");
    spec.hosts = vec![
        HostsEntry {
            address: "10.1.0.2".into(),
            names: vec!["web1".into()],
        },
        HostsEntry {
            address: "10.1.0.9".into(),
            names: vec!["db".into(), "db.local".into()],
        },
    ];
    spec.dns = Some(DnsConfig {
        nameservers: vec!["10.1.0.1".into()],
        search: vec!["local".into()],
        options: vec!["ndots:1".into()],
    });
    c.create_container("c1", &spec).unwrap();
    let o = run(
        &mut c,
        "cat",
        sh_in(
            "c1",
            "cat /etc/hostname /etc/hosts /etc/resolv.conf; echo extra >> /etc/hosts",
        ),
    );
    assert_eq!(
        o.stdout,
        "web1\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n10.1.0.2\tweb1\n10.1.0.9\tdb db.local\n\
         nameserver 10.1.0.1\nsearch local\noptions ndots:1\n",
        "{}",
        o.stderr
    );
    // The image's files are untouched (Docker keeps them out of the image, too), and
    // files the image lacked exist there only as empty mount points.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "image hosts\n"
    );
    assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"");

    // Without DNS settings, the image's resolv.conf is left as it is.
    let root2 = a.rootfs("root2");
    std::fs::write(root2.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
    c.create_container("c2", &dir_spec(&root2, "h2")).unwrap();
    let o = run(&mut c, "cat2", sh_in("c2", "cat /etc/resolv.conf"));
    assert_eq!(o.stdout, "nameserver 192.0.2.53\n");
}

#[test]
fn a_read_only_root_keeps_dev_and_etc_writable() {
    if !available() {
        return;
    }
    let a = TestAgent::start("ro");
    let mut c = a.client();
    let root = a.rootfs("root");
    let mut spec = dir_spec(&root, "h");
    spec.readonly_rootfs = true;
    c.create_container("c1", &spec).unwrap();
    let mut p = sh_in(
        "c1",
        "touch /newfile 2>/dev/null || echo root ro; \
         echo ok > /dev/shm/x && cat /dev/shm/x; echo 1.2.3.4 x >> /etc/hosts && echo hosts rw; \
         pwd",
    );
    // Docker creates the working directory even for a read-only root.
    p.cwd = "/created/before/ro".into();
    let o = run(&mut c, "ro", p);
    assert_eq!(
        o.stdout, "root ro\nok\nhosts rw\n/created/before/ro\n",
        "{}",
        o.stderr
    );
}

#[test]
fn a_tty_comes_from_the_containers_devpts() {
    if !available() {
        return;
    }
    let a = TestAgent::start("tty");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "h")).unwrap();
    let mut p = sh_in(
        "c1",
        "tty; stat -c %U $(tty); test -c /dev/console && echo console",
    );
    p.tty = true;
    p.user = Some("app".into());
    let o = run(&mut c, "t", p);
    assert_eq!(o.stdout, "/dev/pts/0\r\napp\r\nconsole\r\n");
}

#[test]
fn bad_containers_are_refused_and_the_agent_stays_up() {
    if !available() {
        return;
    }
    let a = TestAgent::start("bad");
    let mut c = a.client();
    let e = c
        .create_container("c1", &dir_spec(&a.dir.join("no-such-root"), "h"))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SetupFailed), "{e}");
    assert!(e.to_string().contains("cannot mount"), "{e}");
    // An unknown virtio-fs tag (there is no such device on the host).
    let spec = ContainerSpec::new(
        FsSource::Virtiofs {
            tag: "no-such-tag".into(),
        },
        "h",
    );
    assert_eq!(
        c.create_container("c2", &spec).unwrap_err().code(),
        Some(ErrorCode::SetupFailed)
    );
    // A root whose /etc/hosts is a directory cannot take the generated file.
    let root = a.rootfs("root");
    std::fs::create_dir(root.join("etc/hosts")).unwrap();
    assert_eq!(
        c.create_container("c3", &dir_spec(&root, "h"))
            .unwrap_err()
            .code(),
        Some(ErrorCode::SetupFailed)
    );
    std::fs::remove_dir(root.join("etc/hosts")).unwrap();
    c.create_container("c3", &dir_spec(&root, "h")).unwrap();
    assert_eq!(
        c.create_container("c3", &dir_spec(&root, "h"))
            .unwrap_err()
            .code(),
        Some(ErrorCode::AlreadyExists)
    );
    let mut p = ProcessSpec::new(["true"]);
    p.container = Some("nope".into());
    assert_eq!(
        c.create_process("p", &p).unwrap_err().code(),
        Some(ErrorCode::UnknownContainer)
    );
    assert_eq!(
        c.delete_container("nope").unwrap_err().code(),
        Some(ErrorCode::UnknownContainer)
    );
    // Garbage in the new request: refused, connection still usable.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    agent_protocol::write_frame(
        &mut s,
        &agent_protocol::ConnectionHeader::Hello {
            protocol_version: agent_protocol::PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let _: agent_protocol::Response = agent_protocol::read_frame(&mut s).unwrap();
    for body in [
        &br#"{"type":"create_container","id":"x","spec":{"hostname":"h"}}"#[..],
        br#"{"type":"create_container","id":"x","spec":{"hostname":"a b","rootfs":{"type":"directory","path":"/"}}}"#,
        br#"{"type":"create_container","id":"x","spec":{"hostname":"h","rootfs":{"type":"directory","path":"rel"}}}"#,
        br#"{"type":"create_container","id":"x","spec":{"hostname":"h","rootfs":{"type":"nfs"}}}"#,
        br#"{"type":"delete_container","id":"../x"}"#,
    ] {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        s.write_all(&f).unwrap();
        match agent_protocol::read_frame::<agent_protocol::Response, _>(&mut s).unwrap() {
            agent_protocol::Response::Error { code, .. } => {
                assert_eq!(code, ErrorCode::InvalidArgument, "{}", String::from_utf8_lossy(body))
            }
            other => panic!("{other:?}"),
        }
    }
    // Still serving, and the good container works.
    let o = run(&mut c, "ok", sh_in("c3", "echo fine"));
    assert_eq!(o.stdout, "fine\n");
}

#[test]
fn nothing_leaks_onto_the_host() {
    if !available() {
        return;
    }
    let a = TestAgent::start("leak");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "leaky")).unwrap();
    let o = run(&mut c, "x", sh_in("c1", "hostname"));
    assert_eq!(o.stdout, "leaky\n");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = a.dir.display().to_string();
    assert!(
        !mounts.contains(&dir),
        "container mounts reached the host:\n{mounts}"
    );
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        "leaky"
    );
    // The state directory holds the generated files, not mounts.
    let state = a.dir.join("state/containers/c1");
    assert_eq!(
        std::fs::read_to_string(state.join("hostname")).unwrap(),
        "leaky\n"
    );
    assert_eq!(std::fs::read_dir(state.join("rootfs")).unwrap().count(), 0);
}

#[test]
fn many_containers_at_once() {
    if !available() {
        return;
    }
    let a = TestAgent::start("many");
    let c = a.client();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let mut c = c.open_control().unwrap();
            let root = a.rootfs(&format!("root{i}"));
            std::thread::spawn(move || {
                let id = format!("c{i}");
                c.create_container(&id, &dir_spec(&root, &format!("host{i}")))
                    .unwrap();
                let o = run(&mut c, &format!("p{i}"), sh_in(&id, "hostname; echo $$"));
                assert_eq!(o.stdout, format!("host{i}\n1\n"));
                c.delete_container(&id).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = Instant::now();
}

#[test]
fn setup_and_start_times() {
    if !available() {
        return;
    }
    let a = TestAgent::start("times");
    let mut c = a.client();
    let root = a.rootfs("root");
    let (mut setups, mut starts, mut execs) = (vec![], vec![], vec![]);
    for i in 0..10 {
        let id = format!("t{i}");
        let t = Instant::now();
        c.create_container(&id, &dir_spec(&root, "h")).unwrap();
        setups.push(t.elapsed());
        let mut p = ProcessSpec::new(["sleep", "100"]);
        p.container = Some(id.clone());
        c.create_process(&format!("{id}-init"), &p).unwrap();
        let t = Instant::now();
        c.start_process(&format!("{id}-init")).unwrap();
        starts.push(t.elapsed());
        let mut p = ProcessSpec::new(["true"]);
        p.container = Some(id.clone());
        p.user = Some("app".into());
        c.create_process(&format!("{id}-exec"), &p).unwrap();
        let t = Instant::now();
        c.start_process(&format!("{id}-exec")).unwrap();
        execs.push(t.elapsed());
        c.signal(&format!("{id}-init"), libc::SIGKILL).unwrap();
        c.wait_process(&format!("{id}-init")).unwrap();
        c.wait_process(&format!("{id}-exec")).unwrap();
        c.delete_container(&id).unwrap();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (s, i, e) = (median(&mut setups), median(&mut starts), median(&mut execs));
    eprintln!("container setup {s:?}, init start {i:?}, exec start {e:?} (medians of 10)");
    for d in [s, i, e] {
        assert!(d < Duration::from_secs(2), "{d:?}");
    }
}

#[test]
fn capabilities_are_dockers() {
    if !available() {
        return;
    }
    let a = TestAgent::start("caps");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "h")).unwrap();
    start_init(&mut c, "c1");
    let caps = "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status | tr '\\t' ' '";
    // Root: Docker's default set (the well-known a80425fb), nothing more.
    let o = run(
        &mut c,
        "root",
        sh_in("c1", &format!("{caps}; hostname other 2>&1")),
    );
    assert_eq!(
        o.stdout,
        "CapPrm: 00000000a80425fb\nCapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\n\
         CapAmb: 0000000000000000\nhostname: sethostname: Operation not permitted\n",
        "{}",
        o.stderr
    );
    // Another user: none, the same bounding set.
    let mut p = sh_in("c1", caps);
    p.user = Some("app".into());
    let o = run(&mut c, "app", p);
    assert_eq!(
        o.stdout,
        "CapPrm: 0000000000000000\nCapEff: 0000000000000000\nCapBnd: 00000000a80425fb\n\
         CapAmb: 0000000000000000\n"
    );
    // The host's computed set (CapAdd/CapDrop applied), names as Docker writes them.
    let mut p = sh_in("c1", &format!("{caps}; hostname other && hostname"));
    p.capabilities = Some(vec!["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()]);
    let o = run(&mut c, "custom", p);
    assert_eq!(
        o.stdout,
        "CapPrm: 0000000000200001\nCapEff: 0000000000200001\nCapBnd: 0000000000200001\n\
         CapAmb: 0000000000000000\nother\n",
        "{}",
        o.stderr
    );
    let mut p = sh_in("c1", "true");
    p.capabilities = Some(vec!["CAP_FLY".into()]);
    c.create_process("fly", &p).unwrap();
    let e = c.start_process("fly").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(
        e.to_string().ends_with("unknown capability \"CAP_FLY\""),
        "{e}"
    );
}

#[test]
fn an_init_reaps_passes_signals_on_and_exits_as_the_program() {
    if !available() {
        return;
    }
    let a = TestAgent::start("init");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "h")).unwrap();
    // The program is the init's first child; an orphan is reaped (with `sh` as PID 1 it
    // would stay a zombie); the program's exit status is the init's.
    let mut p = sh_in(
        "c1",
        "cat /proc/1/comm; echo $$; sh -c 'sleep 0.2 & exit 0'; sleep 1; \
         grep -l '^State:.Z' /proc/[0-9]*/status | wc -l; exit 5",
    );
    p.init = true;
    let o = run(&mut c, "first", p);
    assert_eq!(o.stdout, "init\n2\n0\n", "{}", o.stderr);
    assert_eq!(o.status, exited(5));

    c.create_container("c2", &dir_spec(&root, "h")).unwrap();
    let mut p = ProcessSpec::new(["sleep", "1000"]);
    p.container = Some("c2".into());
    p.init = true;
    c.create_process("c2-init", &p).unwrap();
    c.start_process("c2-init").unwrap();
    // Only the first process of a container can have an init.
    let mut again = sh_in("c2", "true");
    again.init = true;
    c.create_process("again", &again).unwrap();
    let e = c.start_process("again").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    // SIGTERM to the init reaches the program, which dies of it: 128 + 15.
    let o = run(&mut c, "ps", sh_in("c2", "cat /proc/1/comm /proc/2/comm"));
    assert_eq!(o.stdout, "init\nsleep\n", "{}", o.stderr);
    c.signal("c2-init", libc::SIGTERM).unwrap();
    assert_eq!(c.wait_process("c2-init").unwrap(), exited(143));
    // A program that cannot run fails as it would without an init.
    c.create_container("c3", &dir_spec(&root, "h")).unwrap();
    let mut p = ProcessSpec::new(["/no/such/program"]);
    p.container = Some("c3".into());
    p.init = true;
    c.create_process("c3-init", &p).unwrap();
    let e = c.start_process("c3-init").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
}

#[test]
fn a_privileged_container_has_the_devices_sys_and_proc_whole() {
    if !available() {
        return;
    }
    let a = TestAgent::start("privileged");
    let mut c = a.client();
    let root = a.rootfs("root");
    let mut spec = dir_spec(&root, "h");
    spec.privileged = true;
    c.create_container("c1", &spec).unwrap();
    let o = run(
        &mut c,
        "m",
        sh_in(
            "c1",
            "for m in /sys /sys/fs/cgroup; do \
               awk -v m=$m '$2 == m { print m, $3, substr($4, 1, 2) }' /proc/mounts; done; \
             stat -c '%n %t:%T' /proc/keys /dev/kmsg; ls /sys/firmware >/dev/null && echo firmware",
        ),
    );
    assert_eq!(
        o.stdout,
        "/sys sysfs rw\n/sys/fs/cgroup cgroup2 rw\n/proc/keys 0:0\n/dev/kmsg 1:b\nfirmware\n",
        "{}",
        o.stderr
    );
}

#[test]
fn volumes_and_bind_mounts() {
    if !available() {
        return;
    }
    let a = TestAgent::start("volumes");
    let mut c = a.client();
    let root = a.rootfs("root");
    let data = a.dir.join("data");
    let sub = a.dir.join("sub");
    let conf = a.dir.join("app.conf");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(data.join("hello"), "from the host\n").unwrap();
    std::fs::write(sub.join("inner"), "nested\n").unwrap();
    std::fs::write(&conf, "key=value\n").unwrap();
    let dir = |p: &Path| FsSource::Directory {
        path: p.to_str().unwrap().to_owned(),
    };
    let mut spec = dir_spec(&root, "h");
    // Out of order on purpose: the nested one must still land on top of its parent.
    spec.mounts = vec![
        MountSpec {
            source: dir(&sub),
            destination: "/srv/data/sub".into(),
            readonly: true,
            file: None,
        },
        MountSpec {
            source: dir(&data),
            destination: "/srv/data".into(),
            readonly: false,
            file: None,
        },
        MountSpec {
            source: dir(&conf),
            destination: "/etc/app/app.conf".into(),
            readonly: true,
            file: None,
        },
        MountSpec {
            source: FsSource::Tmpfs {
                options: ["size=1m", "mode=1770", "noexec", "nosuid", "exec"]
                    .map(String::from)
                    .to_vec(),
            },
            destination: "/scratch".into(),
            readonly: false,
            file: None,
        },
    ];
    c.create_container("c1", &spec).unwrap();
    let o = run(
        &mut c,
        "v",
        sh_in(
            "c1",
            "cat /srv/data/hello /srv/data/sub/inner /etc/app/app.conf; \
             echo written > /srv/data/new && echo rw data; \
             touch /srv/data/sub/x 2>/dev/null || echo ro sub; \
             echo x >> /etc/app/app.conf 2>/dev/null || echo ro conf; \
             stat -c %a /scratch; awk '$2 == \"/scratch\" { print $3, $4 }' /proc/mounts; \
             dd if=/dev/zero of=/scratch/f bs=1k count=2048 2>/dev/null || echo full; \
             du -k /scratch/f | cut -f1",
        ),
    );
    assert_eq!(
        o.stdout,
        "from the host\nnested\nkey=value\nrw data\nro sub\nro conf\n\
         1770\ntmpfs rw,nosuid,relatime,size=1024k,mode=1770\nfull\n1024\n",
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "written\n"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "key=value\n");
    // A missing source is a setup failure.
    let mut spec = dir_spec(&root, "h");
    spec.mounts = vec![MountSpec {
        source: dir(&a.dir.join("missing")),
        destination: "/x".into(),
        readonly: false,
        file: None,
    }];
    let e = c.create_container("c2", &spec).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SetupFailed), "{e}");
}

#[test]
fn a_containers_processes_and_figures_are_its_own() {
    if !available() {
        return;
    }
    let a = TestAgent::start("figures");
    let mut c = a.client();
    let root = a.rootfs("root");
    c.create_container("c1", &dir_spec(&root, "figures"))
        .unwrap();
    // Not started yet: nothing to list.
    let e = c.list_processes("c1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
    let e = c.stats("nope").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownContainer), "{e}");
    let mut init = sh_in("c1", "sleep 1000 & while :; do :; done");
    init.user = Some("app".into());
    c.create_process("c1-init", &init).unwrap();
    c.start_process("c1-init").unwrap();
    // The busy loop and its sleeping child, pids as the container sees them.
    let deadline = Instant::now() + T;
    let list = loop {
        let list = c.list_processes("c1").unwrap();
        // Two processes, the second past its exec (a fork of sh is listed as sh first).
        let exec_done = list.processes.iter().any(|p| p.comm == "sleep");
        if (list.processes.len() == 2 && exec_done) || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let init = list.processes.iter().find(|p| p.pid == 1);
    let init = init.unwrap_or_else(|| panic!("{list:?}"));
    assert_eq!((init.ppid, init.uid), (0, 1000));
    assert_eq!(init.user.as_deref(), Some("app"));
    assert_eq!(init.args, "sh -c sleep 1000 & while :; do :; done");
    let sleep = list.processes.iter().find(|p| p.comm == "sleep");
    let sleep = sleep.unwrap_or_else(|| panic!("{list:?}"));
    assert_eq!((sleep.ppid, sleep.args.as_str()), (1, "sleep 1000"));
    assert!(sleep.start_time_ns <= list.now_ns && sleep.rss_bytes > 0);
    // An exec'd process is the container's too; the agent and the host are not.
    let o = run(&mut c, "e1", sh_in("c1", "echo $$; sleep 0.5"));
    assert_eq!(o.status, exited(0), "{}", o.stderr);
    let before = c.stats("c1").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let after = c.stats("c1").unwrap();
    assert_eq!(after.pids, 2, "{after:?}");
    let used = |s: &agent_client::GuestStats| s.cpu.container_user_ns + s.cpu.container_system_ns;
    // A busy loop for 1.5 s: well over half a second of CPU, whatever the host's load.
    assert!(
        used(&after) - used(&before) > 300_000_000,
        "{before:?} {after:?}"
    );
    assert!(after.cpu.vm_total_ns > before.cpu.vm_total_ns);
    assert!(after.memory.total > 0 && after.memory.free <= after.memory.total);
    assert!(!after.networks.iter().any(|n| n.name == "lo"));
    c.signal("c1-init", libc::SIGKILL).unwrap();
    c.wait_process("c1-init").unwrap();
    let e = c.stats("c1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState), "{e}");
}

/// Sysctls are set in the container's own IPC namespace (the host's stays as it was); an
/// agent without a cgroup tree (this one, on a host) refuses limits rather than ignore them.
#[test]
fn sysctls_are_the_containers_and_limits_need_a_cgroup_tree() {
    if !available() {
        return;
    }
    let host_msgmax = std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap();
    let a = TestAgent::start("sysctl");
    let mut c = a.client();
    let mut spec = dir_spec(&a.rootfs("root"), "h");
    let wanted = if host_msgmax.trim() == "12345" {
        "23456"
    } else {
        "12345"
    };
    spec.sysctls = vec![("kernel.msgmax".into(), wanted.into())];
    c.create_container("s1", &spec).unwrap();
    let out = run(&mut c, "p1", sh_in("s1", "cat /proc/sys/kernel/msgmax"));
    assert_eq!(out.status, exited(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), wanted);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax").unwrap(),
        host_msgmax
    );
    // A sysctl the kernel does not have: the container is not made, and says which.
    let mut spec = dir_spec(&a.rootfs("root2"), "h");
    spec.sysctls = vec![("kernel.no_such_sysctl".into(), "1".into())];
    let e = c.create_container("s2", &spec).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SetupFailed), "{e}");
    assert!(e.to_string().contains("kernel.no_such_sysctl"), "{e}");
    let mut spec = dir_spec(&a.rootfs("root3"), "h");
    spec.resources.pids_max = Some(10);
    let e = c.create_container("s3", &spec).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SetupFailed), "{e}");
    assert!(e.to_string().contains("no cgroup tree"), "{e}");
    c.create_container("s3", &dir_spec(&a.rootfs("root4"), "h"))
        .unwrap();
}
