//! Networks: berth's network namespace ([`netns`]), a Linux bridge per network with the
//! network's gateway address on it, a tap per container VM on its network's bridge
//! ([`link`]), addresses ([`ipam`]), a DNS server per network ([`dns`]) and published
//! ports ([`ports`]).
//!
//! The path of a packet from a host socket to a process in a guest: a client connects to
//! a published port (berthd, host namespace) → berthd connects from a socket of berth's
//! namespace to the container's address → the namespace routes it onto the network's
//! bridge → the container's tap → the VMM's virtio-net device (userspace, the tap's
//! descriptor handed over at start) → the guest kernel's `eth0` → the process.
//!
//! Networks are isolated from each other: each is its own bridge and berth's namespace
//! does not forward between interfaces (`ip_forward` stays 0 there), so a container reaches
//! only its own network's containers and gateway. A VM's net device drops frames whose
//! source MAC is not the VM's own, so a container cannot pose as another on its bridge.
//!
//! Records of user-defined networks (and the default `bridge`'s) persist under
//! `<data-root>/networks`; endpoints (a running container's address on a network) live as
//! long as the container runs.

pub mod dns;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod ports;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{ids, EngineError, Result};
use ipam::Subnet;
use netns::NetNs;

/// The default network's name.
pub const BRIDGE: &str = "bridge";
/// The network of containers without one.
pub const NONE: &str = "none";
/// The default network's interface in berth's namespace.
const DEFAULT_BRIDGE_IF: &str = "berth0";
/// The MTU of berth's bridges and containers' interfaces.
pub const MTU: u32 = 1500;

/// A network as berth keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// `bridge`, or `null` for `none`.
    pub driver: String,
    pub created: SystemTime,
    pub subnet: Option<Subnet>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Subnet>,
    /// Whether the subnet was given (`--subnet`), for inspect's IPAM section.
    #[serde(default)]
    pub user_ipam: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Its bridge in berth's namespace.
    #[serde(default)]
    pub bridge: String,
}

impl NetworkRecord {
    /// The pre-defined networks (`bridge`, `none`), which cannot be removed.
    pub fn predefined(&self) -> bool {
        self.name == BRIDGE || self.name == NONE
    }

    /// Whether containers on it resolve each other's names (user-defined networks only,
    /// as in Docker).
    pub fn resolves_names(&self) -> bool {
        !self.predefined()
    }
}

/// `docker network create`'s settings.
#[derive(Clone, Debug, Default)]
pub struct CreateNetwork {
    pub name: String,
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// A container's place on a network while it runs.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub container_id: String,
    pub container_name: String,
    pub aliases: Vec<String>,
    pub network_id: String,
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// Where names that are not containers' are forwarded (`--dns`); empty: the host's.
    pub upstreams: Vec<SocketAddr>,
}

/// What a container asks of its network at start.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    pub container_id: String,
    pub container_name: String,
    pub network: String,
    pub aliases: Vec<String>,
    /// `--ip`.
    pub ipv4: Option<Ipv4Addr>,
    /// `--dns`.
    pub dns: Vec<Ipv4Addr>,
}

/// A container attached to its network: the tap for its VMM and what its guest is told.
pub struct Attachment {
    pub tap: OwnedFd,
    pub endpoint: Endpoint,
    pub network: NetworkRecord,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, NetworkRecord>,
    /// By container id.
    endpoints: HashMap<String, Endpoint>,
    dns: HashMap<String, JoinHandle<()>>,
    published: HashMap<String, Vec<JoinHandle<()>>>,
}

/// Every network of this engine.
pub struct Networks {
    netns: Arc<NetNs>,
    root: PathBuf,
    inner: Arc<Mutex<Inner>>,
    host_resolvers: Vec<SocketAddr>,
    taps: AtomicU32,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(name: &str) -> EngineError {
    EngineError::NotFound(format!("network {name} not found"))
}

fn net_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("berth's network namespace: {e}"))
}

