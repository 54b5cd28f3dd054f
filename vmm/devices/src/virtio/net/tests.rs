use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use snapshot::Persist;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::backend::SocketBackend;
use super::queue::*;
use super::*;

const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
/// A local experimental EtherType, so a test's frames are told from anything else.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A header of zeros and a frame from `source` carrying `payload` bytes of a pattern.
fn frame(source: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&source);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

fn used(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let at = vq.used_addr().unchecked_add(4 + 8 * i);
    (
        m.read_obj(at).unwrap(),
        m.read_obj(at.unchecked_add(4)).unwrap(),
    )
}

fn read_guest(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    m.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

/// Reads one message from the test's end of a socket pair.
fn recv(peer: &mut File) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_BUFFER];
    let n = peer.read(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

const ALL_OFFLOADS: u64 = feature::CSUM
    | feature::GUEST_CSUM
    | feature::GUEST_TSO4
    | feature::GUEST_TSO6
    | feature::HOST_TSO4
    | feature::HOST_TSO6;

#[test]
fn a_sent_frame_reaches_the_backend_byte_for_byte_with_its_header() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut f = frame(MAC, 1000);
    // A TSO frame with a partial checksum, as Linux sends them.
    f[0] = 1;
    f[1] = 1;
    f[2..4].copy_from_slice(&54u16.to_le_bytes());
    m.write_slice(&f[..HDR_LEN], GuestAddress(0x8000)).unwrap();
    m.write_slice(&f[HDR_LEN..], GuestAddress(0x9000)).unwrap();
    vq.add_desc_chains(
        &[
            desc(0x8000, HDR_LEN as u32, NEXT, 1),
            desc(0x9000, (f.len() - HDR_LEN) as u32, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut backend, peer) = SocketBackend::pair().unwrap();
    let mut peer = File::from(peer);
    let counters = NetCounters::default();
    let mut buf = vec![0; MAX_BUFFER];
    let pass = transmit(
        &mut q,
        &m,
        &MAC,
        ALL_OFFLOADS,
        &mut buf,
        Some(&mut backend),
        &counters,
        BUDGET,
    )
    .unwrap();
    assert!(pass.notify && !pass.more);
    assert_eq!(recv(&mut peer), f);
    assert_eq!(used(&m, &vq, 0), (0, 0));
    assert_eq!(counters.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(counters.tx_bytes.load(Ordering::Relaxed), 1014);
}

#[test]
fn a_frame_from_another_address_is_dropped_and_counted() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let spoofed = frame([0x02, 0x42, 0xac, 0x11, 0x00, 0x03], 64);
    let ours = frame(MAC, 64);
    m.write_slice(&spoofed, GuestAddress(0x8000)).unwrap();
    m.write_slice(&ours, GuestAddress(0x9000)).unwrap();
    vq.add_desc_chains(
        &[
            desc(0x8000, spoofed.len() as u32, 0, 0),
            desc(0x9000, ours.len() as u32, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut backend, peer) = SocketBackend::pair().unwrap();
    let mut peer = File::from(peer);
    let counters = NetCounters::default();
    let mut buf = vec![0; MAX_BUFFER];
    transmit(
        &mut q,
        &m,
        &MAC,
        0,
        &mut buf,
        Some(&mut backend),
        &counters,
        BUDGET,
    )
    .unwrap();
    // Only ours went out; both chains came back.
    assert_eq!(recv(&mut peer), ours);
    assert_eq!(counters.tx_spoofed.load(Ordering::Relaxed), 1);
    assert_eq!(counters.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(q.next_used(), 2);
}

#[test]
fn malformed_transmit_chains_are_counted_and_the_device_goes_on() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 64);
    let ours = frame(MAC, 64);
    let mut bad_flags = frame(MAC, 64);
    bad_flags[0] = 2;
    let mut tso = frame(MAC, 64);
    tso[1] = 4;
    m.write_slice(&ours, GuestAddress(0x8000)).unwrap();
    m.write_slice(&bad_flags, GuestAddress(0xa000)).unwrap();
    m.write_slice(&tso, GuestAddress(0xb000)).unwrap();
    vq.add_desc_chains(
        &[
            // Device-writable.
            desc(0x8000, ours.len() as u32, WRITE, 0),
            // Outside guest memory.
            desc(0xfff_0000, 100, 0, 0),
            // Too short for an Ethernet header.
            desc(0x8000, 20, 0, 0),
            // Longer than the longest frame, over two descriptors.
            desc(0x10_0000, 0x1_0000, NEXT, 4),
            desc(0x20_0000, 0x1_0000, 0, 0),
            // DATA_VALID from the driver; TSO6 not negotiated (no feature acked).
            desc(0xa000, bad_flags.len() as u32, 0, 0),
            desc(0xb000, tso.len() as u32, 0, 0),
            // And a good one after all that.
            desc(0x8000, ours.len() as u32, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut backend, peer) = SocketBackend::pair().unwrap();
    let mut peer = File::from(peer);
    let counters = NetCounters::default();
    let mut buf = vec![0; MAX_BUFFER];
    transmit(
        &mut q,
        &m,
        &MAC,
        0,
        &mut buf,
        Some(&mut backend),
        &counters,
        BUDGET,
    )
    .unwrap();
    assert_eq!(counters.tx_malformed.load(Ordering::Relaxed), 6);
    assert_eq!(counters.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(recv(&mut peer), ours);
    assert_eq!(q.next_used(), 7);
}

#[test]
fn a_corrupt_ring_is_an_error_not_a_panic() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let mut q: Queue = vq.create_queue().unwrap();
    vq.avail().idx().store(1000);
    let counters = NetCounters::default();
    let mut buf = vec![0; MAX_BUFFER];
    assert!(matches!(
        transmit(&mut q, &m, &MAC, 0, &mut buf, None, &counters, BUDGET),
        Err(NetQueueError::Queue(_))
    ));
    let mut used = Vec::new();
    assert!(matches!(
        deliver(&mut q, &m, &frame(MAC, 10), true, &mut used, &counters),
        Err(NetQueueError::Queue(_))
    ));
}

#[test]
fn the_budget_leaves_the_rest_for_later() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let ours = frame(MAC, 64);
    m.write_slice(&ours, GuestAddress(0x8000)).unwrap();
    let chains: Vec<_> = (0..5)
        .map(|_| desc(0x8000, ours.len() as u32, 0, 0))
        .collect();
    vq.add_desc_chains(&chains, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let counters = NetCounters::default();
    let mut buf = vec![0; MAX_BUFFER];
    let pass = transmit(&mut q, &m, &MAC, 0, &mut buf, None, &counters, 3).unwrap();
    assert!(pass.more);
    assert_eq!(q.next_used(), 3);
    let pass = transmit(&mut q, &m, &MAC, 0, &mut buf, None, &counters, 3).unwrap();
    assert!(!pass.more);
    assert_eq!(q.next_used(), 5);
    assert_eq!(counters.tx_dropped_no_backend.load(Ordering::Relaxed), 5);
}

#[test]
fn a_received_frame_spreads_over_mergeable_buffers_with_their_count_in_the_header() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    // The first chain splits the header itself: num_buffers lands in its second buffer.
    vq.add_desc_chains(
        &[
            desc(0x1_0000, 8, WRITE | NEXT, 1),
            desc(0x1_1000, 1016, WRITE, 0),
            desc(0x2_0000, 1024, WRITE, 0),
            desc(0x3_0000, 1024, WRITE, 0),
            desc(0x4_0000, 1024, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let counters = NetCounters::default();
    let f = frame([0x02, 0, 0, 0, 0, 9], 3000 - ETH_HLEN);
    let mut used_scratch = Vec::new();
    let got = deliver(&mut q, &m, &f, true, &mut used_scratch, &counters).unwrap();
    assert_eq!(got, Delivery::Delivered { buffers: 3 });
    assert_eq!(q.next_used(), 3);
    assert_eq!(used(&m, &vq, 0), (0, 1024));
    assert_eq!(used(&m, &vq, 1), (2, 1024));
    assert_eq!(used(&m, &vq, 2), (3, 3012 - 2048));
    let mut seen = read_guest(&m, 0x1_0000, 8);
    seen.extend(read_guest(&m, 0x1_1000, 1016));
    seen.extend(read_guest(&m, 0x2_0000, 1024));
    seen.extend(read_guest(&m, 0x3_0000, 3012 - 2048));
    let mut expected = f.clone();
    expected[10..12].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(seen, expected);
    // The fourth chain is left for the next frame.
    assert_eq!(q.next_avail(), 3);
}

#[test]
fn without_mergeable_buffers_a_frame_too_large_for_one_chain_is_dropped_and_the_chain_kept() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&[desc(0x1_0000, 1024, WRITE, 0)], 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let counters = NetCounters::default();
    let mut scratch = Vec::new();
    let big = frame(MAC, 2000);
    assert_eq!(
        deliver(&mut q, &m, &big, false, &mut scratch, &counters).unwrap(),
        Delivery::Dropped(FrameError::NoMerge { len: big.len() })
    );
    assert_eq!((q.next_avail(), q.next_used()), (0, 0));
    let small = frame(MAC, 100);
    assert_eq!(
        deliver(&mut q, &m, &small, false, &mut scratch, &counters).unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(
        read_guest(&m, 0x1_0000 + 10, 2),
        1u16.to_le_bytes().to_vec()
    );
}

#[test]
fn bad_receive_buffers_are_counted_and_returned_empty() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(
        &[
            // Device-readable, then outside memory, then too small for a header.
            desc(0x1_0000, 1024, 0, 0),
            desc(0xfff_0000, 1024, WRITE, 0),
            desc(0x1_0000, 4, WRITE, 0),
            desc(0x2_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let counters = NetCounters::default();
    let mut scratch = Vec::new();
    let f = frame(MAC, 100);
    assert_eq!(
        deliver(&mut q, &m, &f, true, &mut scratch, &counters).unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(counters.rx_bad_buffers.load(Ordering::Relaxed), 3);
    for i in 0..3 {
        assert_eq!(used(&m, &vq, i), (i as u32, 0));
    }
    assert_eq!(used(&m, &vq, 3), (3, f.len() as u32));
    // A bad buffer in the middle of a frame loses that frame, not the device.
    vq.add_desc_chains(&[desc(0x3_0000, 64, WRITE, 0), desc(0x3_1000, 64, 0, 0)], 4)
        .unwrap();
    assert!(matches!(
        deliver(&mut q, &m, &f, true, &mut scratch, &counters).unwrap(),
        Delivery::Dropped(FrameError::ReadableRx)
    ));
    assert_eq!(q.next_used(), 6);
    assert_eq!(used(&m, &vq, 4), (4, 0));
}

#[test]
fn host_frames_the_driver_did_not_negotiate_are_refused() {
    let mut f = frame(MAC, 100);
    f[1] = 1;
    assert_eq!(prepare_rx_frame(&mut f, 0), Err(FrameError::Gso(1)));
    assert!(prepare_rx_frame(&mut f, feature::GUEST_CSUM | feature::GUEST_TSO4).is_ok());
    f[1] = 0;
    f[0] = 1;
    assert_eq!(prepare_rx_frame(&mut f, 0), Err(FrameError::Flags(1)));
    f[0] = 2;
    assert!(prepare_rx_frame(&mut f, 0).is_ok());
    assert_eq!(f[0], 0);
    assert!(prepare_rx_frame(&mut [0u8; 20], 0).is_err());
}

/// A device on `backend` activated on the queues at 0 (receive) and 0x10_0000 (transmit).
fn running(
    m: &GuestMemoryMmap,
    backend: Option<Box<dyn Backend>>,
    acked: u64,
) -> (
    Net,
    MockSplitQueue<'_, GuestMemoryMmap>,
    MockSplitQueue<'_, GuestMemoryMmap>,
) {
    let rx = MockSplitQueue::create(m, GuestAddress(0), 256);
    let tx = MockSplitQueue::create(m, GuestAddress(0x10_0000), 256);
    let mut net = Net::new(NetConfig { mac: MAC, backend }).unwrap();
    net.set_acked_features(features::VERSION_1 | acked);
    net.queues_mut()[RX] = rx.create_queue().unwrap();
    net.queues_mut()[TX] = tx.create_queue().unwrap();
    let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    net.activate(m.clone(), irq).unwrap();
    (net, rx, tx)
}

#[test]
fn a_frame_without_guest_buffers_waits_and_is_delivered_once_they_come() {
    let m = mem();
    let (backend, peer) = SocketBackend::pair().unwrap();
    let mut peer = File::from(peer);
    let (mut net, rx, _tx) = running(&m, Some(Box::new(backend)), feature::MRG_RXBUF);
    let first = frame([0x02, 0, 0, 0, 0, 1], 500);
    let second = frame([0x02, 0, 0, 0, 0, 1], 700);
    peer.write_all(&first).unwrap();
    peer.write_all(&second).unwrap();
    // The tap's edge: no buffer yet, so the first frame is kept and the tap left unread.
    net.tap_readable = true;
    net.process_rx();
    assert_eq!(net.rx_pending, Some(first.len()));
    assert_eq!(net.counters.rx_no_buffers.load(Ordering::Relaxed), 1);
    assert_eq!(net.counters.rx_dropped.load(Ordering::Relaxed), 0);
    // The guest adds buffers and notifies: both frames arrive, in order.
    rx.add_desc_chains(
        &[
            desc(0x20_0000, 2048, WRITE, 0),
            desc(0x21_0000, 2048, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    net.process_rx();
    assert_eq!(net.rx_pending, None);
    assert_eq!(net.counters.rx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(used(&m, &rx, 0), (0, first.len() as u32));
    assert_eq!(used(&m, &rx, 1), (1, second.len() as u32));
    assert_eq!(
        read_guest(&m, 0x21_0000 + 12, second.len() - 12),
        second[12..].to_vec()
    );
    assert!(!net.tap_readable, "the tap was read until it would block");
}

#[test]
fn without_a_backend_frames_are_dropped_and_counted() {
    let m = mem();
    let (mut net, _rx, tx) = running(&m, None, 0);
    let ours = frame(MAC, 64);
    m.write_slice(&ours, GuestAddress(0x30_0000)).unwrap();
    tx.add_desc_chains(&[desc(0x30_0000, ours.len() as u32, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert_eq!(
        net.counters.tx_dropped_no_backend.load(Ordering::Relaxed),
        1
    );
    assert_eq!(used(&m, &tx, 0), (0, 0));
    // Link down in the config space, and the MAC before it.
    let mut config = [0u8; 8];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(&config[6..], &[0, 0]);
}

#[test]
fn a_restore_takes_the_new_mac_and_backend_and_announces_the_link() {
    let net = Net::new(NetConfig {
        mac: MAC,
        backend: None,
    })
    .unwrap();
    let saved = net.save();
    assert_eq!(saved, NetState { mac: MAC });
    let clone_mac = [0x02, 0x42, 0, 0, 0, 7];
    let (backend, _peer) = SocketBackend::pair().unwrap();
    let restored = Net::restore(
        NetConfig {
            mac: clone_mac,
            backend: Some(Box::new(backend)),
        },
        &saved,
    )
    .unwrap();
    assert_eq!(restored.mac(), clone_mac);
    assert!(restored.announce_link);
    let mut config = [0u8; 8];
    restored.read_config(0, &mut config);
    assert_eq!(&config[..6], &clone_mac);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
    // Reads past the end or at absurd offsets are zeros.
    restored.read_config(u64::MAX, &mut config);
    assert_eq!(config, [0; 8]);
    assert!(matches!(
        Net::new(NetConfig {
            mac: [0x03, 0, 0, 0, 0, 1],
            backend: None
        }),
        Err(NetError::NotUnicast(_))
    ));
}

#[test]
fn a_real_tap_carries_frames_both_ways_with_its_offloads_set() {
    if !test_gate::require(
        test_gate::root(),
        "a tap device in a network namespace of the test's own",
    ) {
        return;
    }
    // unshare(CLONE_NEWNET) moves only the calling thread: the host's interfaces are never
    // touched, and the namespace goes with the thread's descriptors.
    std::thread::spawn(real_tap).join().unwrap();
}

fn os_check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

fn ifreq(name: &str, flags: u16) -> [u8; 40] {
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    req
}

fn real_tap() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: unshare has no memory effects; it moves this thread to a new namespace.
    os_check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare");
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut req = ifreq(
        "btap0",
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16,
    );
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is as large as.
    os_check(
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) },
        "TUNSETIFF",
    );
    // SAFETY: a new socket, checked, owned right away.
    let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    os_check(inet, "socket");
    // SAFETY: just created, owned by nothing else.
    let inet = unsafe { OwnedFd::from_raw_fd(inet) };
    let mut req = ifreq("btap0", libc::IFF_UP as u16);
    // SAFETY: SIOCSIFFLAGS reads one struct ifreq, which `req` is as large as.
    os_check(
        unsafe { libc::ioctl(inet.as_raw_fd(), libc::SIOCSIFFLAGS, req.as_mut_ptr()) },
        "SIOCSIFFLAGS",
    );
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"btap0".as_ptr()) };
    assert_ne!(ifindex, 0);
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: a new socket, checked, owned right away.
    let packet = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(all),
        )
    };
    os_check(packet, "socket(AF_PACKET)");
    // SAFETY: just created, owned by nothing else.
    let packet = unsafe { OwnedFd::from_raw_fd(packet) };
    // SAFETY: sockaddr_ll is plain data; zeros are a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex as i32;
    let addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    let addr_ptr = (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>();
    // SAFETY: `addr` is a valid sockaddr_ll of `addr_len` bytes.
    os_check(
        unsafe { libc::bind(packet.as_raw_fd(), addr_ptr, addr_len) },
        "bind",
    );
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval, which `timeout` is.
    os_check(
        unsafe {
            libc::setsockopt(
                packet.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        },
        "SO_RCVTIMEO",
    );

    let tap = backend::Tap::new(OwnedFd::from(tun)).unwrap();
    let m = mem();
    // Every offload: activation sets them on the tap, or fails (and `running` panics).
    let (mut net, rx, tx) = running(&m, Some(Box::new(tap)), ALL_OFFLOADS | feature::MRG_RXBUF);

    // Guest to host: the frame comes out of the interface as it was sent.
    let out = frame(MAC, 300);
    m.write_slice(&out, GuestAddress(0x30_0000)).unwrap();
    tx.add_desc_chains(&[desc(0x30_0000, out.len() as u32, 0, 0)], 0)
        .unwrap();
    net.process_tx();
    assert_eq!(net.counters.tx_frames.load(Ordering::Relaxed), 1);
    let mut buf = vec![0u8; 4096];
    let seen = loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(packet.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n > 0,
            "no frame came out of the tap: {}",
            std::io::Error::last_os_error()
        );
        let got = &buf[..n as usize];
        if got.len() >= ETH_HLEN && got[12..14] == ETHERTYPE && got[6..12] == MAC {
            break got.to_vec();
        }
    };
    assert_eq!(seen, out[HDR_LEN..]);

    // Host to guest: a frame sent on the interface reaches the guest's buffers.
    let chains: Vec<_> = (0..16)
        .map(|i| desc(0x20_0000 + 0x1000 * i, 2048, WRITE, 0))
        .collect();
    rx.add_desc_chains(&chains, 0).unwrap();
    let inbound = frame([0x02, 0, 0, 0, 0, 5], 200);
    // SAFETY: the frame is readable for its length; `addr` as above.
    let sent = unsafe {
        libc::sendto(
            packet.as_raw_fd(),
            inbound[HDR_LEN..].as_ptr().cast(),
            inbound.len() - HDR_LEN,
            0,
            addr_ptr,
            addr_len,
        )
    };
    assert_eq!(sent, (inbound.len() - HDR_LEN) as isize);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let delivered = 'found: loop {
        net.tap_readable = true;
        net.process_rx();
        for i in 0..u64::from(net.queues()[RX].next_used()) {
            let (head, len) = used(&m, &rx, i);
            let got = read_guest(&m, 0x20_0000 + 0x1000 * u64::from(head), len as usize);
            if got.len() >= HDR_LEN + ETH_HLEN && got[HDR_LEN + 12..HDR_LEN + 14] == ETHERTYPE {
                break 'found got;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the guest"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(delivered[HDR_LEN..], inbound[HDR_LEN..]);
    // One buffer, as the header says.
    assert_eq!(delivered[10..12], 1u16.to_le_bytes());
}

#[test]
fn a_descriptor_that_is_not_a_tap_is_refused() {
    let (_ours, theirs) = SocketBackend::pair().unwrap();
    assert!(matches!(
        backend::Tap::new(theirs),
        Err(backend::BackendError::NotATap { .. })
    ));
}
