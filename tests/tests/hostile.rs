//! berthd under hostile clients: whatever one client sends, the daemon stays up and keeps
//! answering the others. No VM is involved: these run on the host (as root).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use berth_tests::{busybox_image, http_unix, Berthd, Daemon};

/// `/_ping` answers 200 within `limit`, on a connection of its own.
fn ping_within(d: &Daemon, limit: Duration, when: &str) {
    let started = Instant::now();
    let r = http_unix(d.socket(), "GET", "/_ping", "", b"")
        .unwrap_or_else(|e| panic!("{when}: /_ping failed: {e}\n{}", d.log()));
    assert_eq!(r.status, 200, "{when}: {}", r.text());
    assert!(
        started.elapsed() < limit,
        "{when}: /_ping took {:?}",
        started.elapsed()
    );
}

/// A tar of one directory `depth` levels deep (its name in a GNU long-name entry).
fn deep_tar(depth: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, vec!["d"; depth].join("/"), std::io::empty())
        .unwrap();
    b.into_inner().unwrap()
}

/// The test process's own descriptor limit, raised to its hard limit (it holds hundreds of
/// client connections).
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on one rlimit that outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn deep_layers_and_long_patterns_are_refused_and_the_daemon_stays_up() {
    let mut d = Berthd::start();
    // 15 000 levels once took the daemon down (a recursive removal of what was unpacked).
    for (depth, limit) in [
        (15_000, "bytes in its path than the limit of 4095"),
        (1_025, "directories in its path than the limit of 1024"),
    ] {
        let out = d.docker_with_input(&["import", "-", "deep:latest"], &deep_tar(depth));
        assert_ne!(out.code(), 0, "a {depth}-deep layer was imported");
        assert!(out.stderr.contains(limit), "{depth}: {}", out.stderr);
        assert!(
            !out.stderr.contains(&d.data_root().display().to_string()),
            "the error shows the data root: {}",
            out.stderr
        );
        ping_within(&d, Duration::from_secs(1), "after a deep import");
    }
    // At the limit it is an image like any other, and removing it is no harder.
    let deepest = deep_tar(1_024);
    let out = d.docker_with_input(&["import", "-", "deep:ok"], &deepest);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // A reference filter of 25 000 stars, each before a `?`, matched against that image's
    // names: no backtracking blow-up (it tried every way to share a name among the stars).
    let pattern = "*?".repeat(25_000);
    let filters = format!("%7B%22reference%22%3A%5B%22{pattern}%22%5D%7D");
    let started = Instant::now();
    let r = d.api("GET", &format!("/images/json?filters={filters}"), b"");
    assert!(
        r.status == 200 || r.status == 400 || r.status == 431 || r.status == 414,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(d.alive(), "berthd died: {}", d.log());
    ping_within(&d, Duration::from_secs(1), "after a long pattern");
    d.docker_ok(&["rmi", "deep:ok"]);
}

#[test]
fn idle_and_half_open_connections_do_not_keep_others_out() {
    raise_own_nofile();
    // 256 descriptors: berthd serves at most 128 connections.
    let mut d = Berthd::start_limited(&[], Some(256));
    let mut held = Vec::new();
    for i in 0..1_000 {
        let Ok(mut s) = UnixStream::connect(d.socket()) else {
            break;
        };
        // Some send half a request's headers and stop.
        if i % 3 == 0 {
            let _ = s.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    assert!(held.len() >= 500, "only {} connections", held.len());
    for i in 0..5 {
        ping_within(
            &d,
            Duration::from_secs(1),
            &format!("ping {i} with 1000 held"),
        );
    }
    let images = d.docker(&["images"]);
    assert_eq!(images.code(), 0, "{}", images.stderr);
    assert!(d.alive(), "berthd died: {}", d.log());
    let log = d.log();
    assert!(log.len() < 64 << 10, "the log grew to {} bytes", log.len());
    drop(held);
}

#[test]
fn stalled_uploads_do_not_hold_up_other_clients() {
    raise_own_nofile();
    let mut d = Berthd::start();
    let mut h = tar::Header::new_gnu();
    h.set_path("manifest.json").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(900_000_000);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let big_file_header = h.as_bytes().to_vec();
    let mut stalled = Vec::new();
    // More than tokio's 512 blocking threads: each once held one while it waited.
    for _ in 0..600 {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        s.write_all(
            b"POST /images/load?quiet=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\nContent-Length: 1000000000\r\n\r\n",
        )
        .unwrap();
        // A tar header announcing a big file, then nothing: the archive reader waits.
        s.write_all(&big_file_header).unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let archive = std::fs::read(busybox_image("archive")).unwrap();
    let out = d.docker_with_input(&["load"], &archive);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    d.docker_ok(&["create", "--name", "beside-stalled", "busybox", "true"]);
    d.docker_ok(&["rm", "beside-stalled"]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "load and create beside 600 stalled uploads took {:?}",
        started.elapsed()
    );
    ping_within(&d, Duration::from_secs(1), "beside stalled uploads");
    assert!(d.alive(), "berthd died: {}", d.log());
    drop(stalled);
}

#[test]
fn wrongly_typed_fields_are_refused_by_name_and_unknown_ones_ignored() {
    let mut d = Berthd::start();
    let archive = std::fs::read(busybox_image("archive")).unwrap();
    let out = d.docker_with_input(&["load"], &archive);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // Each was answered 201 and the field ignored; dockerd answers 400.
    for (body, field) in [
        (r#""HostConfig": []"#, "HostConfig must be an object"),
        (r#""HostConfig": "x""#, "HostConfig must be an object"),
        (
            r#""HostConfig": {"RestartPolicy": "always"}"#,
            "HostConfig.RestartPolicy must be an object",
        ),
        (
            r#""HostConfig": {"LogConfig": "syslog"}"#,
            "HostConfig.LogConfig must be an object",
        ),
        (
            r#""HostConfig": {"Init": "true"}"#,
            "HostConfig.Init must be a boolean",
        ),
        (
            r#""ExposedPorts": ["80/tcp"]"#,
            "ExposedPorts must be an object",
        ),
        (
            r#""NetworkingConfig": "x""#,
            "NetworkingConfig must be an object",
        ),
        (
            r#""NetworkingConfig": {"EndpointsConfig": ["web"]}"#,
            "NetworkingConfig.EndpointsConfig must be an object",
        ),
        // What berth refuses cannot come in under a wrongly typed parent...
        (
            r#""HostConfig": [{"VolumesFrom": ["other"]}]"#,
            "HostConfig must be an object",
        ),
        // ...nor under another spelling, which dockerd's decoder matches.
        (
            r#""hostconfig": {"volumesfrom": ["other"]}"#,
            "HostConfig.VolumesFrom",
        ),
    ] {
        let json = format!(r#"{{"Image": "busybox", "Cmd": ["true"], {body}}}"#);
        let r = d.api("POST", "/v1.41/containers/create", json.as_bytes());
        assert_eq!(r.status, 400, "{json}: {}", r.text());
        let message: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        let message = message["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{json}: {message}");
    }
    // Fields of newer API versions are ignored, as dockerd ignores them.
    let r = d.api(
        "POST",
        "/v1.41/containers/create?name=future",
        br#"{"Image": "busybox", "Cmd": ["true"], "FutureField": [1], "HostConfig": {"FutureOption": {"a": 1}}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.docker_ok(&["rm", "future"]);
    assert!(d.alive(), "berthd died: {}", d.log());
    assert_eq!(d.docker_ok(&["ps", "-aq"]).trim(), "");
}

/// Sends an attach request asking to upgrade the connection; returns the status code.
fn attach_upgrade(s: &mut UnixStream, container: &str) -> u16 {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1.41/containers/{container}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no answer to an attach ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn attached_streams_are_capped_and_do_not_take_every_descriptor() {
    raise_own_nofile();
    // 256 descriptors: at most 64 attached streams (upgraded connections leave the table
    // of connections, which once let them take every descriptor berthd had).
    let mut d = Berthd::start_limited(&[], Some(256));
    let archive = std::fs::read(busybox_image("archive")).unwrap();
    let out = d.docker_with_input(&["load"], &archive);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // A created container: an attached stream waits for its first run.
    d.docker_ok(&["create", "--name", "holder", "busybox", "true"]);
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        match attach_upgrade(&mut s, "holder") {
            101 => streams.push(s),
            503 => refused += 1,
            other => panic!("attach answered {other}"),
        }
    }
    assert_eq!(streams.len(), 64, "{refused} refused");
    assert_eq!(refused, 300 - 64);
    for i in 0..5 {
        ping_within(
            &d,
            Duration::from_secs(1),
            &format!("ping {i} with 64 streams"),
        );
    }
    let images = d.docker(&["images"]);
    assert_eq!(images.code(), 0, "{}", images.stderr);
    // Clients that hang up give their permits back, within the second berthd takes to see
    // it (a stream waiting on a created container has nothing to write that would fail).
    drop(streams);
    let hung_up = Instant::now();
    let mut again = Vec::new();
    while again.len() < 64 && hung_up.elapsed() < Duration::from_secs(5) {
        let mut s = UnixStream::connect(d.socket()).unwrap();
        if attach_upgrade(&mut s, "holder") == 101 {
            again.push(s);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(
        again.len(),
        64,
        "permits back after {:?}",
        hung_up.elapsed()
    );
    drop(again);
    d.docker_ok(&["rm", "holder"]);
    assert!(d.alive(), "berthd died: {}", d.log());
}
