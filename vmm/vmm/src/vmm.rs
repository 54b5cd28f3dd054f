//! Building a VM from its configuration and running it to its end.
//!
//! The boot steps, in order: open KVM and create the VM; map guest memory and hand it to
//! KVM; create the in-kernel interrupt controllers and PIT; attach devices (serial, i8042,
//! virtio-rng, virtio-vsock, virtio-balloon, virtio-net, one virtio-fs per share); load the kernel and write the boot
//! data; create the vCPUs with their CPUID, MSRs, FPU and LAPIC state, the first at the PVH
//! entry. Then [`Vmm::run`] starts one thread per vCPU and runs the event loop on the calling
//! thread until the guest shuts down, a vCPU hits a fatal exit, or the host sends a
//! termination signal.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{cpuid, layout, regs, MAX_VCPUS};
use crate::boot::{self, BootError};
use crate::config::{ConsoleOutput, NetConfig, VmConfig, BASE_CMDLINE};
use crate::device_manager::{DeviceError, DeviceManager, Subscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::{self, MemoryError};
use crate::snapshot::{VmHandle, VmSnapshotError};
use crate::vcpu::{self, Pause, Vcpu};
use crate::virtio_snapshot::{VirtioDeviceState, VirtioDevices, VirtioKind, VirtioSnapshot};
use devices::legacy::serial::{ConsoleLimit, ConsoleSink, SerialDevice};
use devices::virtio::balloon::Balloon;
use devices::virtio::fs::{Fs, FsConfig, FsError, ShareOptions};
use devices::virtio::net::backend::{Backend, BackendError, Tap};
use devices::virtio::net::{Net, NetError};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::{Vsock, VsockError};
use devices::GuestMemoryMmap;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} vCPUs requested; berth supports 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM refused {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    NetBackend(#[from] BackendError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error("cannot open the console log {path}: {source}")]
    Console {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error(transparent)]
    Snapshot(#[from] VmSnapshotError),
    #[error("cannot set up {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// A built VM, not yet running.
pub struct Vmm {
    // Field order is drop order: vCPU fds go before the VM fd, devices before memory.
    vcpus: Vec<VcpuFd>,
    devices: DeviceManager,
    serial: Arc<Mutex<SerialDevice>>,
    panicked: Arc<AtomicBool>,
    reset_evt: EventFd,
    exit: Arc<ExitSignal>,
    pause: Arc<Pause>,
    virtio: VirtioDevices,
    counters: Arc<Vec<Arc<vcpu::VcpuCounters>>>,
    mem_mib: u64,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    _kvm: Kvm,
}

/// The parts every VM has, built the same way for a boot and for a restore.
struct Base {
    kvm: Kvm,
    vm: VmFd,
    devices: DeviceManager,
    panicked: Arc<AtomicBool>,
    reset_evt: EventFd,
    supported_cpuid: kvm_bindings::CpuId,
    msr_list: Vec<u32>,
}

/// Opens KVM, creates the VM with `mem` as its RAM, its in-kernel interrupt controllers and
/// PIT, and the i8042 (the serial device is the caller's: booted new or restored).
fn base(mem: &GuestMemoryMmap, kvm: Kvm, vm: VmFd) -> Result<Base, VmmError> {
    register_memory(&vm, mem)?;
    vm.set_tss_address(layout::KVM_TSS_ADDR)
        .map_err(kvm_err("the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("an in-kernel interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("an in-kernel PIT"))?;
    let mut devices = DeviceManager::new();
    let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Os {
        what: "the reset event",
        source,
    })?;
    devices.add_i8042(reset_evt.try_clone().map_err(|source| VmmError::Os {
        what: "the reset event",
        source,
    })?)?;
    let mut supported_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("listing supported CPUID"))?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        cpuid::offer_tsc_deadline(&mut supported_cpuid);
    }
    let msr_list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("listing MSRs"))?
        .as_slice()
        .to_vec();
    Ok(Base {
        kvm,
        vm,
        devices,
        panicked: Arc::new(AtomicBool::new(false)),
        reset_evt,
        supported_cpuid,
        msr_list,
    })
}