/// Docker's network names: as container names.
fn valid_name(name: &str) -> bool {
    ids::valid_name(name)
}

impl Networks {
    /// Opens berth's namespace (its own under `exec_root`, or `given`), loads every network
    /// record, creates the default `bridge` (on `bridge_subnet`, else Docker's default) and
    /// brings every network's bridge and DNS server up.
    pub async fn open(
        data_root: &Path,
        exec_root: &Path,
        given: Option<&Path>,
        bridge_subnet: Option<Subnet>,
    ) -> Result<Networks> {
        let netns = match given {
            Some(path) => NetNs::open(path),
            None => NetNs::create(&exec_root.join("netns")),
        }
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        let root = data_root.join("networks");
        std::fs::create_dir_all(&root)
            .map_err(|e| EngineError::internal(format!("cannot create {}", root.display()), e))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(&root)?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<NetworkRecord>(&b).ok())
            {
                Some(r) => {
                    records.insert(r.id.clone(), r);
                }
                None => log::warn!("skipping {}: no readable network record", path.display()),
            }
        }
        let networks = Networks {
            netns: Arc::new(netns),
            root,
            inner: Arc::new(Mutex::new(Inner {
                records,
                ..Inner::default()
            })),
            host_resolvers: dns::host_resolvers(),
            taps: AtomicU32::new(0),
        };
        networks.ensure_predefined(bridge_subnet)?;
        let bridges: Vec<NetworkRecord> = lock(&networks.inner)
            .records
            .values()
            .filter(|r| r.driver == "bridge")
            .cloned()
            .collect();
        for r in bridges {
            networks.bring_up(&r).await?;
        }
        Ok(networks)
    }

    /// berth's namespace.
    pub fn netns(&self) -> &Arc<NetNs> {
        &self.netns
    }

    fn save(&self, r: &NetworkRecord) -> Result<()> {
        crate::fsutil::atomic_write_json(&self.root.join(format!("{}.json", r.id)), r)
            .map_err(|e| EngineError::internal(format!("cannot record network {}", r.name), e))
    }

    fn ensure_predefined(&self, bridge_subnet: Option<Subnet>) -> Result<()> {
        let mut inner = lock(&self.inner);
        let bridge = inner.records.values_mut().find(|r| r.name == BRIDGE);
        let subnet = bridge_subnet.unwrap_or(Subnet::new(Ipv4Addr::new(172, 17, 0, 0), 16));
        let record = match bridge {
            // The daemon's flag changed the default network's subnet.
            Some(r) if r.subnet != Some(subnet) && bridge_subnet.is_some() => {
                r.subnet = Some(subnet);
                r.gateway = Some(subnet.first_host());
                Some(r.clone())
            }
            Some(_) => None,
            None => {
                let r = NetworkRecord {
                    id: ids::new_id(),
                    name: BRIDGE.into(),
                    driver: "bridge".into(),
                    created: SystemTime::now(),
                    subnet: Some(subnet),
                    gateway: Some(subnet.first_host()),
                    ip_range: None,
                    user_ipam: false,
                    internal: false,
                    attachable: false,
                    labels: BTreeMap::new(),
                    options: BTreeMap::from([
                        (
                            "com.docker.network.bridge.default_bridge".into(),
                            "true".into(),
                        ),
                        (
                            "com.docker.network.bridge.name".into(),
                            DEFAULT_BRIDGE_IF.into(),
                        ),
                        ("com.docker.network.driver.mtu".into(), MTU.to_string()),
                    ]),
                    bridge: DEFAULT_BRIDGE_IF.into(),
                };
                inner.records.insert(r.id.clone(), r.clone());
                Some(r)
            }
        };
        let none = if inner.records.values().any(|r| r.name == NONE) {
            None
        } else {
            let r = NetworkRecord {
                id: ids::new_id(),
                name: NONE.into(),
                driver: "null".into(),
                created: SystemTime::now(),
                subnet: None,
                gateway: None,
                ip_range: None,
                user_ipam: false,
                internal: false,
                attachable: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                bridge: String::new(),
            };
            inner.records.insert(r.id.clone(), r.clone());
            Some(r)
        };
        drop(inner);
        for r in record.iter().chain(none.iter()) {
            self.save(r)?;
        }
        Ok(())
    }

    /// Creates the network's bridge with its gateway address and starts its DNS server.
    async fn bring_up(&self, r: &NetworkRecord) -> Result<()> {
        let (Some(subnet), Some(gateway)) = (r.subnet, r.gateway) else {
            return Ok(());
        };
        let bridge = r.bridge.clone();
        let socket = self
            .netns
            .run_async(
                move || -> std::result::Result<std::net::UdpSocket, String> {
                    // The gateway's own MAC, Docker's scheme for addresses: stable
                    // across daemon restarts, never a container's.
                    link::create_bridge(&bridge, ipam::mac_of(gateway), gateway, subnet.prefix)
                        .map_err(|e| e.to_string())?;
                    let s = std::net::UdpSocket::bind((gateway, 53))
                        .map_err(|e| format!("cannot bind the DNS server on {gateway}:53: {e}"))?;
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok(s)
                },
            )
            .await
            .map_err(net_err)?
            .map_err(|e| EngineError::Internal(format!("network {}: {e}", r.name)))?;
        let socket = tokio::net::UdpSocket::from_std(socket)
            .map_err(|e| EngineError::internal("DNS server", e))?;
        let resolver = Arc::new(NetResolver {
            inner: Arc::downgrade(&self.inner),
            network_id: r.id.clone(),
            subnet,
            gateway,
            names: r.resolves_names(),
            host: self.host_resolvers.clone(),
        });
        let task = tokio::spawn(dns::serve(socket, resolver));
        if let Some(old) = lock(&self.inner).dns.insert(r.id.clone(), task) {
            old.abort();
        }
        Ok(())
    }

    /// Finds a network by full id, name, or unique id prefix (Docker's order).
    pub fn get(&self, name_or_id: &str) -> Result<NetworkRecord> {
        let inner = lock(&self.inner);
        find(&inner.records, name_or_id).cloned()
    }

    /// Every network.
    pub fn list(&self) -> Vec<NetworkRecord> {
        lock(&self.inner).records.values().cloned().collect()
    }

    /// The running containers on network `id`.
    pub fn endpoints_of(&self, id: &str) -> Vec<Endpoint> {
        lock(&self.inner)
            .endpoints
            .values()
            .filter(|e| e.network_id == id)
            .cloned()
            .collect()
    }

    /// `docker network create`.
    pub async fn create(&self, req: CreateNetwork) -> Result<NetworkRecord> {
        if !valid_name(&req.name) {
            return Err(EngineError::InvalidArgument(format!(
                "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                req.name
            )));
        }
        match req.driver.as_str() {
            "" | "bridge" => {}
            "host" | "null" => {
                return Err(EngineError::Forbidden(format!(
                    "only one instance of \"{}\" network is allowed",
                    req.driver
                )))
            }
            other => {
                return Err(EngineError::NotFound(format!(
                    "plugin \"{other}\" not found: berth networks use the bridge driver"
                )))
            }
        }
        if req.enable_ipv6 {
            return Err(EngineError::Unsupported(
                "--ipv6: berth networks are IPv4 only for now".into(),
            ));
        }
        for key in req.options.keys() {
            if key != "com.docker.network.driver.mtu" && key != "com.docker.network.bridge.name" {
                return Err(EngineError::Unsupported(format!(
                    "network option {key} is not supported by berth"
                )));
            }
        }
        if let Some(mtu) = req.options.get("com.docker.network.driver.mtu") {
            if mtu.parse::<u32>() != Ok(MTU) {
                return Err(EngineError::Unsupported(format!(
                    "network option com.docker.network.driver.mtu={mtu}: berth's networks have an MTU of {MTU}"
                )));
            }
        }
        let ipam_err = |e: ipam::IpamError| EngineError::InvalidArgument(e.to_string());
        let record = {
            let mut inner = lock(&self.inner);
            if inner.records.values().any(|r| r.name == req.name) {
                return Err(EngineError::Conflict(format!(
                    "network with name {} already exists",
                    req.name
                )));
            }
            let taken: Vec<Subnet> = inner.records.values().filter_map(|r| r.subnet).collect();
            let (subnet, user_ipam) = match &req.subnet {
                Some(s) => {
                    let s: Subnet = s.parse().map_err(ipam_err)?;
                    if taken.iter().any(|t| t.overlaps(&s)) {
                        return Err(EngineError::Forbidden(
                            ipam::IpamError::Overlaps.to_string(),
                        ));
                    }
                    (s, true)
                }
                None => {
                    if req.gateway.is_some() || req.ip_range.is_some() {
                        return Err(EngineError::InvalidArgument(
                            "--gateway and --ip-range need a --subnet".into(),
                        ));
                    }
                    (
                        ipam::next_free_pool(&taken)
                            .map_err(|e| EngineError::Forbidden(e.to_string()))?,
                        false,
                    )
                }
            };
            let gateway = match &req.gateway {
                Some(g) => {
                    let g: Ipv4Addr = g
                        .parse()
                        .map_err(|_| ipam_err(ipam::IpamError::Address(g.clone())))?;
                    let (lo, hi) = subnet.host_range();
                    if !(lo..=hi).contains(&u32::from(g)) {
                        return Err(ipam_err(ipam::IpamError::GatewayOutside(g.to_string())));
                    }
                    g
                }
                None => subnet.first_host(),
            };
            let ip_range = match &req.ip_range {
                Some(r) => {
                    let r: Subnet = r.parse().map_err(ipam_err)?;
                    if !subnet.contains(r.base) || r.prefix < subnet.prefix {
                        return Err(ipam_err(ipam::IpamError::RangeOutside(r.to_string())));
                    }
                    Some(r)
                }
                None => None,
            };
            let id = ids::new_id();
            let bridge = req
                .options
                .get("com.docker.network.bridge.name")
                .cloned()
                .unwrap_or_else(|| format!("br-{}", &id[..12]));
            if bridge.is_empty()
                || bridge.len() > 15
                || !bridge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || inner.records.values().any(|r| r.bridge == bridge)
            {
                return Err(EngineError::InvalidArgument(format!(
                    "bridge name {bridge:?} is not a free interface name of 1 to 15 letters, digits, '-' or '_'"
                )));
            }
            let record = NetworkRecord {
                id,
                name: req.name.clone(),
                driver: "bridge".into(),
                created: SystemTime::now(),
                subnet: Some(subnet),
                gateway: Some(gateway),
                ip_range,
                user_ipam,
                internal: req.internal,
                attachable: req.attachable,
                labels: req.labels,
                options: req.options,
                bridge,
            };
            inner.records.insert(record.id.clone(), record.clone());
            record
        };
        if let Err(e) = self.save(&record).and(Ok(())) {
            lock(&self.inner).records.remove(&record.id);
            return Err(e);
        }
        if let Err(e) = self.bring_up(&record).await {
            let _ = self.remove(&record.id).await;
            return Err(e);
        }
        Ok(record)
    }

    /// `docker network rm`: refused for pre-defined networks and networks in use.
    pub async fn remove(&self, name_or_id: &str) -> Result<()> {
        let record = {
            let inner = lock(&self.inner);
            let r = find(&inner.records, name_or_id)?.clone();
            if r.predefined() {
                return Err(EngineError::Forbidden(format!(
                    "{} is a pre-defined network and cannot be removed",
                    r.name
                )));
            }
            if inner.endpoints.values().any(|e| e.network_id == r.id) {
                return Err(EngineError::Forbidden(format!(
                    "error while removing network: network {} id {} has active endpoints",
                    r.name, r.id
                )));
            }
            r
        };
        if let Some(task) = lock(&self.inner).dns.remove(&record.id) {
            task.abort();
        }
        let bridge = record.bridge.clone();
        self.netns
            .run_async(move || link::delete_bridge(&bridge))
            .await
            .map_err(net_err)?
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        match std::fs::remove_file(self.root.join(format!("{}.json", record.id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(EngineError::internal(
                    format!("cannot remove network {}", record.name),
                    e,
                ))
            }
            _ => {}
        }
        lock(&self.inner).records.remove(&record.id);
        Ok(())
    }

    /// Gives a starting container an address on its network and a tap on its bridge.
    pub async fn attach(&self, req: EndpointRequest) -> Result<Attachment> {
        let (network, endpoint, subnet, gateway) = {
            let mut inner = lock(&self.inner);
            let network = find(&inner.records, &req.network)?.clone();
            let (Some(subnet), Some(gateway)) = (network.subnet, network.gateway) else {
                return Err(EngineError::InvalidArgument(format!(
                    "network {} gives no address",
                    network.name
                )));
            };
            let mut used: HashSet<Ipv4Addr> = inner
                .endpoints
                .values()
                .filter(|e| e.network_id == network.id)
                .map(|e| e.ip)
                .collect();
            used.insert(gateway);
            let ip = match req.ipv4 {
                Some(ip) => {
                    if !network.user_ipam {
                        return Err(EngineError::InvalidArgument(
                            "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
                        ));
                    }
                    ipam::claim(&subnet, ip, &used)
                        .map_err(|e| EngineError::InvalidArgument(e.to_string()))?
                }
                None => ipam::allocate(&subnet, network.ip_range.as_ref(), &used)
                    .map_err(|e| EngineError::Forbidden(e.to_string()))?,
            };
            let endpoint = Endpoint {
                container_id: req.container_id.clone(),
                container_name: req.container_name.clone(),
                aliases: req.aliases.clone(),
                network_id: network.id.clone(),
                endpoint_id: ids::new_id(),
                ip,
                mac: ipam::mac_of(ip),
                upstreams: req.dns.iter().map(|a| SocketAddr::from((*a, 53))).collect(),
            };
            // Held from here: no other start takes the address meanwhile.
            inner
                .endpoints
                .insert(req.container_id.clone(), endpoint.clone());
            (network, endpoint, subnet, gateway)
        };
        let n = self.taps.fetch_add(1, Ordering::Relaxed) & 0xf_ffff;
        let tap_name = format!(
            "bt{}{n:05x}",
            &req.container_id[..8.min(req.container_id.len())]
        );
        let bridge = network.bridge.clone();
        let tap = self
            .netns
            .run_async(move || link::create_tap(&tap_name, &bridge))
            .await
            .map_err(net_err)
            .and_then(|r| r.map_err(|e| EngineError::Internal(e.to_string())));
        let tap = match tap {
            Ok(t) => t,
            Err(e) => {
                lock(&self.inner).endpoints.remove(&req.container_id);
                return Err(e);
            }
        };
        Ok(Attachment {
            tap,
            endpoint,
            network,
            prefix: subnet.prefix,
            gateway,
        })
    }

    /// Binds a running container's published ports (all or none): a host port in use is
    /// an error before anything of the container runs. Serving starts with
    /// [`Networks::serve_ports`].
    pub fn bind_ports(&self, requests: &[ports::Binding]) -> Result<ports::Bound> {
        ports::bind(requests).map_err(|e| match e {
            ports::PortError::InUse { .. } => EngineError::Conflict(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        })
    }

    /// Forwards `bound` to the container's address until it is detached.
    pub fn serve_ports(&self, container_id: &str, bound: ports::Bound, target: Ipv4Addr) {
        let tasks = ports::serve(bound, self.netns.clone(), target);
        lock(&self.inner)
            .published
            .entry(container_id.to_string())
            .or_default()
            .extend(tasks);
    }

    /// A stopped container leaves its network: its address is free again, its published
    /// ports closed. (Its tap went with its VMM.)
    pub fn detach(&self, container_id: &str) {
        let mut inner = lock(&self.inner);
        inner.endpoints.remove(container_id);
        for task in inner.published.remove(container_id).unwrap_or_default() {
            task.abort();
        }
    }

    /// A renamed container answers to its new name.
    pub fn rename(&self, container_id: &str, name: &str) {
        if let Some(e) = lock(&self.inner).endpoints.get_mut(container_id) {
            e.container_name = name.to_string();
        }
    }

    /// The running container's endpoint, if any.
    pub fn endpoint(&self, container_id: &str) -> Option<Endpoint> {
        lock(&self.inner).endpoints.get(container_id).cloned()
    }

    /// The host's resolvers (for `/etc/resolv.conf` on hosts where the guest has none).
    pub fn host_resolvers(&self) -> &[SocketAddr] {
        &self.host_resolvers
    }

    /// Stops every DNS server and published port, deletes the bridges and, for berth's own
    /// namespace, the namespace.
    pub async fn close(&self) {
        let (tasks, bridges) = {
            let mut inner = lock(&self.inner);
            let mut tasks: Vec<JoinHandle<()>> = inner.dns.drain().map(|(_, t)| t).collect();
            for (_, t) in inner.published.drain() {
                tasks.extend(t);
            }
            let bridges: Vec<String> = inner
                .records
                .values()
                .filter(|r| !r.bridge.is_empty())
                .map(|r| r.bridge.clone())
                .collect();
            (tasks, bridges)
        };
        for t in tasks {
            t.abort();
        }
        let deleted = self
            .netns
            .run_async(move || {
                for b in bridges {
                    if let Err(e) = link::delete_bridge(&b) {
                        log::warn!("{e}");
                    }
                }
            })
            .await;
        if let Err(e) = deleted {
            log::warn!("{e}");
        }
        let netns = self.netns.clone();
        let _ = tokio::task::spawn_blocking(move || netns.close()).await;
    }
}

fn find<'a>(
    records: &'a BTreeMap<String, NetworkRecord>,
    name_or_id: &str,
) -> Result<&'a NetworkRecord> {
    if let Some(r) = records.get(name_or_id) {
        return Ok(r);
    }
    if let Some(r) = records.values().find(|r| r.name == name_or_id) {
        return Ok(r);
    }
    if ids::is_hex_prefix(name_or_id) {
        let mut matches = records.values().filter(|r| r.id.starts_with(name_or_id));
        if let Some(r) = matches.next() {
            if matches.next().is_some() {
                return Err(EngineError::InvalidArgument(format!(
                    "network {name_or_id} is ambiguous ({} matches found on id)",
                    2 + matches.count()
                )));
            }
            return Ok(r);
        }
    }
    Err(not_found(name_or_id))
}

