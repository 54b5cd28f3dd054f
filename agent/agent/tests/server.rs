//! The agent's server run on the host as a normal process over a Unix socket (no vsock, no
//! mounts), driven through the real client. Uses /bin/sh and coreutils.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_client::{
    AgentClient, ClientError, Endpoint, ErrorCode, ExitStatus, ProcessSpec, ReadyListener, Rlimit,
    RlimitResource, StdioStream, TtySize,
};
use agent_protocol::{read_frame, write_frame, ConnectionHeader, Response, PROTOCOL_VERSION};

const T: Duration = Duration::from_secs(20);

struct TestAgent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-agent-it-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
            .env("BERTH_AGENT_LOG", "debug")
            .spawn()
            .unwrap();
        let info = ready.wait(T).unwrap();
        assert_eq!(info.protocol_version, PROTOCOL_VERSION);
        TestAgent { child, dir, sock }
    }

    fn client(&self) -> AgentClient {
        let mut c = AgentClient::connect_endpoint(Endpoint::Unix(self.sock.clone()), T).unwrap();
        c.set_request_timeout(Some(T));
        c
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(script: &str) -> ProcessSpec {
    let mut s = ProcessSpec::new(["/bin/sh", "-c", script]);
    s.env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()];
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

/// Creates, attaches everything, starts, feeds `input` (then closes stdin), waits.
fn run(c: &mut AgentClient, id: &str, spec: ProcessSpec, input: Option<&[u8]>) -> Output {
    let tty = spec.tty;
    let has_stdin = spec.stdin;
    c.create_process(id, &spec).unwrap();
    let out = reader(c.attach(id, StdioStream::Stdout).unwrap());
    let err = (!tty).then(|| reader(c.attach(id, StdioStream::Stderr).unwrap()));
    let stdin = has_stdin.then(|| c.attach(id, StdioStream::Stdin).unwrap());
    c.start_process(id).unwrap();
    if let Some(mut s) = stdin {
        s.write_all(input.unwrap_or_default()).unwrap();
        drop(s);
    }
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

#[test]
fn echo_output_and_exit_codes() {
    let a = TestAgent::start("echo");
    let mut c = a.client();
    let o = run(
        &mut c,
        "echo",
        ProcessSpec::new(["/bin/echo", "hello", "world"]),
        None,
    );
    assert_eq!(o.stdout, "hello world\n");
    assert_eq!(o.status, exited(0));
    let o = run(&mut c, "three", sh("exit 3"), None);
    assert_eq!(o.status, exited(3));
    let o = run(&mut c, "killed", sh("echo before; kill -9 $$"), None);
    assert_eq!(o.stdout, "before\n");
    assert_eq!(
        o.status,
        ExitStatus {
            code: 137,
            signal: Some(9)
        }
    );
    // PATH lookup from the process's own environment.
    let mut spec = ProcessSpec::new(["echo", "looked up"]);
    spec.env = vec!["PATH=/nonexistent:/bin".into()];
    assert_eq!(run(&mut c, "path", spec, None).stdout, "looked up\n");
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let a = TestAgent::start("apart");
    let mut c = a.client();
    let o = run(&mut c, "p", sh("echo out; echo err >&2; echo out2"), None);
    assert_eq!(o.stdout, "out\nout2\n");
    assert_eq!(o.stderr, "err\n");
}

#[test]
fn stdin_is_piped_and_its_eof_ends_cat() {
    let a = TestAgent::start("stdin");
    let mut c = a.client();
    let mut spec = ProcessSpec::new(["/bin/cat"]);
    spec.stdin = true;
    // Larger than a pipe buffer, so flow control is exercised both ways.
    let input: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = run(&mut c, "cat", spec, Some(&input));
    assert_eq!(o.status, exited(0));
    assert_eq!(o.stdout.as_bytes(), &input[..]);
    // Without stdin, the process reads /dev/null.
    let o = run(&mut c, "null", ProcessSpec::new(["/bin/cat"]), None);
    assert_eq!((o.stdout.as_str(), o.status), ("", exited(0)));
}

#[test]
fn tty_is_a_terminal_and_pipes_are_not() {
    let a = TestAgent::start("tty");
    let mut c = a.client();
    let script = "if test -t 0; then echo yes; else echo no; fi";
    let mut spec = sh(script);
    spec.tty = true;
    let o = run(&mut c, "tty", spec, None);
    assert_eq!(o.stdout, "yes\r\n");
    assert_eq!(run(&mut c, "notty", sh(script), None).stdout, "no\n");
}

#[test]
fn tty_stdin_eof_ends_cat() {
    let a = TestAgent::start("tty-cat");
    let mut c = a.client();
    for (id, input) in [("line", &b"hello\n"[..]), ("partial", b"abc")] {
        let mut spec = ProcessSpec::new(["/bin/cat"]);
        spec.tty = true;
        spec.stdin = true;
        spec.tty_size = Some(TtySize {
            rows: 30,
            cols: 100,
        });
        let o = run(&mut c, id, spec, Some(input));
        assert_eq!(o.status, exited(0), "{id}");
        let text = String::from_utf8_lossy(input).replace('\n', "\r\n");
        // The terminal echoes the input, then cat prints it.
        assert!(o.stdout.contains(&text), "{id}: {:?}", o.stdout);
    }
}

#[test]
fn tty_resize_reaches_the_process() {
    let a = TestAgent::start("resize");
    let mut c = a.client();
    let mut spec = sh("stty size; kill -STOP $$; stty size");
    spec.tty = true;
    spec.tty_size = Some(TtySize { rows: 24, cols: 80 });
    c.create_process("r", &spec).unwrap();
    let out = reader(c.attach("r", StdioStream::Stdout).unwrap());
    let pid = c.start_process("r").unwrap();
    // Wait for the stop, resize, continue.
    wait_until(|| proc_state(pid as i32) == Some('T'));
    c.resize_tty("r", 50, 132).unwrap();
    c.signal("r", libc::SIGCONT).unwrap();
    assert_eq!(c.wait_process("r").unwrap(), exited(0));
    assert_eq!(out.join().unwrap(), "24 80\r\n50 132\r\n");
    let e = c.resize_tty("r", 1, 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
}

#[test]
fn missing_and_non_executable_programs() {
    let a = TestAgent::start("exec-errors");
    let mut c = a.client();
    for (id, argv0) in [
        ("abs", "/nonexistent/berth-x"),
        ("path", "berth-no-such-cmd"),
    ] {
        c.create_process(id, &ProcessSpec::new([argv0])).unwrap();
        let e = c.start_process(id).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{id}: {e}");
        assert_eq!(c.wait_process(id).unwrap(), exited(127));
    }
    let file = a.dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.create_process("noexec", &ProcessSpec::new([file.to_str().unwrap()]))
        .unwrap();
    let out = reader(c.attach("noexec", StdioStream::Stdout).unwrap());
    let e = c.start_process("noexec").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
    assert_eq!(c.wait_process("noexec").unwrap(), exited(126));
    assert_eq!(out.join().unwrap(), "");
    // A missing working directory is a setup failure, reported as such.
    let mut spec = ProcessSpec::new(["/bin/true"]);
    spec.cwd = "/nonexistent-berth-dir".into();
    c.create_process("cwd", &spec).unwrap();
    let e = c.start_process("cwd").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SpawnFailed), "{e}");
    assert!(e.to_string().contains("working directory"), "{e}");
}

#[test]
fn background_child_holding_stdout_does_not_delay_exit() {
    let a = TestAgent::start("background");
    let mut c = a.client();
    let start = Instant::now();
    let o = run(&mut c, "bg", sh("sleep 30 & echo $!; echo done"), None);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(o.status, exited(0));
    let mut lines = o.stdout.lines();
    let bg: i32 = lines.next().unwrap().parse().unwrap();
    assert_eq!(lines.next(), Some("done"));
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(bg, libc::SIGKILL) };
}

