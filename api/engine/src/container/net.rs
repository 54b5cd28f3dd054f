//! A container on its network: the endpoint settings recorded at create, the address, tap
//! and published ports taken at start, and what its guest is told (its interface, its
//! `/etc/hosts` and `/etc/resolv.conf`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use agent_protocol::{ContainerSpec, DnsConfig, HostsEntry, InterfaceConfig};

use super::record::{EndpointSettings, PublishedPort, Record};
use super::spec::{self, CreateRequest};
use super::{vm, Containers};
use crate::network::{self, ipam, ports, Attachment, EndpointRequest};
use crate::{EngineError, Result};

impl Containers {
    /// The network a create request names, checked to exist, with its endpoint settings.
    pub(super) fn endpoint_settings(
        &self,
        req: &CreateRequest,
    ) -> Result<BTreeMap<String, EndpointSettings>> {
        let mode = &req.host_config.network_mode;
        if mode == network::NONE {
            return Ok(BTreeMap::new());
        }
        // Not a 404: the CLI takes a 404 from create for a missing image and pulls.
        let record = self.networks.get(mode).map_err(|e| match e {
            EngineError::NotFound(m) => EngineError::InvalidArgument(m),
            other => other,
        })?;
        let endpoint = req.endpoint.clone().unwrap_or_default();
        if endpoint.ipv4_address.is_some() && !record.user_ipam {
            return Err(EngineError::InvalidArgument(
                "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
            ));
        }
        Ok(BTreeMap::from([(
            record.name.clone(),
            EndpointSettings {
                network_id: record.id.clone(),
                aliases: endpoint.aliases,
                ipv4_address: endpoint.ipv4_address,
                ..EndpointSettings::default()
            },
        )]))
    }

    /// Takes the container's place on its network for a start: its address, a tap on the
    /// bridge, and its published ports bound. Nothing for `--network none`.
    pub(super) async fn join_network(
        &self,
        record: &Record,
    ) -> Result<Option<(Attachment, ports::Bound)>> {
        let Some((name, settings)) = record.networks.iter().next() else {
            return Ok(None);
        };
        // A network removed since the container was created is an error, as in Docker.
        let network = self
            .networks
            .get(&settings.network_id)
            .map_err(|_| EngineError::NotFound(format!("network {name} not found")))?;
        let ipv4 =
            match &settings.ipv4_address {
                Some(a) => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                    EngineError::InvalidArgument(format!("invalid IPv4 address: {a}"))
                })?),
                None => None,
            };
        let dns = record
            .host_config
            .dns
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let attachment = self
            .networks
            .attach(EndpointRequest {
                container_id: record.id.clone(),
                container_name: record.name.clone(),
                network: network.id.clone(),
                aliases: settings.aliases.clone(),
                ipv4,
                dns,
            })
            .await?;
        let bindings = match port_bindings(record) {
            Ok(b) => b,
            Err(e) => {
                self.networks.detach(&record.id);
                return Err(e);
            }
        };
        match self.networks.bind_ports(&bindings) {
            Ok(bound) => Ok(Some((attachment, bound))),
            Err(e) => {
                self.networks.detach(&record.id);
                Err(match e {
                    EngineError::Conflict(why) => EngineError::Internal(format!(
                        "driver failed programming external connectivity on endpoint {} ({}): {why}",
                        record.name, attachment.endpoint.endpoint_id
                    )),
                    other => other,
                })
            }
        }
    }
}