impl Vmm {
    /// Builds the VM described by `config` (see the module documentation for the steps).
    pub fn new(mut config: VmConfig) -> Result<Self, VmmError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmmError::VcpuCount(config.vcpus));
        }
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("creating a VM"))?;
        let mem = memory::create(config.mem_mib)?;
        let mut b = base(&mem, kvm, vm)?;
        let sink = ConsoleSink::new(console_writer(&config.console)?, ConsoleLimit::default());
        b.panicked = sink.panic_flag();
        let serial = b.devices.add_serial(&b.vm, sink)?;
        if config.rng {
            let rng = Rng::new().map_err(|source| VmmError::Os {
                what: "virtio-rng",
                source,
            })?;
            b.devices.add_virtio(&b.vm, &mem, rng)?;
        }
        if let Some(vsock) = &config.vsock {
            b.devices
                .add_virtio(&b.vm, &mem, Vsock::new(vsock.guest_cid, &vsock.uds_path)?)?;
        }
        if config.balloon {
            let balloon = Balloon::new().map_err(|source| VmmError::Os {
                what: "virtio-balloon",
                source,
            })?;
            b.devices.add_virtio(&b.vm, &mem, balloon)?;
        }
        // After the balloon and before the shares: the devices before it keep the windows
        // and IRQs they had before there was a net device.
        if let Some(net) = config.net.take() {
            b.devices
                .add_virtio(&b.vm, &mem, Net::new(net_device(net)?)?)?;
        }
        for share in &config.shares {
            let fs = Fs::new(&FsConfig {
                tag: share.tag.clone(),
                dir: share.dir.clone(),
                // A regular file given as the directory becomes a single-file share.
                options: ShareOptions {
                    read_only: share.read_only,
                    nosuid: share.nosuid,
                    file: None,
                },
            })?;
            b.devices.add_virtio(&b.vm, &mem, fs)?;
        }

        let mut cmdline = BASE_CMDLINE.to_string();
        for arg in &b.devices.cmdline {
            cmdline.push(' ');
            cmdline.push_str(arg);
        }
        if !config.extra_cmdline.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(config.extra_cmdline.trim());
        }
        let entry = boot::load(
            &mem,
            &config.kernel,
            config.initrd.as_deref(),
            &cmdline,
            config.vcpus,
        )?;

        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for index in 0..config.vcpus {
            let fd = create_vcpu(&b, index, config.vcpus)?;
            regs::setup_common(&fd, &b.msr_list)?;
            if index == 0 {
                regs::setup_boot_vcpu(&fd, entry.pvh_entry)?;
            }
            vcpus.push(fd);
        }
        Self::assemble(serial, vcpus, b, mem, config.mem_mib)
    }

    /// Builds a VM from a snapshot (`snapshot::VmHandle::snapshot`): `config` describes the
    /// same VM (vCPUs, memory, the same virtio devices) with its own host side (console,
    /// vsock socket, share directories); its RAM is `memory` mapped privately, its vCPUs and
    /// devices are the snapshot's. Nothing of a kernel is loaded: the guest goes on where it
    /// was paused. The vsock device tells the guest its transport was reset, so no
    /// connection of the snapshotted VM survives.
    pub fn restore(mut config: VmConfig, state: &Path, memory: &Path) -> Result<Self, VmmError> {
        let snap = crate::snapshot::read_state(state)?;
        if snap.vcpus.len() != usize::from(config.vcpus) {
            return Err(VmSnapshotError::VcpuCount {
                found: snap.vcpus.len(),
                configured: config.vcpus,
            }
            .into());
        }
        if snap.mem_mib != config.mem_mib {
            return Err(VmSnapshotError::MemSize {
                found: snap.mem_mib,
                configured: config.mem_mib,
            }
            .into());
        }
        check_layout(&snap.virtio, &config)?;
        let mut net = config.net.take().map(net_device).transpose()?;
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("creating a VM"))?;
        let mem = crate::snapshot::map_memory_file(memory, &memory::ram_ranges(config.mem_mib))?;
        let mut b = base(&mem, kvm, vm)?;
        let sink = ConsoleSink::new(console_writer(&config.console)?, ConsoleLimit::default());
        b.panicked = sink.panic_flag();
        let serial = b.devices.restore_serial(&b.vm, sink, &snap.serial)?;
        crate::persist::restore_vm(&b.vm, &snap.vm).map_err(VmSnapshotError::from)?;
        for device in &snap.virtio {
            restore_virtio(&mut b, &mem, device, &config, &mut net)?;
        }
        let mut vcpus = Vec::with_capacity(snap.vcpus.len());
        for (index, state) in snap.vcpus.iter().enumerate() {
            let fd = create_vcpu(&b, index as u8, config.vcpus)?;
            crate::persist::restore_vcpu(&fd, index as u8, state).map_err(VmSnapshotError::from)?;
            vcpus.push(fd);
        }
        // An interrupt raised before the vCPUs existed went nowhere; every line whose status
        // is set (saved so, or set by a device's restore) is raised now.
        for irq in &b.devices.irqs {
            irq.reassert_pending();
        }
        Self::assemble(serial, vcpus, b, mem, config.mem_mib)
    }

    fn assemble(
        serial: Arc<Mutex<SerialDevice>>,
        vcpus: Vec<VcpuFd>,
        mut b: Base,
        mem: GuestMemoryMmap,
        mem_mib: u64,
    ) -> Result<Self, VmmError> {
        Ok(Vmm {
            virtio: Arc::new(std::mem::take(&mut b.devices.virtio)),
            counters: Arc::new(vcpus.iter().map(|_| Arc::default()).collect()),
            pause: Arc::new(Pause::new(vcpus.len(), b.msr_list)),
            vcpus,
            devices: b.devices,
            serial,
            panicked: b.panicked,
            reset_evt: b.reset_evt,
            exit: Arc::new(ExitSignal::new().map_err(|source| VmmError::Os {
                what: "the exit event",
                source,
            })?),
            mem_mib,
            vm: Arc::new(b.vm),
            mem,
            _kvm: b.kvm,
        })
    }

    /// The VM's controls (pause, resume, snapshot), for another thread while it runs.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            vm: self.vm.clone(),
            mem: self.mem.clone(),
            mem_mib: self.mem_mib,
            pause: self.pause.clone(),
            serial: self.serial.clone(),
            virtio: self.virtio.clone(),
            counters: self.counters.clone(),
        }
    }

    /// A handle that stops the VM from another thread.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Runs the VM until it stops, and says why.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        // Termination signals become events of the loop; blocking them here, before any
        // thread starts, keeps every thread from taking them the default way.
        let signal_fd = termination_signalfd()?;
        vcpu::install_kick_handler().map_err(|e| VmmError::Os {
            what: "the vCPU kick signal",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;

        let mut event_manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| VmmError::EventLoop(e.to_string()))?;
        for subscriber in self.devices.subscribers.drain(..) {
            event_manager.add_subscriber(subscriber);
        }
        let mut irq_timer = devices::nonblocking_timer().map_err(|source| VmmError::Os {
            what: "the interrupt timer",
            source,
        })?;
        irq_timer
            .reset(IRQ_CHECK_PERIOD, Some(IRQ_CHECK_PERIOD))
            .map_err(|source| VmmError::Os {
                what: "the interrupt timer",
                source: std::io::Error::from_raw_os_error(source.errno()),
            })?;
        let control = Arc::new(Mutex::new(Control {
            irqs: std::mem::take(&mut self.devices.irqs),
            irq_timer,
            transports: std::mem::take(&mut self.devices.transports),
            exit: self.exit.clone(),
            reset_evt: self.reset_evt.try_clone().map_err(|source| VmmError::Os {
                what: "the reset event",
                source,
            })?,
            signal_fd,
        }));
        event_manager.add_subscriber(control);

        let pio = Arc::new(std::mem::take(&mut self.devices.pio));
        let mmio = Arc::new(std::mem::take(&mut self.devices.mmio));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (index, fd) in self.vcpus.drain(..).enumerate() {
            let vcpu = Vcpu {
                index: index as u8,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: self.exit.clone(),
                stop: stop.clone(),
                reset_evt: self.reset_evt.try_clone().map_err(|source| VmmError::Os {
                    what: "the reset event",
                    source,
                })?,
                pause: self.pause.clone(),
                counters: self.counters[index].clone(),
            };
            match vcpu.spawn() {
                Ok(handle) => threads.push(handle),
                Err(source) => {
                    vcpu::stop_all(&stop, &self.pause, threads);
                    return Err(VmmError::Os {
                        what: "a vCPU thread",
                        source,
                    });
                }
            }
        }

        {
            use std::os::unix::thread::JoinHandleExt;
            self.pause
                .set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        }
        let outcome = loop {
            if let Some(reason) = self.exit.reason() {
                break Ok(reason);
            }
            if let Err(e) = event_manager.run() {
                break Err(VmmError::EventLoop(e.to_string()));
            }
        };
        vcpu::stop_all(&stop, &self.pause, threads);
        devices::bus::lock(&self.serial).flush();
        let reason = outcome?;
        Ok(match reason {
            // A panic's reboot ends like an orderly reset, or in a triple fault.
            ExitReason::GuestShutdown { .. } | ExitReason::GuestCrash { .. }
                if self.panicked.load(Ordering::SeqCst) =>
            {
                ExitReason::GuestPanic
            }
            other => other,
        })
    }
}