#[test]
fn exit_is_reported_only_after_output_is_closed() {
    let a = TestAgent::start("drain");
    let mut c = a.client();
    c.create_process("d", &sh("head -c 100000 /dev/zero | tr '\\0' x; echo end"))
        .unwrap();
    let mut out = c.attach("d", StdioStream::Stdout).unwrap();
    c.start_process("d").unwrap();
    // A second connection waits while nothing reads the output yet: the agent must not
    // report the exit before all of it is delivered.
    let mut c2 = c.open_control().unwrap();
    let waiter = std::thread::spawn(move || c2.wait_process("d").unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let mut v = Vec::new();
    out.set_read_timeout(Some(T)).unwrap();
    out.read_to_end(&mut v).unwrap();
    assert_eq!(waiter.join().unwrap(), exited(0));
    assert_eq!(v.len(), 100_004);
    assert!(v.ends_with(b"xend\n"));

    // Strictly: once the exit is reported, all output and the end of the stream are
    // already in the socket. Read without waiting.
    for i in 0..20 {
        let id = format!("strict{i}");
        c.create_process(&id, &sh("echo one; echo two >&2; echo three"))
            .unwrap();
        let mut out = c.attach(&id, StdioStream::Stdout).unwrap();
        let mut err = c.attach(&id, StdioStream::Stderr).unwrap();
        c.start_process(&id).unwrap();
        assert_eq!(c.wait_process(&id).unwrap(), exited(0));
        for (s, want) in [(&mut out, "one\nthree\n"), (&mut err, "two\n")] {
            s.set_nonblocking(true).unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got)
                .unwrap_or_else(|e| panic!("{id}: stream not closed at exit report: {e}"));
            assert_eq!(got, want);
        }
    }
}

fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn proc_state(pid: i32) -> Option<char> {
    proc_stat(pid).map(|(s, _)| s)
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn orphans_are_reaped() {
    let a = TestAgent::start("zombie");
    let mut c = a.client();
    let o = run(&mut c, "z", sh("sleep 1 & echo $!"), None);
    let orphan: i32 = o.stdout.trim().parse().unwrap();
    // Its parent exited: it now belongs to the agent (a subreaper)...
    if let Some((_, ppid)) = proc_stat(orphan) {
        assert_eq!(ppid, a.pid());
    }
    // ...which reaps it when it exits: no zombie stays behind.
    wait_until(|| proc_stat(orphan).is_none());
}

#[test]
fn signals_are_delivered() {
    let a = TestAgent::start("signal");
    let mut c = a.client();
    c.create_process("s", &ProcessSpec::new(["/bin/sleep", "30"]))
        .unwrap();
    c.start_process("s").unwrap();
    let mut waiter = c.open_control().unwrap();
    let w = std::thread::spawn(move || waiter.wait_process("s").unwrap());
    c.signal("s", libc::SIGTERM).unwrap();
    assert_eq!(
        w.join().unwrap(),
        ExitStatus {
            code: 143,
            signal: Some(15)
        }
    );
    let e = c.signal("s", libc::SIGTERM).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
}

#[test]
fn lifecycle_errors() {
    let a = TestAgent::start("lifecycle");
    let mut c = a.client();
    c.create_process("a", &ProcessSpec::new(["/bin/true"]))
        .unwrap();
    let e = c
        .create_process("a", &ProcessSpec::new(["/bin/true"]))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists));
    let e = c.start_process("nope").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownProcess));
    c.start_process("a").unwrap();
    let e = c.start_process("a").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
    let e = c.attach("a", StdioStream::Stdout).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
    assert_eq!(c.wait_process("a").unwrap(), exited(0));
    c.delete_process("a").unwrap();
    // The id is free again.
    c.create_process("a", &ProcessSpec::new(["/bin/false"]))
        .unwrap();
    c.start_process("a").unwrap();
    assert_eq!(c.wait_process("a").unwrap(), exited(1));
}