/// The ports to publish: `-p` as asked, and with `-P` every exposed port not published
/// already, on an ephemeral port of every address.
pub(super) fn port_bindings(record: &Record) -> Result<Vec<ports::Binding>> {
    let mut out = vec![];
    for (key, list) in &record.host_config.port_bindings {
        let (container_port, proto) = spec::parse_port_key(key)?;
        for b in list {
            out.push(ports::Binding {
                proto,
                container_port,
                host_ip: if b.host_ip.is_empty() {
                    Ipv4Addr::UNSPECIFIED
                } else {
                    b.host_ip.parse().map_err(|_| {
                        EngineError::InvalidArgument(format!("invalid IP address: {}", b.host_ip))
                    })?
                },
                host_port: if b.host_port.is_empty() {
                    0
                } else {
                    b.host_port.parse().map_err(|_| {
                        EngineError::InvalidArgument(format!("invalid hostPort: {}", b.host_port))
                    })?
                },
            });
        }
    }
    if record.host_config.publish_all_ports {
        for key in record.config.exposed_ports.keys() {
            let (container_port, proto) = spec::parse_port_key(key)?;
            if !out
                .iter()
                .any(|b| b.container_port == container_port && b.proto == proto)
            {
                out.push(ports::Binding {
                    proto,
                    container_port,
                    host_ip: Ipv4Addr::UNSPECIFIED,
                    host_port: 0,
                });
            }
        }
    }
    Ok(out)
}

/// The ports as bound, for the record (`NetworkSettings.Ports`, `docker port`).
pub(super) fn published(bound: &ports::Bound) -> Vec<PublishedPort> {
    bound
        .bindings
        .iter()
        .map(|b| PublishedPort {
            port: format!("{}/{}", b.container_port, b.proto.as_str()),
            host_ip: b.host_ip.to_string(),
            host_port: b.host_port,
        })
        .collect()
}

/// What the guest is told about its network: `/etc/hosts` with its own address under its
/// hostname and the `--add-host` entries, and `/etc/resolv.conf` naming its network's DNS
/// server (the gateway) with `--dns-search` and `--dns-option`.
pub(super) fn fill_container_spec(
    spec: &mut ContainerSpec,
    record: &Record,
    a: &Attachment,
) -> Result<()> {
    let hostname = &record.config.hostname;
    let mut names = vec![];
    if !record.config.domainname.is_empty() {
        names.push(format!("{hostname}.{}", record.config.domainname));
    }
    names.push(hostname.clone());
    spec.hosts.push(HostsEntry {
        address: a.endpoint.ip.to_string(),
        names,
    });
    for entry in &record.host_config.extra_hosts {
        let (name, address) = spec::parse_extra_host(entry)?;
        let address = if address == "host-gateway" {
            a.gateway.to_string()
        } else {
            address
        };
        spec.hosts.push(HostsEntry {
            address,
            names: vec![name],
        });
    }
    spec.dns = Some(DnsConfig {
        nameservers: vec![a.gateway.to_string()],
        search: record.host_config.dns_search.clone(),
        options: record.host_config.dns_options.clone(),
    });
    Ok(())
}

/// What a container without a network is told: its `--add-host` entries and, with
/// `--dns`, `--dns-search` or `--dns-option`, a `/etc/resolv.conf` of them (its VM has no
/// route to any server, but the files are what was asked for, as in Docker).
pub(super) fn fill_without_network(spec: &mut ContainerSpec, record: &Record) -> Result<()> {
    for entry in &record.host_config.extra_hosts {
        let (name, address) = spec::parse_extra_host(entry)?;
        if address == "host-gateway" {
            return Err(EngineError::InvalidArgument(format!(
                "--add-host {entry}: a container without a network has no gateway"
            )));
        }
        spec.hosts.push(HostsEntry {
            address,
            names: vec![name],
        });
    }
    let h = &record.host_config;
    if !h.dns.is_empty() || !h.dns_search.is_empty() || !h.dns_options.is_empty() {
        spec.dns = Some(DnsConfig {
            nameservers: h.dns.clone(),
            search: h.dns_search.clone(),
            options: h.dns_options.clone(),
        });
    }
    Ok(())
}

