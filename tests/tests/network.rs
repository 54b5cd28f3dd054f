//! Networks through the real Docker CLI on berth: published ports, user networks with
//! names resolved between containers, `--network none`, and networks across berthd
//! restarts; every container in its own microVM with a virtio-net device on a tap. These
//! need a KVM that runs Linux guests: on hosts without one, `make test` runs this binary
//! inside the emulated virtualization host, beside the other groups (tests/run-microvm).

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::cli::*;
use berth_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET /` from 127.0.0.1:`port`, or why not.
fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(reply)
}

/// Fetches from `port` until the reply holds `needle` (the server in the guest may still
/// be starting), up to two minutes.
fn wait_http(port: u16, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = http_get(port);
        match &got {
            Ok(reply) if reply.contains(needle) => return reply.clone(),
            _ if Instant::now() > deadline => {
                panic!("127.0.0.1:{port} never answered {needle:?}: last {got:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The image with tests/images/netprobe.c's probe beside busybox, imported once.
fn netprobe_image(d: &Daemon) -> &'static str {
    static IMPORTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = IMPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if !*done {
        let rootfs = busybox_image("netprobe");
        d.docker_ok(&["import", rootfs.to_str().unwrap(), "netprobe:test"]);
        *done = true;
    }
    "netprobe:test"
}

/// An HTTP request for busybox's nc.
const GET: &str = r"printf 'GET / HTTP/1.0\r\n\r\n'";

const HTTPD: &str =
    "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn published_ports_reach_servers_in_the_guest() {
    if !ready() {
        return;
    }
    let d = daemon();
    let web = unique("web");
    let port = free_port();
    let out = run_sh(
        d,
        &[
            "-d",
            "--name",
            &web,
            "--hostname",
            "webhost",
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "-p",
            "127.0.0.1::80",
            "--expose",
            "8080",
        ],
        HTTPD,
    );
    assert!(out.status.success(), "{out:?}");
    // By the port asked for ...
    let reply = wait_http(port, "served-by-webhost");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    // ... and by the ephemeral one, which `docker port` tells.
    let ports = d.docker_ok(&["port", &web, "80/tcp"]);
    let mut host_ports: Vec<u16> = ports
        .lines()
        .filter_map(|l| l.strip_prefix("127.0.0.1:"))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    host_ports.sort();
    assert_eq!(host_ports.len(), 2, "{ports}");
    let ephemeral = *host_ports.iter().find(|p| **p != port).unwrap();
    wait_http(ephemeral, "served-by-webhost");
    let ps = d.docker_ok(&[
        "ps",
        "--filter",
        &format!("name={web}"),
        "--format",
        "{{.Ports}}",
    ]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");
    assert!(ps.contains("8080/tcp"), "{ps}");
    let ip = d.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &web]);
    assert!(ip.starts_with("172.17.0."), "{ip}");

    // A host port in use: the start fails with Docker's words, nothing of it runs.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    let name = unique("busy");
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{busy}:80"),
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(out.stderr.contains("port is already allocated"), "{out:?}");
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.State.Status}}", &name])
            .trim(),
        "created"
    );
    drop(holder);

    // UDP, through a published port to a server in the guest.
    let udp = unique("udp");
    let uport = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let image = netprobe_image(d);
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        &udp,
        "-p",
        &format!("127.0.0.1:{uport}:9999/udp"),
        image,
        "/bin/netprobe",
        "udp-echo",
        "9999",
    ]);
    assert!(out.status.success(), "{out:?}");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 64];
    let echoed = loop {
        client.send_to(b"over udp", ("127.0.0.1", uport)).unwrap();
        if let Ok(n) = client.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(Instant::now() < deadline, "no UDP answer through {uport}");
    };
    assert_eq!(echoed, "echo:over udp");

    d.docker_ok(&["rm", "-f", &web, &udp, &name]);
    // Its ports went with it.
    assert!(http_get(port).is_err(), "127.0.0.1:{port} still answers");
}

#[test]
fn user_networks_resolve_names_and_stay_apart() {
    if !ready() {
        return;
    }
    let d = daemon();
    let front = unique("front");
    let back = unique("back");
    d.docker_ok(&["network", "create", &front]);
    d.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.231.0.0/24",
        "--gateway",
        "10.231.0.254",
        "--label",
        "tier=back",
        &back,
    ]);
    // Docker's errors.
    let out = d.docker(&[
        "network",
        "create",
        "--subnet",
        "10.231.0.0/16",
        &unique("clash"),
    ]);
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("Pool overlaps"), "{out:?}");
    let out = d.docker(&["network", "create", &front]);
    assert!(out.stderr.contains("already exists"), "{out:?}");
    let out = d.docker(&["run", "--rm", "--network", "no-such-net", "busybox", "true"]);
    assert_eq!(out.code(), 125, "{out:?}");
    assert!(
        out.stderr.contains("network no-such-net not found"),
        "{out:?}"
    );
    let out = d.docker(&["run", "--rm", "--network", "container:x", "busybox", "true"]);
    assert!(out.stderr.contains("two VMs cannot share"), "{out:?}");
    let gateway = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &front,
    ]);
    let gateway = gateway.trim();
    assert!(gateway.starts_with("172."), "{gateway}");

    // A server on `front`, known by its name and an alias.
    let web = unique("web");
    let out = run_sh(
        d,
        &[
            "-d",
            "--name",
            &web,
            "--network",
            &front,
            "--network-alias",
            "www",
        ],
        HTTPD,
    );
    assert!(out.status.success(), "{out:?}");
    // A client on `front` reaches it by both; what its guest is told. Its --dns is the
    // host's loopback: a name that is no container's goes nowhere beyond 127.0.0.1.
    // (busybox's static wget crashes where the image has no NSS libraries; nc does not.)
    let script = format!(
        "for i in $(seq 90); do {GET} | nc -w 2 {web} 80 2>/dev/null | grep served-by && break; sleep 1; done; \
         for i in $(seq 10); do {GET} | nc -w 5 www 80 2>/dev/null | grep served-by && break; sleep 1; done; cat /etc/resolv.conf /etc/hosts; hostname; hostname -d"
    );
    let out = run_sh(
        d,
        &[
            "--rm",
            "--network",
            &front,
            "--hostname",
            "client",
            "--domainname",
            "example.test",
            "--add-host",
            "db.internal:10.1.2.3",
            "--dns-search",
            "corp.test",
            "--dns",
            "127.0.0.1",
        ],
        &script,
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.matches("served-by-").count(), 2, "{out:?}");
    assert!(
        out.stdout.contains(&format!("nameserver {gateway}\n")),
        "{out:?}"
    );
    assert!(out.stdout.contains("search corp.test"), "{out:?}");
    assert!(out.stdout.contains("10.1.2.3\tdb.internal"), "{out:?}");
    assert!(out.stdout.contains("client.example.test"), "{out:?}");
    assert!(out.stdout.ends_with("client\nexample.test\n"), "{out:?}");

    // From `back`: neither its name nor its address; `--ip` is honoured.
    let web_ip = d.docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{front}\").IPAddress}}}}"),
        &web,
    ]);
    let web_ip = web_ip.trim();
    assert!(web_ip.starts_with("172."), "{web_ip}");
    let script = format!(
        "hostname -i || {{ grep eth0 /proc/net/dev; cat /etc/resolv.conf; ip neigh; }}; nslookup {web} 2>/dev/null | grep -q '^Name:' && echo RESOLVED; \
         {GET} | nc -w 3 {web_ip} 80 2>/dev/null | grep -q served-by && echo CROSSED; \
         nslookup {web} {gateway} 2>/dev/null | grep -q '^Name:' && echo CROSS-DNS; \
         ping -c 1 -W 3 10.231.0.254 >/dev/null && echo OWN-GATEWAY"
    );
    let out = run_sh(
        d,
        &[
            "--rm",
            "--network",
            &back,
            "--ip",
            "10.231.0.50",
            "--dns",
            "127.0.0.1",
        ],
        &script,
    );
    assert_eq!(out.stdout, "10.231.0.50\nOWN-GATEWAY\n", "{out:?}");

    // The network's record and its running container; what cannot be done, said.
    let shown = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{.Driver}} {{len .Containers}}",
        &back,
        &front,
    ]);
    assert_eq!(
        shown,
        "10.231.0.0/24 10.231.0.254 bridge 0\n".to_string()
            + &format!(
                "{} {gateway} bridge 1\n",
                shown.lines().nth(1).unwrap().split(' ').next().unwrap()
            )
    );
    let out = d.docker(&["network", "rm", &front]);
    assert!(out.stderr.contains("has active endpoints"), "{out:?}");
    let out = d.docker(&["network", "rm", "bridge"]);
    assert!(out.stderr.contains("pre-defined network"), "{out:?}");
    let out = d.docker(&["network", "connect", &back, &web]);
    assert!(out.stderr.contains("while it runs"), "{out:?}");
    let listed = d.docker_ok(&[
        "network",
        "ls",
        "--filter",
        "label=tier=back",
        "--format",
        "{{.Name}} {{.Driver}}",
    ]);
    assert_eq!(listed, format!("{back} bridge\n"));

    d.docker_ok(&["rm", "-f", &web]);
    d.docker_ok(&["network", "rm", &front]);
    let pruned = d.docker_ok(&["network", "prune", "-f", "--filter", "label=tier=back"]);
    assert!(pruned.contains(&back), "{pruned}");
    let left = d.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!left.contains(&front) && !left.contains(&back), "{left}");
    assert!(left.contains("bridge") && left.contains("none"), "{left}");
}

#[test]
fn network_none_has_only_lo_and_a_guest_cannot_pose_as_another() {
    if !ready() {
        return;
    }
    let d = daemon();
    let out = run_sh(
        d,
        &["--rm", "--network", "none"],
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip -4 addr show lo | grep -c 127.0.0.1",
    );
    assert_eq!(out.stdout, "lo\n1\n", "{out:?}");
    let out = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "80",
        "busybox",
        "true",
    ]);
    assert_eq!(out.code(), 125, "{out:?}");

    // A guest with Docker's default CAP_NET_RAW sends frames from another MAC, and frames
    // too short or too long to be Ethernet: the VMM drops them, stays up, and the guest's
    // own traffic still flows.
    let image = netprobe_image(d);
    let forged = "02:42:de:ad:be:ef";
    let name = unique("hostile");
    let script = format!(
        "ping -c 1 -W 5 172.17.0.1 >/dev/null && echo BEFORE; \
         /bin/netprobe forge eth0 {forged} 200; /bin/netprobe runts eth0 100; \
         for i in 1 2 3 4 5 6; do ping -c 1 -W 5 172.17.0.1 >/dev/null && echo AFTER && break; done; \
         grep eth0 /proc/net/dev; ip neigh; cat /sys/class/net/eth0/address"
    );
    // Detached, and kept running: the bridge forgets a port's addresses when its tap goes.
    let script = format!("{script}; echo DONE; exec sleep 600");
    let out = d.docker(&["run", "-d", "--name", &name, image, "sh", "-c", &script]);
    assert_eq!(out.code(), 0, "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let logs = loop {
        let logs = d.docker_ok(&["logs", &name]);
        if logs.contains("DONE") {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "the probe did not finish: {logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let own_mac = logs.lines().rev().nth(1).unwrap_or_default().to_string();
    let links = || {
        let mut ip = Command::new("nsenter");
        ip.arg(format!("--net={}", d.exec_root().join("netns").display()))
            .args(["ip", "-s", "link", "show"]);
        run(ip, b"", Duration::from_secs(30)).stdout
    };
    assert!(
        logs.starts_with("BEFORE\nforged 200\n") && logs.contains("AFTER\n"),
        "{logs}{}\n--- berthd's namespace:\n{}",
        d.vm_report(&name),
        links()
    );
    // What the bridge heard from: the guest's own MAC, never the forged one.
    let netns = d.exec_root().join("netns");
    let mut fdb = Command::new("nsenter");
    fdb.arg(format!("--net={}", netns.display()))
        .args(["bridge", "fdb", "show", "br", "berth0"]);
    let fdb = run(fdb, b"", Duration::from_secs(30));
    assert!(fdb.status.success(), "{fdb:?}");
    assert!(
        fdb.stdout.contains(&own_mac),
        "{own_mac} not learnt: {fdb:?}"
    );
    assert!(
        !fdb.stdout.contains(forged),
        "the forged MAC reached the bridge: {fdb:?}"
    );
    d.docker_ok(&["rm", "-f", &name]);
}

#[test]
fn networks_outlive_daemon_restarts_and_nothing_is_left_behind() {
    if !ready() {
        return;
    }
    let host_links = || {
        let mut ip = Command::new("ip");
        ip.args(["-o", "link", "show"]);
        let out = run(ip, b"", Duration::from_secs(30));
        let mut names: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect();
        names.sort();
        names
    };
    let before = host_links();
    let mut d = Berthd::start();
    let archive = busybox_image("archive");
    d.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    d.docker_ok(&["network", "create", "--subnet", "10.232.0.0/24", "kept"]);
    let port = free_port();
    let out = run_sh(
        &d,
        &[
            "-d",
            "--name",
            "srv",
            "--network",
            "kept",
            "--ip",
            "10.232.0.7",
            "-p",
            &format!("127.0.0.1:{port}:80"),
        ],
        HTTPD,
    );
    assert!(out.status.success(), "{out:?}");
    wait_http(port, "served-by-");
    assert_eq!(host_links(), before, "berth changed the host's interfaces");
    d.restart();
    // The network and the container's settings are kept; its port is served again once
    // it starts again (berthd stops its containers when it stops, as dockerd does).
    let subnet = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "kept",
    ]);
    assert_eq!(subnet.trim(), "10.232.0.0/24");
    assert!(
        http_get(port).is_err(),
        "a port served while its container is stopped"
    );
    d.docker_ok(&["start", "srv"]);
    wait_http(port, "served-by-");
    let ip = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.kept.IPAddress}}",
        "srv",
    ]);
    assert_eq!(ip.trim(), "10.232.0.7");
    d.docker_ok(&["rm", "-f", "srv"]);
    d.docker_ok(&["network", "rm", "kept"]);
    let netns = d.exec_root().join("netns");
    assert!(netns.exists());
    let status = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{}", d.log());
    // Nothing of berth's networks is left: no namespace, no interface, no socket.
    assert!(!netns.exists(), "{} is left", netns.display());
    assert_eq!(host_links(), before);
    assert!(http_get(port).is_err());
}