/// The devices `config` asks for, in the order [`Vmm::new`] attaches them.
fn configured_devices(config: &VmConfig) -> Vec<VirtioKind> {
    let mut kinds = Vec::new();
    if config.rng {
        kinds.push(VirtioKind::Rng);
    }
    if config.vsock.is_some() {
        kinds.push(VirtioKind::Vsock);
    }
    if config.balloon {
        kinds.push(VirtioKind::Balloon);
    }
    if config.net.is_some() {
        kinds.push(VirtioKind::Net);
    }
    kinds.extend(
        config
            .shares
            .iter()
            .map(|s| VirtioKind::Fs { tag: s.tag.clone() }),
    );
    kinds
}

/// Refuses, by name, a snapshot whose virtio devices are not the ones `config` gives host
/// sides for.
fn check_layout(devices: &[VirtioSnapshot], config: &VmConfig) -> Result<(), VmSnapshotError> {
    let layout = |what: String| {
        VmSnapshotError::Virtio(crate::device_manager::RestoreDeviceError::Layout(what))
    };
    let configured = configured_devices(config);
    for d in devices {
        if !configured.contains(&d.slot.kind) {
            return Err(layout(format!(
                "the snapshot has {}, which this VM is not given",
                d.slot
            )));
        }
    }
    for kind in configured {
        if !devices.iter().any(|d| d.slot.kind == kind) {
            return Err(layout(format!(
                "this VM is given {kind}, which the snapshot does not have"
            )));
        }
    }
    Ok(())
}