#[test]
fn unattached_output_is_discarded() {
    let a = TestAgent::start("discard");
    let mut c = a.client();
    c.create_process("big", &sh("head -c 5000000 /dev/zero; echo err >&2"))
        .unwrap();
    c.start_process("big").unwrap();
    assert_eq!(c.wait_process("big").unwrap(), exited(0));
}

#[test]
fn env_cwd_rlimits_and_identity() {
    let a = TestAgent::start("setup");
    let mut c = a.client();
    let mut spec = sh("echo $FOO; pwd; ulimit -n; ulimit -Hn");
    spec.env.push("FOO=bar baz".into());
    spec.cwd = "/tmp".into();
    spec.rlimits = vec![Rlimit {
        resource: RlimitResource::Nofile,
        soft: 123,
        hard: 456,
    }];
    let o = run(&mut c, "env", spec, None);
    assert_eq!(o.stdout, "bar baz\n/tmp\n123\n456\n");
    if !test_gate::require(test_gate::root(), "the identity check") {
        return;
    }
    let mut spec = sh("id -u; id -g; id -G");
    spec.uid = 65534;
    spec.gid = 65533;
    spec.additional_gids = vec![65532, 65531];
    let o = run(&mut c, "id", spec, None);
    assert_eq!(
        o.stdout, "65534\n65533\n65533 65531 65532\n",
        "{}",
        o.stderr
    );
}

/// Sends one raw frame body.
fn send_raw(s: &mut UnixStream, body: &[u8]) {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    s.write_all(&f).unwrap();
}

