//! Client tests against a fake VMM that plays the agent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use agent_protocol::{
    read_frame, write_frame, ConnectionHeader, FrameError, Notification, Request, Response,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

use super::*;
use crate::test_util::{temp_dir, FakeVmm};

/// Reads the Hello and answers it like an agent.
/// Answers the client's hello as an agent speaking `version` (`agent_version` names it).
fn hello_as(s: &mut UnixStream, version: ProtocolVersion, agent_version: &str) {
    let _: ConnectionHeader = read_frame(s).unwrap();
    write_frame(
        s,
        &Response::Hello {
            protocol_version: version,
            agent_version: agent_version.into(),
        },
    )
    .unwrap();
}

fn agent_hello(s: &mut UnixStream) {
    let h: ConnectionHeader = read_frame(s).unwrap();
    assert_eq!(
        h,
        ConnectionHeader::Hello {
            protocol_version: PROTOCOL_VERSION
        }
    );
    write_frame(
        s,
        &Response::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "test".into(),
        },
    )
    .unwrap();
}

fn accept_connect(mut s: UnixStream) -> UnixStream {
    s.write_all(b"OK 77\n").unwrap();
    s
}

#[test]
fn connect_retries_until_the_agent_listens() {
    let dir = temp_dir("retry");
    let uds = dir.join("vm.sock");
    let mut attempts = 0;
    let vmm = FakeVmm::start_n(&uds, 3, move |s, port| {
        assert_eq!(port, agent_protocol::AGENT_PORT);
        attempts += 1;
        if attempts < 3 {
            drop(s); // guest not listening yet
            return;
        }
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        let r: Request = read_frame(&mut s).unwrap();
        assert_eq!(r, Request::StartProcess { id: "c1".into() });
        write_frame(&mut s, &Response::Started { pid: 42 }).unwrap();
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    assert_eq!(c.agent_info().agent_version, "test");
    assert_eq!(c.start_process("c1").unwrap(), 42);
    vmm.join();
}

#[test]
fn connect_gives_up_after_timeout() {
    let dir = temp_dir("giveup");
    let uds = dir.join("vm.sock");
    let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
    let t = std::thread::spawn(move || {
        // Refuse everything for a while.
        listener.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_millis(600);
        while Instant::now() < end {
            if let Ok((mut s, _)) = listener.accept() {
                let mut b = [0u8; 32];
                let _ = s.read(&mut b);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let start = Instant::now();
    let e = AgentClient::connect(&uds, Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    match e {
        ClientError::Timeout {
            last: Some(last), ..
        } => {
            assert!(
                matches!(*last, ClientError::Dial(DialError::Refused { .. })),
                "{last:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    t.join().unwrap();
}

#[test]
fn garbage_vmm_reply_fails_at_once() {
    let dir = temp_dir("garbage-vmm");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start(&uds, |mut s, _| {
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
    });
    let e = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(e, ClientError::Dial(DialError::BadReply { .. })),
        "{e:?}"
    );
    vmm.join();
}

/// Runs a fake agent that answers the Hello and then one request with `reply` bytes.
fn with_agent_reply(reply: Vec<u8>) -> (AgentClient, FakeVmm) {
    let dir = temp_dir("agent-reply");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start(&uds, move |s, _| {
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        let _: Request = read_frame(&mut s).unwrap();
        let _ = s.write_all(&reply);
    });
    (
        AgentClient::connect(&uds, Duration::from_secs(10)).unwrap(),
        vmm,
    )
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn hostile_replies_are_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (framed(b"not json"), "frame"),
        (
            framed(br#"{"type":"exited","code":300,"signal":null}"#),
            "invalid",
        ),
        (
            framed(br#"{"type":"exited","code":1,"signal":9}"#),
            "invalid",
        ),
        (
            framed(br#"{"type":"started","pid":0}"#),
            "unexpected-or-invalid",
        ),
        (framed(br#"{"type":"ok"}"#), "unexpected"),
        (((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(), "frame"),
        (u32::MAX.to_be_bytes().to_vec(), "frame"),
        (vec![0, 0], "frame"),
        (framed(b"{\"type\":\"hello\"")[..6].to_vec(), "frame"),
        (Vec::new(), "frame"),
    ];
    for (reply, kind) in cases {
        let (mut c, vmm) = with_agent_reply(reply.clone());
        let e = c.wait_process("c1").unwrap_err();
        let ok = match kind {
            "frame" => matches!(e, ClientError::Frame(_)),
            "invalid" => matches!(e, ClientError::InvalidReply { .. }),
            "unexpected" => matches!(e, ClientError::UnexpectedReply { .. }),
            _ => matches!(
                e,
                ClientError::UnexpectedReply { .. } | ClientError::InvalidReply { .. }
            ),
        };
        assert!(ok, "{:?} gave {e:?}", String::from_utf8_lossy(&reply));
        // The connection is not trusted after that.
        assert!(matches!(c.signal("c1", 9), Err(ClientError::Broken)));
        vmm.join();
    }
}

#[test]
fn agent_errors_keep_the_connection_and_are_sanitised() {
    let dir = temp_dir("agent-error");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        let _: Request = read_frame(&mut s).unwrap();
        write_frame(
            &mut s,
            &Response::error(ErrorCode::NotFound, "no \x1b[31msuch\x1b[0m file"),
        )
        .unwrap();
        let _: Request = read_frame(&mut s).unwrap();
        write_frame(&mut s, &Response::Ok).unwrap();
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    let e = c.start_process("c1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(!e.to_string().contains('\x1b'), "{e}");
    c.signal("c1", 15).unwrap();
    vmm.join();
}

#[test]
fn invalid_requests_are_not_sent() {
    let (mut c, vmm) = with_agent_reply(framed(br#"{"type":"ok"}"#));
    let e = c.signal("c1", 0).unwrap_err();
    assert!(matches!(e, ClientError::InvalidRequest { .. }), "{e:?}");
    let e = c
        .create_process("../x", &ProcessSpec::new(["true"]))
        .unwrap_err();
    assert!(matches!(e, ClientError::InvalidRequest { .. }), "{e:?}");
    // The connection is still in step: the fake agent answers the next real request.
    c.resize_tty("c1", 10, 10).unwrap();
    vmm.join();
}

#[test]
fn incompatible_agent_is_refused() {
    let dir = temp_dir("incompatible");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        hello_as(&mut s, ProtocolVersion { major: 9, minor: 0 }, "future");
    });
    let e = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(e, ClientError::IncompatibleVersion { .. }),
        "{e:?}"
    );
    vmm.join();
}

#[test]
fn attach_opens_a_stream_connection() {
    let dir = temp_dir("attach");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start_n(&uds, 3, |s, _| {
        let mut s = accept_connect(s);
        match read_frame::<ConnectionHeader, _>(&mut s).unwrap() {
            ConnectionHeader::Hello { .. } => write_frame(
                &mut s,
                &Response::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    agent_version: "test".into(),
                },
            )
            .unwrap(),
            ConnectionHeader::Attach { process_id, stream } if process_id == "c1" => {
                assert_eq!(stream, StdioStream::Stdout);
                // The Ok and the first output in one write: nothing may be lost.
                let mut out = agent_protocol::encode(&Response::Ok).unwrap();
                out.extend_from_slice(b"output");
                s.write_all(&out).unwrap();
            }
            ConnectionHeader::Attach { .. } => {
                write_frame(&mut s, &Response::error(ErrorCode::UnknownProcess, "no")).unwrap()
            }
        }
    });
    let c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    let mut out = c.attach("c1", StdioStream::Stdout).unwrap();
    let mut got = String::new();
    out.read_to_string(&mut got).unwrap();
    assert_eq!(got, "output");
    let e = c.attach("c2", StdioStream::Stdout).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownProcess));
    vmm.join();
}

#[test]
fn shutdown_accepts_a_vanishing_vm() {
    let (c, vmm) = with_agent_reply(Vec::new());
    c.shutdown(Some(Duration::from_millis(10))).unwrap();
    vmm.join();
    let (c, vmm) = with_agent_reply(framed(br#"{"type":"ok"}"#));
    c.shutdown(None).unwrap();
    vmm.join();
}

/// What the agent does once it listens: connect to the ready socket and say so.
fn send_ready(path: &std::path::Path) {
    let mut s = UnixStream::connect(path).unwrap();
    write_frame(
        &mut s,
        &Notification::Ready {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
        },
    )
    .unwrap();
}

#[test]
fn ready_listener_receives_the_notification() {
    let dir = temp_dir("ready");
    let uds = dir.join("vm.sock");
    let ready = ReadyListener::bind(&uds).unwrap();
    assert_eq!(ready.path(), dir.join("vm.sock_1025"));
    let path = ready.path().to_owned();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        send_ready(&path);
    });
    let info = ready.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(info.agent_version, "0.1.0");
    t.join().unwrap();
    let path = ready.path().to_owned();
    drop(ready);
    assert!(!path.exists());
}

#[test]
fn a_ready_connection_reset_before_its_frame_is_not_the_answer() {
    // The agent gave up on a connect the VMM completed late: that connection closes empty
    // (or with half a frame), and the agent's next one carries the notification.
    let dir = temp_dir("ready-again");
    let uds = dir.join("vm.sock");
    let ready = ReadyListener::bind(&uds).unwrap();
    let path = ready.path().to_owned();
    let t = std::thread::spawn(move || {
        drop(UnixStream::connect(&path).unwrap());
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&framed(br#"{"type":"ready""#)[..6]).unwrap();
        drop(s);
        send_ready(&path);
    });
    let info = ready.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(info.agent_version, "0.1.0");
    t.join().unwrap();
    // With no second connection, the wait times out and says what the last one did.
    let path = ready.path().to_owned();
    drop(UnixStream::connect(&path).unwrap());
    let e = ready.wait(Duration::from_millis(300)).unwrap_err();
    let ClientError::Timeout {
        last: Some(last), ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert!(
        matches!(**last, ClientError::Frame(FrameError::Closed)),
        "{e:?}"
    );
}

#[test]
fn ready_listener_times_out_and_rejects_garbage() {
    let dir = temp_dir("ready-bad");
    let uds = dir.join("vm.sock");
    let ready = ReadyListener::bind(&uds).unwrap();
    let start = Instant::now();
    let e = ready.wait(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() >= Duration::from_millis(100));
    let path = ready.path().to_owned();
    let t = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&framed(br#"{"type":"ready"}"#)).unwrap();
    });
    let e = ready.wait(Duration::from_secs(10)).unwrap_err();
    assert!(matches!(e, ClientError::Frame(_)), "{e:?}");
    t.join().unwrap();
}

#[test]
fn container_requests_need_a_1_1_agent() {
    let dir = temp_dir("old-agent");
    let uds = dir.join("vm.sock");
    // A 1.0 agent: nothing container-related may reach it, since it would ignore the
    // spec's container fields and run the process in its own root.
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        let _: ConnectionHeader = read_frame(&mut s).unwrap();
        let old = ProtocolVersion { major: 1, minor: 0 };
        write_frame(
            &mut s,
            &Response::Hello {
                protocol_version: old,
                agent_version: "old".into(),
            },
        )
        .unwrap();
        // The only request that arrives is the plain one.
        let r: Request = read_frame(&mut s).unwrap();
        assert!(matches!(r, Request::CreateProcess { ref spec, .. } if spec.container.is_none()));
        write_frame(&mut s, &Response::Ok).unwrap();
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    let rootfs = FsSource::Virtiofs {
        tag: "rootfs".into(),
    };
    let e = c
        .create_container("c1", &ContainerSpec::new(rootfs, "h"))
        .unwrap_err();
    assert!(matches!(e, ClientError::AgentTooOld { .. }), "{e}");
    let mut spec = ProcessSpec::new(["true"]);
    spec.user = Some("app".into());
    assert!(matches!(
        c.create_process("p", &spec),
        Err(ClientError::AgentTooOld { .. })
    ));
    assert!(matches!(
        c.delete_container("c1"),
        Err(ClientError::AgentTooOld { .. })
    ));
    c.create_process("p", &ProcessSpec::new(["true"])).unwrap();
    vmm.join();

    // A 1.1 agent gets them.
    let uds = dir.join("vm2.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        let r: Request = read_frame(&mut s).unwrap();
        assert!(matches!(r, Request::CreateContainer { ref id, .. } if id == "c1"));
        write_frame(&mut s, &Response::Ok).unwrap();
        let r: Request = read_frame(&mut s).unwrap();
        assert_eq!(r, Request::DeleteContainer { id: "c1".into() });
        write_frame(
            &mut s,
            &Response::error(
                ErrorCode::InvalidState,
                "container \"c1\" has running processes",
            ),
        )
        .unwrap();
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    let rootfs = FsSource::Directory {
        path: "/tmp/r".into(),
    };
    c.create_container("c1", &ContainerSpec::new(rootfs, "h"))
        .unwrap();
    let e = c.delete_container("c1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidState));
    vmm.join();
}

#[test]
fn a_refresh_brings_fresh_bytes_and_the_hosts_time_to_a_1_2_agent_only() {
    let dir = temp_dir("refresh");
    let uds = dir.join("vm.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    let vmm = FakeVmm::start(&uds, move |s, _| {
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        for _ in 0..2 {
            let r: Request = read_frame(&mut s).unwrap();
            tx.send(r).unwrap();
            write_frame(&mut s, &Response::Ok).unwrap();
        }
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    c.refresh(Some("web-1")).unwrap();
    c.refresh(None).unwrap();
    vmm.join();
    let got: Vec<Request> = rx.try_iter().collect();
    let [Request::Refresh {
        entropy: a,
        realtime_ns,
        hostname,
    }, Request::Refresh { entropy: b, .. }] = &got[..]
    else {
        panic!("{got:?}");
    };
    assert_eq!(a.len(), 64);
    assert_ne!(a, b, "every refresh brings its own bytes");
    assert!(*realtime_ns >= before);
    assert_eq!(hostname.as_deref(), Some("web-1"));

    // A 1.1 agent does not know the request: refused before sending.
    let uds = dir.join("vm2.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        hello_as(&mut s, ProtocolVersion { major: 1, minor: 1 }, "1.1");
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    assert!(matches!(
        c.refresh(None),
        Err(ClientError::AgentTooOld { .. })
    ));
    drop(c);
    vmm.join();
}

#[test]
fn processes_and_stats_come_from_a_1_4_agent_validated() {
    let dir = temp_dir("figures");
    let uds = dir.join("vm.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        agent_hello(&mut s);
        let r: Request = read_frame(&mut s).unwrap();
        assert_eq!(
            r,
            Request::ListProcesses {
                container: "c1".into()
            }
        );
        let list = ProcessList {
            now_ns: 2,
            mem_total_bytes: 3,
            processes: vec![],
            truncated: false,
        };
        write_frame(&mut s, &Response::Processes { list }).unwrap();
        let r: Request = read_frame(&mut s).unwrap();
        assert_eq!(
            r,
            Request::Stats {
                container: "c1".into()
            }
        );
        // A hostile answer: no CPU online.
        let stats = GuestStats {
            memory: MemoryFigures {
                total: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        write_frame(&mut s, &Response::Stats { stats }).unwrap();
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    assert_eq!(c.list_processes("c1").unwrap().now_ns, 2);
    let e = c.stats("c1").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::InvalidReply {
                request: "stats",
                ..
            }
        ),
        "{e}"
    );
    // An invalid reply leaves nothing to trust on the connection.
    assert!(matches!(c.stats("c1"), Err(ClientError::Broken)));
    vmm.join();

    // A 1.3 agent does not know them: refused before sending.
    let uds = dir.join("vm2.sock");
    let vmm = FakeVmm::start(&uds, |s, _| {
        let mut s = accept_connect(s);
        hello_as(&mut s, ProtocolVersion { major: 1, minor: 3 }, "1.3");
    });
    let mut c = AgentClient::connect(&uds, Duration::from_secs(10)).unwrap();
    for e in [
        c.list_processes("c1").unwrap_err(),
        c.stats("c1").unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::AgentTooOld { .. }), "{e}");
    }
    drop(c);
    vmm.join();
}