/// The net device's configuration: the tap checked and made non-blocking.
fn net_device(config: NetConfig) -> Result<devices::virtio::net::NetConfig, VmmError> {
    let backend = match config.tap {
        Some(fd) => Some(Box::new(Tap::new(fd)?) as Box<dyn Backend>),
        None => None,
    };
    Ok(devices::virtio::net::NetConfig {
        mac: config.mac,
        backend,
    })
}

/// Restores one virtio device of a snapshot with its host side from `config` (the net
/// device's, its tap already taken from `config`, from `net`).
fn restore_virtio(
    b: &mut Base,
    mem: &GuestMemoryMmap,
    device: &VirtioSnapshot,
    config: &VmConfig,
    net: &mut Option<devices::virtio::net::NetConfig>,
) -> Result<(), VmmError> {
    let slot = &device.slot;
    let mismatch = || {
        VmSnapshotError::Virtio(crate::device_manager::RestoreDeviceError::Layout(format!(
            "the snapshot's {slot} holds the state of another kind of device"
        )))
    };
    let restored = match (&slot.kind, &device.state) {
        (VirtioKind::Rng, VirtioDeviceState::Rng(state)) => b
            .devices
            .restore_virtio::<Rng>(&b.vm, mem, slot, state, ())
            .map(drop),
        (VirtioKind::Balloon, VirtioDeviceState::Balloon(state)) => b
            .devices
            .restore_virtio::<Balloon>(&b.vm, mem, slot, state, ())
            .map(drop),
        (VirtioKind::Net, VirtioDeviceState::Net(state)) => {
            let net = net.take().ok_or_else(mismatch)?;
            b.devices
                .restore_virtio::<Net>(&b.vm, mem, slot, state, net)
                .map(drop)
        }
        (VirtioKind::Vsock, VirtioDeviceState::Vsock(state)) => {
            let uds = config.vsock.as_ref().ok_or_else(mismatch)?.uds_path.clone();
            b.devices
                .restore_virtio::<Vsock>(&b.vm, mem, slot, state, uds)
                .map(drop)
        }
        (VirtioKind::Fs { tag }, VirtioDeviceState::Fs(state)) => {
            let share = config
                .shares
                .iter()
                .find(|s| &s.tag == tag)
                .ok_or_else(mismatch)?;
            let fs = FsConfig {
                tag: share.tag.clone(),
                dir: share.dir.clone(),
                // A regular file given as the directory becomes a single-file share.
                options: ShareOptions {
                    read_only: share.read_only,
                    nosuid: share.nosuid,
                    file: None,
                },
            };
            b.devices
                .restore_virtio::<Fs>(&b.vm, mem, slot, state, fs)
                .map(drop)
        }
        _ => return Err(mismatch().into()),
    };
    restored.map_err(|e| VmSnapshotError::from(e).into())
}