fn expect_error(s: &mut UnixStream, code: ErrorCode) {
    match read_frame::<Response, _>(s).unwrap() {
        Response::Error { code: got, .. } => assert_eq!(got, code),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn is_closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn garbage_gets_errors_and_the_server_stays_up() {
    let a = TestAgent::start("garbage");
    // Garbage as the first frame: error, then closed.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    send_raw(&mut s, b"\x00\xffnot json at all");
    expect_error(&mut s, ErrorCode::MalformedFrame);
    assert!(is_closed(&mut s));
    // An unknown connection type.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    send_raw(&mut s, br#"{"type":"exec","id":"x"}"#);
    expect_error(&mut s, ErrorCode::Unsupported);
    // An incompatible version.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    send_raw(
        &mut s,
        br#"{"type":"hello","protocol_version":{"major":99,"minor":0}}"#,
    );
    expect_error(&mut s, ErrorCode::IncompatibleVersion);
    // A control connection survives bad requests.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    write_frame(
        &mut s,
        &ConnectionHeader::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    assert!(matches!(
        read_frame::<Response, _>(&mut s).unwrap(),
        Response::Hello { .. }
    ));
    send_raw(&mut s, b"{{{{");
    expect_error(&mut s, ErrorCode::MalformedFrame);
    send_raw(&mut s, br#"{"type":"mount_share","tag":"rootfs"}"#);
    expect_error(&mut s, ErrorCode::Unsupported);
    send_raw(
        &mut s,
        br#"{"type":"create_process","id":"x","spec":{"argv":[]}}"#,
    );
    expect_error(&mut s, ErrorCode::InvalidArgument);
    send_raw(
        &mut s,
        br#"{"type":"create_process","id":"x","spec":{"argv":["a\u0000b"]}}"#,
    );
    expect_error(&mut s, ErrorCode::InvalidArgument);
    send_raw(
        &mut s,
        br#"{"type":"create_process","id":"x","spec":{"argv":["/bin/true"],"uid":4294967295}}"#,
    );
    expect_error(&mut s, ErrorCode::InvalidArgument);
    send_raw(
        &mut s,
        br#"{"type":"create_process","id":"x","spec":{"argv":["/bin/true"]}}"#,
    );
    assert_eq!(read_frame::<Response, _>(&mut s).unwrap(), Response::Ok);
    // An oversized frame: error, then closed (the stream cannot be resynchronised).
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    expect_error(&mut s, ErrorCode::MalformedFrame);
    assert!(is_closed(&mut s));
    // A truncated frame followed by a hang-up.
    let mut s = UnixStream::connect(&a.sock).unwrap();
    s.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    drop(s);
    // Still serving, and still knows "x".
    let mut c = a.client();
    c.start_process("x").unwrap();
    assert_eq!(c.wait_process("x").unwrap(), exited(0));
}

#[test]
fn shutdown_stops_processes_and_ends_the_agent() {
    let mut a = TestAgent::start("shutdown");
    let mut c = a.client();
    // Ignores SIGTERM (bash: dash's `trap ''` does not hold across its own exit path).
    let spec = ProcessSpec::new(["/bin/bash", "-c", "trap '' TERM; echo ready; exec sleep 30"]);
    c.create_process("s", &spec).unwrap();
    let mut out = c.attach("s", StdioStream::Stdout).unwrap();
    let pid = c.start_process("s").unwrap() as i32;
    // Only once the trap is set does the test mean anything.
    let mut line = [0u8; 6];
    out.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    let mut polite = a.client();
    polite
        .create_process("p", &ProcessSpec::new(["/bin/sleep", "30"]))
        .unwrap();
    let polite_pid = polite.start_process("p").unwrap() as i32;
    let start = Instant::now();
    c.shutdown(Some(Duration::from_millis(300))).unwrap();
    let status = wait_child(&mut a.child, T);
    assert!(status.success(), "{status:?}");
    // The grace period was waited out for the process that ignored SIGTERM, then it was
    // killed; the other one went at SIGTERM.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    for p in [pid, polite_pid] {
        wait_until(|| proc_stat(p).is_none_or(|(s, _)| s == 'Z'));
    }
    assert!(!Path::new(&a.sock).exists() || UnixStream::connect(&a.sock).is_err());
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "agent did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn client_error_for_unknown_stream_process() {
    let a = TestAgent::start("attach-unknown");
    let c = a.client();
    let e = c.attach("ghost", StdioStream::Stdout).unwrap_err();
    assert!(matches!(
        e,
        ClientError::Agent {
            code: ErrorCode::UnknownProcess,
            ..
        }
    ));
}

#[test]
fn no_agent_descriptor_leaks_into_processes() {
    let a = TestAgent::start("fds");
    let mut c = a.client();
    // Keep a few agent-side descriptors busy meanwhile: other connections, a process with
    // a tty and one with pipes, each holding pumps and pipes open.
    let mut other = c.open_control().unwrap();
    let mut tty = ProcessSpec::new(["/bin/sleep", "5"]);
    tty.tty = true;
    other.create_process("busy-tty", &tty).unwrap();
    let _tty_out = other.attach("busy-tty", StdioStream::Stdout).unwrap();
    other.start_process("busy-tty").unwrap();
    let mut piped = ProcessSpec::new(["/bin/sleep", "5"]);
    piped.stdin = true;
    other.create_process("busy-pipe", &piped).unwrap();
    let _in = other.attach("busy-pipe", StdioStream::Stdin).unwrap();
    let _out = other.attach("busy-pipe", StdioStream::Stdout).unwrap();
    other.start_process("busy-pipe").unwrap();
    // `ls` lists its own open descriptors: stdio plus the directory it is reading.
    let o = run(&mut c, "fds", sh("exec ls /proc/self/fd"), None);
    assert_eq!(o.stdout, "0\n1\n2\n3\n", "{}", o.stderr);
    for id in ["busy-tty", "busy-pipe"] {
        other.signal(id, libc::SIGKILL).unwrap();
    }
}

#[test]
fn many_processes_from_many_connections() {
    let a = TestAgent::start("many");
    let c = a.client();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut c = c.open_control().unwrap();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let id = format!("p{t}-{i}");
                    let o = run(&mut c, &id, sh(&format!("echo {id}; exit {i}")), None);
                    assert_eq!(o.stdout, format!("{id}\n"));
                    assert_eq!(o.status, exited(i));
                    c.delete_process(&id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