/// The VM's side of an attachment: the tap for its VMM, and its interface for the agent.
pub(super) fn launch_net(a: Attachment) -> vm::NetLaunch {
    vm::NetLaunch {
        mac: a.endpoint.mac,
        interface: InterfaceConfig {
            index: 0,
            mac: ipam::format_mac(&a.endpoint.mac),
            address: a.endpoint.ip.to_string(),
            prefix_len: a.prefix,
            gateway: Some(a.gateway.to_string()),
            mtu: network::MTU,
        },
        tap: a.tap,
    }
}

impl Containers {
    /// `docker network connect` of a container that is not running (a VM cannot grow a
    /// network device while it runs, and has one).
    pub async fn connect(
        &self,
        name_or_id: &str,
        network: &str,
        aliases: Vec<String>,
        ipv4_address: Option<String>,
    ) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let net = self.networks.get(network)?;
        let _op = c.op.clone().lock_owned().await;
        let mut r = c.record.lock().await;
        if r.networks.contains_key(&net.name) {
            return Err(EngineError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                r.name, net.name
            )));
        }
        if net.name == network::NONE || r.host_config.network_mode == network::NONE {
            return Err(EngineError::InvalidArgument(format!(
                "container {} cannot be connected to network {}: a container on --network none has no network device",
                r.name, net.name
            )));
        }
        if r.state.status == super::record::Status::Running {
            return Err(EngineError::Unsupported(format!(
                "berth cannot connect the running container {} to network {}: its VM's devices are fixed while it runs (virtio-mmio has no hotplug); stop it, connect it, and start it again",
                r.name, net.name
            )));
        }
        if let Some(other) = r.networks.keys().next() {
            return Err(EngineError::Unsupported(format!(
                "berth cannot connect container {} to a second network ({} besides {other}): its VM has one network device; disconnect it from {other} first",
                r.name, net.name
            )));
        }
        if !aliases.is_empty() && !net.resolves_names() {
            return Err(EngineError::InvalidArgument(
                "network-scoped alias is supported only for containers in user defined networks"
                    .into(),
            ));
        }
        if let Some(a) = &ipv4_address {
            a.parse::<Ipv4Addr>()
                .map_err(|_| EngineError::InvalidArgument(format!("invalid IPv4 address: {a}")))?;
            if !net.user_ipam {
                return Err(EngineError::InvalidArgument(
                    "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
                ));
            }
        }
        r.networks.insert(
            net.name.clone(),
            EndpointSettings {
                network_id: net.id.clone(),
                aliases,
                ipv4_address,
                ..EndpointSettings::default()
            },
        );
        c.save(&r).await
    }

    /// `docker network disconnect` of a container that is not running.
    pub async fn disconnect(&self, name_or_id: &str, network: &str, force: bool) -> Result<()> {
        let c = self.get(name_or_id).await?;
        let _op = c.op.clone().lock_owned().await;
        let mut r = c.record.lock().await;
        let name = match self.networks.get(network) {
            Ok(n) => n.name,
            // `--force` takes a network that is gone already, as Docker's does.
            Err(_) if force && r.networks.contains_key(network) => network.to_string(),
            Err(e) => return Err(e),
        };
        if !r.networks.contains_key(&name) {
            return Err(EngineError::Forbidden(format!(
                "container {} is not connected to network {name}",
                r.id
            )));
        }
        if r.state.status == super::record::Status::Running {
            return Err(EngineError::Unsupported(format!(
                "berth cannot disconnect the running container {} from network {name}: its VM's devices are fixed while it runs; stop it first",
                r.name
            )));
        }
        r.networks.remove(&name);
        c.save(&r).await
    }

    /// Containers (any state) on network `id`, by id: (name, endpoint settings).
    pub async fn on_network(&self, id: &str) -> Vec<(String, String, EndpointSettings)> {
        let mut out = vec![];
        for c in self.all().await {
            let r = c.record().await;
            for s in r.networks.values() {
                if s.network_id == id {
                    out.push((r.id.clone(), r.name.clone(), s.clone()));
                }
            }
        }
        out
    }
}