/// Creates vCPU `index` of `count` with its CPUID.
fn create_vcpu(b: &Base, index: u8, count: u8) -> Result<VcpuFd, VmmError> {
    let fd =
        b.vm.create_vcpu(u64::from(index))
            .map_err(kvm_err("creating a vCPU"))?;
    fd.set_cpuid2(&cpuid::for_vcpu(&b.supported_cpuid, index, count))
        .map_err(kvm_err("the vCPU's CPUID"))?;
    Ok(fd)
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Os {
                what: "guest memory",
                source: std::io::Error::other(e.to_string()),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which the Vmm keeps
        // alive (and drops after the VM fd) for as long as KVM may access it; slots do not
        // overlap because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("guest memory"))?;
    }
    Ok(())
}

fn console_writer(console: &ConsoleOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match console {
        ConsoleOutput::Stdout => Box::new(std::io::stdout()),
        ConsoleOutput::Discard => Box::new(std::io::sink()),
        ConsoleOutput::File(path) => {
            Box::new(File::create(path).map_err(|source| VmmError::Console {
                path: path.clone(),
                source,
            })?)
        }
    })
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in this thread (and the threads it will
/// start) and returns a signalfd that reports them.
fn termination_signalfd() -> Result<OwnedFd, VmmError> {
    let os = |what| move |source| VmmError::Os { what, source };
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(os("the signal mask")(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: -1 asks for a new signalfd; `set` is initialised; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(os("a signalfd")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The loop's own events: the exit signal, the i8042 reset, termination signals, and the
/// diagnostic dump (SIGUSR1: every virtio queue's state, to stderr).
struct Control {
    irqs: Vec<Arc<devices::virtio::IrqTrigger>>,
    irq_timer: vmm_sys_util::timerfd::TimerFd,
    transports: Vec<Arc<Mutex<dyn devices::virtio::mmio::Describe>>>,
    exit: Arc<ExitSignal>,
    reset_evt: EventFd,
    signal_fd: OwnedFd,
}

const EXIT_TOKEN: u32 = 0;
const RESET_TOKEN: u32 = 1;
const SIGNAL_TOKEN: u32 = 2;
const IRQ_TIMER_TOKEN: u32 = 3;

/// How often a virtio interrupt left unacknowledged is raised again: a guest acknowledges
/// within microseconds on hardware (tens of milliseconds under emulation), so only a lost
/// interrupt waits this long.
const IRQ_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EXIT_TOKEN => {
                let _ = self.exit.eventfd().read();
            }
            RESET_TOKEN => {
                // Raise before consuming the event: a vCPU that triple-faults meanwhile
                // (Linux's reboot falls back to that after the i8042) sees either the
                // pending event or the raised reason (vcpu.rs).
                self.exit
                    .raise(ExitReason::GuestShutdown { how: "i8042 reset" });
                let _ = self.reset_evt.read();
            }
            IRQ_TIMER_TOKEN => {
                let _ = self.irq_timer.wait();
                // Counted (the SIGUSR1 dump shows it), logged at debug level only: a busy
                // or emulated host makes slow acknowledgements common, and stderr is often a
                // user's (`berth-vmm run`).
                for irq in &self.irqs {
                    if irq.reassert_if_stale() {
                        log::debug!(
                            "virtio: an interrupt left unacknowledged for {IRQ_CHECK_PERIOD:?} was raised again"
                        );
                    }
                }
            }
            SIGNAL_TOKEN => {
                let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                // SAFETY: reading into a buffer of exactly one signalfd_siginfo from a
                // signalfd we own.
                let n = unsafe {
                    libc::read(
                        self.signal_fd.as_raw_fd(),
                        info.as_mut_ptr().cast(),
                        info.len(),
                    )
                };
                if n == info.len() as isize {
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                    if signo as i32 == libc::SIGUSR1 {
                        // On a thread of its own: a device whose worker holds its queues
                        // (a request that never ends) must not stall the loop; its line is
                        // then the one that never comes.
                        let transports = self.transports.clone();
                        let _ = std::thread::Builder::new()
                            .name("dump".into())
                            .spawn(move || {
                                eprintln!(
                                    "berth-vmm: state of {} virtio devices:",
                                    transports.len()
                                );
                                for t in &transports {
                                    eprintln!("berth-vmm: {}", devices::bus::lock(t).describe());
                                }
                            });
                    } else {
                        self.exit.raise(ExitReason::HostSignal(signo as i32));
                    }
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let sources = [
            Events::with_data(self.exit.eventfd(), EXIT_TOKEN, EventSet::IN),
            Events::with_data(&self.reset_evt, RESET_TOKEN, EventSet::IN),
            Events::with_data(&self.signal_fd, SIGNAL_TOKEN, EventSet::IN),
            Events::with_data(&self.irq_timer, IRQ_TIMER_TOKEN, EventSet::IN),
        ];
        for source in sources {
            if let Err(e) = ops.add(source) {
                log::error!("cannot watch a control event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsShareConfig;
    use crate::virtio_snapshot::VirtioSlot;

    fn config(rng: bool, tags: &[&str]) -> VmConfig {
        VmConfig {
            vcpus: 1,
            mem_mib: 16,
            kernel: Default::default(),
            initrd: None,
            extra_cmdline: String::new(),
            console: ConsoleOutput::Discard,
            vsock: None,
            rng,
            balloon: false,
            net: None,
            shares: tags
                .iter()
                .map(|t| FsShareConfig {
                    tag: t.to_string(),
                    dir: "/".into(),
                    read_only: false,
                    nosuid: false,
                })
                .collect(),
        }
    }

    fn snapshot_of(kinds: Vec<VirtioKind>) -> Vec<VirtioSnapshot> {
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| VirtioSnapshot {
                slot: VirtioSlot {
                    kind,
                    mmio_base: 0xd000_0000 + 0x1000 * i as u64,
                    irq: 5 + i as u32,
                },
                state: VirtioDeviceState::Rng(Default::default()),
            })
            .collect()
    }

    #[test]
    fn a_restore_must_give_the_snapshots_devices_and_no_others() {
        let snap = snapshot_of(configured_devices(&config(true, &["root"])));
        assert!(check_layout(&snap, &config(true, &["root"])).is_ok());
        let refused = |c: VmConfig| check_layout(&snap, &c).unwrap_err().to_string();
        assert!(
            refused(config(true, &["data"])).contains(
                "the snapshot has the virtio-fs share tagged \"root\" at 0xd0001000 on IRQ 6, which this VM is not given"
            ),
            "{}",
            refused(config(true, &["data"]))
        );
        assert!(refused(config(true, &["root", "data"]))
            .contains("this VM is given the virtio-fs share tagged \"data\""));
        assert!(refused(config(false, &["root"])).contains("virtio-rng"));
    }

    #[test]
    fn the_net_device_comes_after_the_balloon_and_before_the_shares() {
        let mut c = config(true, &["root"]);
        c.balloon = true;
        c.net = Some(NetConfig {
            mac: [2, 0, 0, 0, 0, 1],
            tap: None,
        });
        assert_eq!(
            configured_devices(&c),
            [
                VirtioKind::Rng,
                VirtioKind::Balloon,
                VirtioKind::Net,
                VirtioKind::Fs { tag: "root".into() }
            ]
        );
    }

    #[test]
    fn a_snapshot_with_or_without_a_net_device_is_refused_by_name_otherwise() {
        let with_net = || {
            let mut c = config(true, &[]);
            c.net = Some(NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                tap: None,
            });
            c
        };
        let snap = snapshot_of(configured_devices(&with_net()));
        assert!(check_layout(&snap, &with_net()).is_ok());
        let err = check_layout(&snap, &config(true, &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "the snapshot has virtio-net at 0xd0001000 on IRQ 6, which this VM is not given"
            ),
            "{err}"
        );
        let plain = snapshot_of(configured_devices(&config(true, &[])));
        let err = check_layout(&plain, &with_net()).unwrap_err().to_string();
        assert!(
            err.contains("this VM is given virtio-net, which the snapshot does not have"),
            "{err}"
        );
    }
}
