//! `bench-boot emulated`: berth-vmm and QEMU `-M microvm` booting the same kernel and
//! initramfs (the same agent) to "agent ready" and through `true`, in the same run.
//!
//! Both VMMs get the guest agent's readiness the same way: the agent connects to host port
//! 1025 at boot. berth-vmm carries it over its hybrid-vsock Unix socket; QEMU over
//! vhost-vsock, where the host side is an AF_VSOCK socket. Each run then asks the agent to
//! run `true`, waits for its exit, and asks the agent to shut the VM down.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_client::{AgentClient, ProcessSpec, ReadyListener};
use agent_protocol::{
    read_frame, write_frame, ConnectionHeader, Notification, Request, Response, AGENT_PORT,
    PROTOCOL_VERSION, READY_PORT,
};
use anyhow::{bail, Context, Result};
use berth_bench::{bin_dir, guest_dir, ms, Series};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// QEMU's microvm has no i8042: the guest resets by triple fault, which -no-reboot ends.
const QEMU_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet swiotlb=noforce";

#[derive(Default)]
struct Figures {
    ready: Series,
    true_exit: Series,
    vm_exit: Series,
}

impl Figures {
    fn print(&self, name: &str) {
        println!(
            "  {name:<10} start -> agent ready     {}",
            self.ready.summary("ms")
        );
        println!(
            "  {name:<10} start -> `true` exited   {}",
            self.true_exit.summary("ms")
        );
        println!(
            "  {name:<10} start -> VMM exited      {}",
            self.vm_exit.summary("ms")
        );
    }
}

pub fn run(runs: usize) -> Result<()> {
    let check = Command::new(bin_dir().join("berth-vmm"))
        .arg("check")
        .output()?;
    if !check.status.success() {
        bail!(
            "this host's KVM cannot run Linux guests ({}); run this inside tests/vmhost/run",
            String::from_utf8_lossy(&check.stdout).trim()
        );
    }
    let kernel = guest_dir().join("vmlinux");
    let initrd = guest_dir().join("initramfs.cpio");
    for f in [&kernel, &initrd] {
        if !f.exists() {
            bail!("{} is missing: run `make build`", f.display());
        }
    }
    ensure_vhost_vsock()?;
    let dir = super::scratch("emulated")?;

    println!("bench-boot emulated: berth-vmm vs QEMU -M microvm, same kernel + initramfs + agent");
    println!("  (1 vCPU, 256 MiB; {runs} runs each, interleaved; min / median / max)");
    let mut berth = Figures::default();
    let mut qemu = Figures::default();
    for n in 0..runs {
        berth_once(&dir.0, &kernel, &initrd, n, &mut berth)
            .with_context(|| format!("berth-vmm run {n}"))?;
        qemu_once(&dir.0, &kernel, &initrd, n, &mut qemu)
            .with_context(|| format!("QEMU run {n}"))?;
    }
    berth.print("berth-vmm");
    qemu.print("qemu");
    println!(
        "  ratio berth/qemu (medians): ready {:.2}x, `true` {:.2}x, exit {:.2}x",
        berth.ready.median() / qemu.ready.median(),
        berth.true_exit.median() / qemu.true_exit.median(),
        berth.vm_exit.median() / qemu.vm_exit.median()
    );
    Ok(())
}

fn ensure_vhost_vsock() -> Result<()> {
    if Path::new("/dev/vhost-vsock").exists() {
        return Ok(());
    }
    let status = Command::new("modprobe").arg("vhost_vsock").status()?;
    if !status.success() || !Path::new("/dev/vhost-vsock").exists() {
        bail!("QEMU's vsock needs /dev/vhost-vsock (modprobe vhost_vsock failed)");
    }
    Ok(())
}

fn wait_child(child: &mut Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the VMM exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VMM did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn berth_once(dir: &Path, kernel: &Path, initrd: &Path, n: usize, f: &mut Figures) -> Result<()> {
    let uds = dir.join(format!("berth-{n}.sock"));
    let ready = ReadyListener::bind(&uds)?;
    let start = Instant::now();
    let mut child = Command::new(bin_dir().join("berth-vmm"))
        .args(["boot", "--cpus", "1", "--mem", "256", "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--console")
        .arg(dir.join(format!("berth-{n}.log")))
        .arg("--vsock-uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    ready.wait(BOOT_TIMEOUT)?;
    f.ready.push(ms(start.elapsed()));
    let mut agent = AgentClient::connect(&uds, Duration::from_secs(10))?;
    agent.create_process("true", &ProcessSpec::new(["true"]))?;
    agent.start_process("true")?;
    let status = agent.wait_process("true")?;
    f.true_exit.push(ms(start.elapsed()));
    if status.code != 0 {
        bail!("`true` exited with {}", status.code);
    }
    agent.shutdown(None)?;
    wait_child(&mut child, Duration::from_secs(30))?;
    f.vm_exit.push(ms(start.elapsed()));
    Ok(())
}

/// An AF_VSOCK stream socket, as a File for plain read/write.
fn vsock_socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!(
            "cannot create an AF_VSOCK socket: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_listen(port: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes; `sock` is a valid socket.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if rc < 0 {
        bail!(
            "cannot bind vsock port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `sock` is a bound socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 4) } < 0 {
        bail!(
            "cannot listen on vsock port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(sock)
}

fn vsock_accept(listener: &OwnedFd) -> Result<File> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept(2) on a listening socket; null address pointers are allowed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!("vsock accept failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn vsock_connect(cid: u32, port: u32) -> Result<File> {
    use std::os::fd::AsRawFd;
    let sock = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes; `sock` is a valid socket.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if rc < 0 {
        bail!(
            "cannot connect to vsock {cid}:{port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(File::from(sock))
}

fn request(conn: &mut File, req: &Request) -> Result<Response> {
    write_frame(conn, req)?;
    let reply: Response = read_frame(conn)?;
    if let Response::Error { code, message } = &reply {
        bail!("the agent refused {}: {code}: {message}", req.type_name());
    }
    Ok(reply)
}

fn qemu_once(dir: &Path, kernel: &Path, initrd: &Path, n: usize, f: &mut Figures) -> Result<()> {
    let cid = 100 + n as u32;
    let ready = vsock_listen(READY_PORT)?;
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
        ])
        .arg(format!(
            "file:{}",
            dir.join(format!("qemu-{n}.log")).display()
        ))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", QEMU_CMDLINE])
        .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut conn = vsock_accept(&ready)?;
    let _: Notification = read_frame(&mut conn)?;
    f.ready.push(ms(start.elapsed()));
    drop(conn);
    drop(ready);

    let mut agent = vsock_connect(cid, AGENT_PORT)?;
    write_frame(
        &mut agent,
        &ConnectionHeader::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
    )?;
    let _: Response = read_frame(&mut agent)?;
    request(
        &mut agent,
        &Request::CreateProcess {
            id: "true".into(),
            spec: ProcessSpec::new(["true"]),
        },
    )?;
    request(&mut agent, &Request::StartProcess { id: "true".into() })?;
    request(&mut agent, &Request::WaitProcess { id: "true".into() })?;
    f.true_exit.push(ms(start.elapsed()));
    // The reply to Shutdown may be lost to the reset; only the VMM's exit counts.
    let _ = write_frame(&mut agent, &Request::Shutdown { grace_ms: None });
    wait_child(&mut child, Duration::from_secs(30))?;
    f.vm_exit.push(ms(start.elapsed()));
    Ok(())
}
