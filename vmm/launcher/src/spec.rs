//! What a VMM boots or restores, as the `berth-vmm boot` and `berth-vmm restore` argument
//! lists.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::net::format_mac;

/// A host directory shared with the guest over virtio-fs (`--fs TAG=DIR[:ro][,nosuid]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    pub read_only: bool,
    pub nosuid: bool,
}

/// The VM's network card (`--net mac=MAC[,tap-fd=N]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The card's address, which the VMM also enforces as the source of every frame the
    /// guest sends.
    pub mac: [u8; 6],
    /// A tap the VMM inherits under this number (opened with
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; `crate::inherit_fd` lets the command inherit it).
    /// None: a card whose link is down and whose frames go nowhere (a template VM's).
    pub tap_fd: Option<RawFd>,
}

impl NetSpec {
    /// The value of `--net`.
    pub fn arg(&self) -> String {
        match self.tap_fd {
            Some(fd) => format!("mac={},tap-fd={fd}", format_mac(&self.mac)),
            None => format!("mac={}", format_mac(&self.mac)),
        }
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// The VMM's standard output.
    Stdout,
    /// A log file the VMM creates.
    File(PathBuf),
}

/// One VM to boot.
#[derive(Clone, Debug)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub console: Console,
    /// The VM's hybrid-vsock socket; its agent calls back on `<socket>_1025`.
    pub vsock_uds: Option<PathBuf>,
    /// A network card, if any.
    pub net: Option<NetSpec>,
    pub shares: Vec<Share>,
    /// Kernel arguments after berth's own.
    pub cmdline: Option<String>,
    /// The VMM's control socket (`vmm_launcher::control`), if any.
    pub control: Option<PathBuf>,
}

impl BootSpec {
    /// A VM of `vcpus` and `mem_mib` booting `kernel` with no devices beyond the defaults.
    pub fn new(kernel: impl Into<PathBuf>, vcpus: u8, mem_mib: u64) -> BootSpec {
        BootSpec {
            kernel: kernel.into(),
            initrd: None,
            vcpus,
            mem_mib,
            console: Console::Stdout,
            vsock_uds: None,
            net: None,
            shares: Vec::new(),
            cmdline: None,
            control: None,
        }
    }

    /// The arguments of `berth-vmm`, from `boot` on.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["boot".into(), "--kernel".into()];
        args.push(self.kernel.clone().into());
        if let Some(initrd) = &self.initrd {
            args.push("--initrd".into());
            args.push(initrd.clone().into());
        }
        vm_args(
            &mut args,
            self.vcpus,
            self.mem_mib,
            &self.console,
            self.vsock_uds.as_deref(),
            self.net.as_ref(),
            &self.shares,
        );
        if let Some(cmdline) = self.cmdline.as_ref().filter(|c| !c.trim().is_empty()) {
            args.push("--cmdline".into());
            args.push(cmdline.into());
        }
        control_args(&mut args, self.control.as_deref());
        args
    }

    /// `vmm boot ...`: the command, its stdio left to the caller, the tap (if any)
    /// inherited.
    pub fn command(&self, vmm: &Path) -> Command {
        command(vmm, self.args(), self.net.as_ref())
    }
}

fn command(vmm: &Path, args: Vec<OsString>, net: Option<&NetSpec>) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.args(args);
    if let Some(fd) = net.and_then(|n| n.tap_fd) {
        crate::inherit_fd(&mut cmd, fd);
    }
    cmd
}

/// The options boot and restore share: the VM's size, console and devices.
fn vm_args(
    args: &mut Vec<OsString>,
    vcpus: u8,
    mem_mib: u64,
    console: &Console,
    vsock_uds: Option<&Path>,
    net: Option<&NetSpec>,
    shares: &[Share],
) {
    args.push("--cpus".into());
    args.push(vcpus.to_string().into());
    args.push("--mem".into());
    args.push(mem_mib.to_string().into());
    args.push("--console".into());
    args.push(match console {
        Console::Stdout => "-".into(),
        Console::File(path) => path.clone().into(),
    });
    device_args(args, vsock_uds, net, shares);
}

fn control_args(args: &mut Vec<OsString>, control: Option<&Path>) {
    if let Some(control) = control {
        args.push("--control".into());
        args.push(control.into());
    }
}

/// The device options boot and restore share.
fn device_args(
    args: &mut Vec<OsString>,
    vsock_uds: Option<&Path>,
    net: Option<&NetSpec>,
    shares: &[Share],
) {
    if let Some(uds) = vsock_uds {
        args.push("--vsock-uds".into());
        args.push(uds.into());
    }
    if let Some(net) = net {
        args.push("--net".into());
        args.push(net.arg().into());
    }
    for share in shares {
        let mut spec = OsString::from(format!("{}=", share.tag));
        spec.push(&share.dir);
        let options: Vec<&str> = [(share.read_only, "ro"), (share.nosuid, "nosuid")]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect();
        if !options.is_empty() {
            spec.push(format!(":{}", options.join(",")));
        } else if share.dir.as_os_str().as_encoded_bytes().contains(&b':') {
            // A directory like `/x:ro` must not read as `/x` with options.
            spec.push(":rw");
        }
        args.push("--fs".into());
        args.push(spec);
    }
}