/// The DNS server's view of one network.
struct NetResolver {
    inner: std::sync::Weak<Mutex<Inner>>,
    network_id: String,
    subnet: Subnet,
    gateway: Ipv4Addr,
    names: bool,
    host: Vec<SocketAddr>,
}

impl dns::Resolver for NetResolver {
    fn client(&self, source: Ipv4Addr) -> Option<Vec<SocketAddr>> {
        if !self.subnet.contains(source) || source == self.gateway {
            return None;
        }
        let inner = self.inner.upgrade()?;
        let inner = lock(&inner);
        let upstreams = inner
            .endpoints
            .values()
            .find(|e| e.network_id == self.network_id && e.ip == source)
            .map(|e| e.upstreams.clone())
            .unwrap_or_default();
        Some(if upstreams.is_empty() {
            self.host.clone()
        } else {
            upstreams
        })
    }

    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        if !self.names {
            return None;
        }
        let inner = self.inner.upgrade()?;
        let inner = lock(&inner);
        let found: Vec<Ipv4Addr> = inner
            .endpoints
            .values()
            .filter(|e| e.network_id == self.network_id)
            .filter(|e| {
                e.container_name.eq_ignore_ascii_case(name)
                    || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                    || ids::short(&e.container_id) == name
            })
            .map(|e| e.ip)
            .collect();
        (!found.is_empty()).then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("exec")).unwrap();
        dir
    }

    /// Networks in a namespace of their own: Docker's errors, the bridges and taps made and
    /// gone, records kept across a reopen, the namespace gone at close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn networks_live_in_their_own_namespace_and_leave_nothing() {
        if !test_gate::require(test_gate::root(), "network namespaces") {
            return;
        }
        let dir = scratch("ns");
        let (data, exec) = (dir.join("data"), dir.join("exec"));
        let nets = Networks::open(&data, &exec, None, None).await.unwrap();
        let bridge = nets.get(BRIDGE).unwrap();
        assert_eq!(bridge.subnet.unwrap().to_string(), "172.17.0.0/16");
        assert!(nets.get(NONE).is_ok());
        let app = nets
            .create(CreateNetwork {
                name: "app".into(),
                ..CreateNetwork::default()
            })
            .await
            .unwrap();
        assert_eq!(app.subnet.unwrap().to_string(), "172.18.0.0/16");
        let dup = nets
            .create(CreateNetwork {
                name: "app".into(),
                ..CreateNetwork::default()
            })
            .await;
        assert!(matches!(dup, Err(EngineError::Conflict(_))));
        let overlap = nets
            .create(CreateNetwork {
                name: "other".into(),
                subnet: Some("172.18.5.0/24".into()),
                ..CreateNetwork::default()
            })
            .await;
        assert!(
            matches!(&overlap, Err(EngineError::Forbidden(m)) if m.contains("overlaps")),
            "{overlap:?}"
        );
        assert!(matches!(
            nets.remove(BRIDGE).await,
            Err(EngineError::Forbidden(_))
        ));
        // A container's tap on the network's bridge; its address held until it leaves.
        let a = nets
            .attach(EndpointRequest {
                container_id: "c0ffee00c0ffee00".into(),
                container_name: "web".into(),
                network: "app".into(),
                aliases: vec!["www".into()],
                ipv4: None,
                dns: vec![],
            })
            .await
            .unwrap();
        assert_eq!(a.endpoint.ip, Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(172, 18, 0, 1));
        let names = nets.netns().run(link::names).unwrap();
        assert!(names.contains(&app.bridge), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("btc0ffee0")),
            "{names:?}"
        );
        assert!(matches!(
            nets.remove("app").await,
            Err(EngineError::Forbidden(m)) if m.contains("active endpoints")
        ));
        // The bridge keeps its own MAC as taps come and go (a kernel bridge left alone takes
        // its lowest port's, and guests' cached gateway addresses would go stale).
        let gateway_mac = ipam::mac_of(a.gateway);
        let mac = |bridge: &str| {
            let bridge = bridge.to_string();
            nets.netns()
                .run(move || link::hardware_address(&bridge))
                .unwrap()
                .unwrap()
        };
        assert_eq!(mac(&app.bridge), gateway_mac);
        let b = nets
            .attach(EndpointRequest {
                container_id: "beef0000beef0000".into(),
                container_name: "db".into(),
                network: "app".into(),
                aliases: vec![],
                ipv4: None,
                dns: vec![],
            })
            .await
            .unwrap();
        drop(a.tap);
        nets.detach("c0ffee00c0ffee00");
        assert_eq!(mac(&app.bridge), gateway_mac);
        drop(b.tap);
        nets.detach("beef0000beef0000");
        let names = nets.netns().run(link::names).unwrap();
        assert!(!names.iter().any(|n| n.starts_with("bt")), "{names:?}");
        nets.close().await;
        assert!(!exec.join("netns").exists());
        // Reopened: the records are there, the bridges made again.
        let nets = Networks::open(&data, &exec, None, None).await.unwrap();
        assert_eq!(nets.get("app").unwrap().id, app.id);
        let names = nets.netns().run(link::names).unwrap();
        assert!(names.contains(&app.bridge) && names.contains(&"berth0".to_string()));
        nets.remove("app").await.unwrap();
        assert!(nets.get("app").is_err());
        nets.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