/// One VM restored from a snapshot: the snapshotted VM's size and devices (a restore with
/// others is refused by the VMM, by name), each device's host side this VM's own.
#[derive(Clone, Debug)]
pub struct RestoreSpec {
    pub state: PathBuf,
    pub memory: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub console: Console,
    pub vsock_uds: Option<PathBuf>,
    /// The clone's own card: the snapshot's must have one too (and the reverse), but its
    /// MAC and tap are this VM's.
    pub net: Option<NetSpec>,
    pub shares: Vec<Share>,
    pub control: Option<PathBuf>,
}

impl RestoreSpec {
    /// The restore of a snapshot of a VM booted from `boot`, with `boot`'s host sides.
    pub fn of(boot: &BootSpec, state: PathBuf, memory: PathBuf) -> RestoreSpec {
        RestoreSpec {
            state,
            memory,
            vcpus: boot.vcpus,
            mem_mib: boot.mem_mib,
            console: boot.console.clone(),
            vsock_uds: boot.vsock_uds.clone(),
            net: boot.net.clone(),
            shares: boot.shares.clone(),
            control: boot.control.clone(),
        }
    }

    /// The arguments of `berth-vmm`, from `restore` on.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["restore".into(), "--state".into()];
        args.push(self.state.clone().into());
        args.push("--memory".into());
        args.push(self.memory.clone().into());
        vm_args(
            &mut args,
            self.vcpus,
            self.mem_mib,
            &self.console,
            self.vsock_uds.as_deref(),
            self.net.as_ref(),
            &self.shares,
        );
        control_args(&mut args, self.control.as_deref());
        args
    }

    /// `vmm restore ...`: the command, its stdio left to the caller, the tap (if any)
    /// inherited.
    pub fn command(&self, vmm: &Path) -> Command {
        command(vmm, self.args(), self.net.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reaches_the_argument_list() {
        let mut spec = BootSpec::new("/k/vmlinux", 2, 512);
        spec.initrd = Some("/k/initramfs.cpio".into());
        spec.console = Console::File("/run/c/console.log".into());
        spec.vsock_uds = Some("/run/c/vsock.sock".into());
        spec.net = Some(NetSpec {
            mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
            tap_fd: Some(7),
        });
        spec.shares = vec![
            Share {
                tag: "rootfs".into(),
                dir: "/var/lib/berth/c/rootfs".into(),
                read_only: false,
                nosuid: false,
            },
            Share {
                tag: "data".into(),
                dir: "/srv/a:b".into(),
                read_only: true,
                nosuid: true,
            },
            Share {
                tag: "odd".into(),
                dir: "/srv/x:ro".into(),
                read_only: false,
                nosuid: false,
            },
        ];
        spec.cmdline = Some("loglevel=7".into());
        let args: Vec<String> = spec
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "boot",
                "--kernel",
                "/k/vmlinux",
                "--initrd",
                "/k/initramfs.cpio",
                "--cpus",
                "2",
                "--mem",
                "512",
                "--console",
                "/run/c/console.log",
                "--vsock-uds",
                "/run/c/vsock.sock",
                "--net",
                "mac=02:42:ac:11:00:02,tap-fd=7",
                "--fs",
                "rootfs=/var/lib/berth/c/rootfs",
                "--fs",
                "data=/srv/a:b:ro,nosuid",
                "--fs",
                "odd=/srv/x:ro:rw",
                "--cmdline",
                "loglevel=7",
            ]
        );
    }

    #[test]
    fn a_restore_takes_the_boots_size_and_devices_with_its_own_host_sides() {
        let mut boot = BootSpec::new("/k/vmlinux", 2, 512);
        boot.vsock_uds = Some("/t/vsock.sock".into());
        boot.control = Some("/t/control.sock".into());
        // A template's card has no tap; the clone's has its own, and its own MAC.
        boot.net = Some(NetSpec {
            mac: [0x02, 0, 0, 0, 0, 1],
            tap_fd: None,
        });
        let mut restore = RestoreSpec::of(&boot, "/t/vm.state".into(), "/t/vm.mem".into());
        assert_eq!(restore.net, boot.net);
        assert!(boot
            .args()
            .windows(2)
            .any(|w| w == ["--net", "mac=02:00:00:00:00:01"]));
        restore.net = Some(NetSpec {
            mac: [0x02, 0, 0, 0, 0, 2],
            tap_fd: Some(9),
        });
        restore.vsock_uds = Some("/c/vsock.sock".into());
        restore.control = None;
        restore.shares = vec![Share {
            tag: "rootfs".into(),
            dir: "/c/rootfs".into(),
            read_only: false,
            nosuid: true,
        }];
        let args: Vec<String> = restore
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "restore",
                "--state",
                "/t/vm.state",
                "--memory",
                "/t/vm.mem",
                "--cpus",
                "2",
                "--mem",
                "512",
                "--console",
                "-",
                "--vsock-uds",
                "/c/vsock.sock",
                "--net",
                "mac=02:00:00:00:00:02,tap-fd=9",
                "--fs",
                "rootfs=/c/rootfs:nosuid",
            ]
        );
        assert!(boot
            .args()
            .ends_with(&["--control".into(), "/t/control.sock".into()]));
    }

    #[test]
    fn the_defaults_leave_out_what_is_not_set() {
        let args = BootSpec::new("/k", 1, 128).args();
        assert_eq!(
            args,
            [
                "boot",
                "--kernel",
                "/k",
                "--cpus",
                "1",
                "--mem",
                "128",
                "--console",
                "-"
            ]
        );
    }
}
