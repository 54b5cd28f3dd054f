//! Reading a `POST /containers/create` request: the fields berth honours, merged with the
//! image's defaults the way dockerd merges them, and a clear refusal for every option berth
//! does not support yet, so nothing a user asks for is silently ignored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::record::{restart, ContainerConfig, HostConfig, PortBindingSpec, Ulimit};
use crate::image::ImageRuntimeConfig;
use crate::{EngineError, Result};

/// A create request, read but not yet merged with its image.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub image: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// The settings on its network (`--network-alias`, `--ip`), from `NetworkingConfig`.
    pub endpoint: Option<EndpointSpec>,
}

/// What a create request asks of its network beyond its name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSpec {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
}

/// Whether a JSON value is the zero value the Docker CLI sends for an unset option.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_unset),
        Value::Object(o) => o.values().all(is_unset),
    }
}

/// Whether a JSON value is the zero value a client sends for an option it does not set.
pub fn is_unset_value(v: &Value) -> bool {
    is_unset(v)
}

/// Fields whose value is a map: any key sets them, whatever its value (`-v /data` is
/// `"Volumes": {"/data": {}}`, `--tmpfs /x` is `"Tmpfs": {"/x": ""}`).
const MAP_FIELDS: &[&str] = &[
    "Volumes",
    "Tmpfs",
    "Sysctls",
    "StorageOpt",
    "PortBindings",
    "Annotations",
];

/// Whether the request sets `field`.
fn is_set(field: &str, v: &Value) -> bool {
    match v {
        Value::Object(o) if MAP_FIELDS.contains(&field) => !o.is_empty(),
        _ => !is_unset(v),
    }
}

fn unsupported(what: &str, why: &str) -> EngineError {
    EngineError::InvalidArgument(format!("berth does not support {what}: {why}"))
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Option<Vec<String>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        // The API also accepts a single string for Cmd/Entrypoint.
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(String::from).ok_or_else(|| {
                    EngineError::InvalidArgument(format!("{field}: expected strings"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(EngineError::InvalidArgument(format!(
            "{field}: expected a list of strings"
        ))),
    }
}

fn string(v: Option<&Value>, field: &str) -> Result<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(EngineError::InvalidArgument(format!(
            "{field}: expected a string"
        ))),
    }
}

fn boolean(v: Option<&Value>, field: &str) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(EngineError::InvalidArgument(format!(
            "{field}: expected a boolean"
        ))),
    }
}

fn int(v: Option<&Value>, field: &str) -> Result<i64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| EngineError::InvalidArgument(format!("{field}: expected an integer"))),
        Some(_) => Err(EngineError::InvalidArgument(format!(
            "{field}: expected an integer"
        ))),
    }
}

/// An integer field whose absence means something of its own (`null`: unset).
fn optional_int(v: Option<&Value>, field: &str) -> Result<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        v => int(v, field).map(Some),
    }
}

fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| {
                        EngineError::InvalidArgument(format!("{field}: values must be strings"))
                    })
            })
            .collect(),
        Some(_) => Err(EngineError::InvalidArgument(format!(
            "{field}: expected an object"
        ))),
    }
}

/// Config fields berth reads; any other field Docker knows must be unset.
const CONFIG_FIELDS: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Entrypoint",
    "Image",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "ExposedPorts",
    "Healthcheck",
    "Volumes",
    "HostConfig",
    "NetworkingConfig",
    // Metadata without effect on a container.
    "ArgsEscaped",
    "OnBuild",
    "Shell",
    "NetworkDisabled",
];

/// HostConfig fields berth reads; any other field Docker knows must be unset.
const HOST_CONFIG_FIELDS: &[&str] = &[
    "AutoRemove",
    "NetworkMode",
    "PortBindings",
    "PublishAllPorts",
    "CapAdd",
    "CapDrop",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "Memory",
    "NanoCpus",
    "MemoryReservation",
    "MemorySwap",
    "CpuShares",
    "CpuPeriod",
    "CpuQuota",
    "CpusetCpus",
    "PidsLimit",
    "Sysctls",
    "Privileged",
    "Init",
    "ConsoleSize",
    "RestartPolicy",
    "LogConfig",
    "Isolation",
    "GroupAdd",
    "Ulimits",
    "SecurityOpt",
    "Runtime",
    "CgroupnsMode",
    "PidMode",
    "UTSMode",
    "Binds",
    "Mounts",
    "Tmpfs",
    "VolumeDriver",
    "ReadonlyRootfs",
    "ShmSize",
];

/// The one runtime berth has: every container in its own microVM (`docker info` names it).
pub const RUNTIME: &str = "berth";

/// The label that chooses how a container's VM starts (`docker run --label
/// io.berth.start=cold`): `clone` (from a template, the daemon's default unless `berthd
/// --start cold`) or `cold` (a boot). A label, not an annotation: annotations need API
/// 1.43, berthd speaks 1.41.
pub const START_LABEL: &str = "io.berth.start";

/// Explains the options berth refuses, by field.
fn refusal(field: &str) -> &'static str {
    match field {
        "VolumesFrom" => {
            "--volumes-from is not implemented yet: give each container the same named volumes (-v name:/path)"
        }
        "Links" => {
            "legacy links are not supported: put the containers on a user-defined network, where they find each other by name"
        }
        "MacAddress" => "a container's MAC address is derived from its IP address",
        "MemorySwappiness" => "the container's VM has no swap",
        "OomKillDisable" => {
            "the guest kernel's OOM killer is what reports a container out of memory (exit 137, OOMKilled)"
        }
        "CpusetMems" => "a container's VM has a single memory node",
        "StorageOpt" => {
            "a container's root is an overlay on the host's file system, served over virtio-fs, with no size of its own"
        }
        "BlkioWeight" | "BlkioWeightDevice" | "BlkioDeviceReadBps" | "BlkioDeviceWriteBps"
        | "BlkioDeviceReadIOps" | "BlkioDeviceWriteIOps" => {
            "the guest has no block device: its files are served by the host over virtio-fs"
        }
        "KernelMemory" | "KernelMemoryTCP" => "kernel memory limits are gone from cgroup v2",
        _ => "the option is not implemented yet",
    }
}

/// Reads a create request body.
pub fn parse(body: &Value) -> Result<CreateRequest> {
    // From here on every field is one Docker knows, under its own name, of its own type.
    let body = super::wire::canonical(body)?;
    let obj = body.as_object().ok_or_else(|| {
        EngineError::InvalidArgument("the request body is not a JSON object".into())
    })?;
    for (k, v) in obj {
        if !CONFIG_FIELDS.contains(&k.as_str()) && is_set(k, v) {
            return Err(unsupported(&format!("Config.{k}"), refusal(k)));
        }
    }
    let image = string(obj.get("Image"), "Image")?;
    if image.is_empty() {
        return Err(EngineError::InvalidArgument("no image specified".into()));
    }
    let domainname = string(obj.get("Domainname"), "Domainname")?;
    if domainname.len() > 255
        || !domainname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(EngineError::InvalidArgument(format!(
            "invalid domainname format: {domainname}"
        )));
    }
    let hostname = string(obj.get("Hostname"), "Hostname")?;
    if hostname.len() > 63 || hostname.contains(['/', '\0', ' ']) {
        return Err(EngineError::InvalidArgument(format!(
            "invalid hostname format: {hostname}"
        )));
    }
    let stop_timeout = optional_int(obj.get("StopTimeout"), "StopTimeout")?;
    let stop_signal = string(obj.get("StopSignal"), "StopSignal")?;
    if !stop_signal.is_empty() && parse_signal(&stop_signal).is_none() {
        return Err(EngineError::InvalidArgument(format!(
            "invalid signal: {stop_signal}"
        )));
    }
    let env = string_list(obj.get("Env"), "Env")?.unwrap_or_default();
    for e in &env {
        if e.is_empty() || e.starts_with('=') || e.contains('\0') {
            return Err(EngineError::InvalidArgument(format!(
                "invalid environment variable: {e:?}"
            )));
        }
    }
    // `-v /path`: an anonymous volume there (made when the container is).
    let volumes = match obj.get("Volumes") {
        Some(Value::Object(o)) => o.clone().into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let exposed_ports = match obj.get("ExposedPorts") {
        Some(Value::Object(o)) => o.clone().into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let config = ContainerConfig {
        hostname,
        domainname,
        user: string(obj.get("User"), "User")?,
        attach_stdin: boolean(obj.get("AttachStdin"), "AttachStdin")?,
        attach_stdout: boolean(obj.get("AttachStdout"), "AttachStdout")?,
        attach_stderr: boolean(obj.get("AttachStderr"), "AttachStderr")?,
        tty: boolean(obj.get("Tty"), "Tty")?,
        open_stdin: boolean(obj.get("OpenStdin"), "OpenStdin")?,
        stdin_once: boolean(obj.get("StdinOnce"), "StdinOnce")?,
        env,
        cmd: string_list(obj.get("Cmd"), "Cmd")?,
        entrypoint: string_list(obj.get("Entrypoint"), "Entrypoint")?,
        image: image.clone(),
        working_dir: string(obj.get("WorkingDir"), "WorkingDir")?,
        labels: string_map(obj.get("Labels"), "Labels")?,
        stop_signal: (!stop_signal.is_empty()).then_some(stop_signal),
        healthcheck: super::health::parse(obj.get("Healthcheck"))?,
        stop_timeout,
        exposed_ports,
        volumes,
    };
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(EngineError::InvalidArgument(format!(
            "the working directory '{}' is invalid, it needs to be an absolute path",
            config.working_dir
        )));
    }
    let mut host_config = parse_host_config(obj.get("HostConfig"))?;
    super::mounts::add_anonymous_volumes(
        &mut host_config.mounts,
        config.volumes.keys().map(String::as_str),
    )?;
    if let Some(start) = config.labels.get(START_LABEL) {
        host_config.start = Some(start.parse::<crate::StartPath>().map_err(|e| {
            EngineError::InvalidArgument(format!("invalid label {START_LABEL}: {e}"))
        })?);
    }
    let endpoint = parse_endpoints(obj.get("NetworkingConfig"), &host_config.network_mode)?;
    Ok(CreateRequest {
        image,
        config,
        host_config,
        endpoint,
    })
}

/// The endpoint settings of the container's one network (`NetworkingConfig`).
fn parse_endpoints(nc: Option<&Value>, network_mode: &str) -> Result<Option<EndpointSpec>> {
    let Some(Value::Object(nc)) = nc else {
        return Ok(None);
    };
    let Some(Value::Object(endpoints)) = nc.get("EndpointsConfig") else {
        return Ok(None);
    };
    if endpoints.len() > 1 {
        return Err(unsupported(
            "more than one network at create",
            "a container's VM has one network device",
        ));
    }
    let Some((name, settings)) = endpoints.iter().next() else {
        return Ok(None);
    };
    let name = if name == "default" { "bridge" } else { name };
    if name != network_mode {
        return Err(EngineError::InvalidArgument(format!(
            "the endpoint settings name network {name:?}, but the container is on {network_mode:?}"
        )));
    }
    let Value::Object(settings) = settings else {
        return Ok(None);
    };
    for (k, v) in settings {
        let ok = match k.as_str() {
            "Aliases" | "IPAMConfig" | "DNSNames" => true,
            // Output fields a client may echo back from an inspect.
            "NetworkID" | "EndpointID" | "Gateway" | "IPAddress" | "IPPrefixLen" | "MacAddress" => {
                is_unset(v)
            }
            _ => !is_set(k, v),
        };
        if !ok {
            return Err(unsupported(
                &format!("EndpointsConfig.{k}"),
                refusal(if k == "Links" { "Links" } else { k }),
            ));
        }
    }
    let aliases = string_list(settings.get("Aliases"), "Aliases")?.unwrap_or_default();
    for a in &aliases {
        if a.is_empty()
            || a.len() > 253
            || !a
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(EngineError::InvalidArgument(format!(
                "invalid network alias {a:?}"
            )));
        }
    }
    if !aliases.is_empty() && (name == "bridge" || name == "none") {
        return Err(EngineError::InvalidArgument(
            "network-scoped alias is supported only for containers in user defined networks".into(),
        ));
    }
    let mut ipv4_address = None;
    if let Some(Value::Object(ipam)) = settings.get("IPAMConfig") {
        for (k, v) in ipam {
            match k.as_str() {
                "IPv4Address" => {
                    let a = string(Some(v), "IPAMConfig.IPv4Address")?;
                    if !a.is_empty() {
                        a.parse::<std::net::Ipv4Addr>().map_err(|_| {
                            EngineError::InvalidArgument(format!("invalid IPv4 address: {a}"))
                        })?;
                        ipv4_address = Some(a);
                    }
                }
                _ if !is_set(k, v) => {}
                _ => {
                    return Err(unsupported(
                        &format!("IPAMConfig.{k}"),
                        "berth networks are IPv4 only for now",
                    ))
                }
            }
        }
    }
    Ok(Some(EndpointSpec {
        aliases,
        ipv4_address,
    }))
}

/// A `-p` key: `80/tcp`, `53/udp` (`80` is tcp).
pub fn parse_port_key(key: &str) -> Result<(u16, crate::network::ports::Proto)> {
    use crate::network::ports::Proto;
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => {
            return Err(unsupported(
                &format!("{other} ports"),
                "published ports are tcp or udp",
            ))
        }
    };
    let port =
        port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            EngineError::InvalidArgument(format!("invalid containerPort: {port}"))
        })?;
    Ok((port, proto))
}

fn parse_port_bindings(v: Option<&Value>) -> Result<BTreeMap<String, Vec<PortBindingSpec>>> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(map)) = v else {
        return Ok(out);
    };
    for (key, bindings) in map {
        let (port, proto) = parse_port_key(key)?;
        let mut list = vec![];
        for b in bindings.as_array().into_iter().flatten() {
            let host_ip = string(b.get("HostIp"), "PortBindings.HostIp")?;
            let host_port = string(b.get("HostPort"), "PortBindings.HostPort")?;
            if !host_ip.is_empty() && host_ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(if host_ip.parse::<std::net::IpAddr>().is_ok() {
                    unsupported(
                        &format!("publishing on {host_ip}"),
                        "published ports listen on IPv4 addresses",
                    )
                } else {
                    EngineError::InvalidArgument(format!("invalid IP address: {host_ip}"))
                });
            }
            if host_port.contains('-') {
                return Err(unsupported(
                    &format!("the host port range {host_port}"),
                    "publish each port on its own",
                ));
            }
            if !host_port.is_empty() && host_port.parse::<u16>().is_err() {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid hostPort: {host_port}"
                )));
            }
            list.push(PortBindingSpec { host_ip, host_port });
        }
        if list.is_empty() {
            list.push(PortBindingSpec::default());
        }
        out.insert(format!("{port}/{}", proto.as_str()), list);
    }
    Ok(out)
}

/// `--cap-add`/`--cap-drop`: capability names (`NET_ADMIN`, `CAP_NET_ADMIN`, any case) or
/// `ALL`, upper-cased with the `CAP_` prefix; unknown ones refused as Docker refuses them.
fn capability_list(v: Option<&Value>, field: &str) -> Result<Vec<String>> {
    let names = string_list(v, field)?.unwrap_or_default();
    names
        .into_iter()
        .map(|n| {
            let upper = n.to_ascii_uppercase();
            if upper == "ALL" {
                return Ok(upper);
            }
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if agent_protocol::caps::NAMES.contains(&bare) {
                Ok(format!("CAP_{bare}"))
            } else {
                Err(EngineError::InvalidArgument(format!(
                    "unknown capability: \"{n}\""
                )))
            }
        })
        .collect()
}

/// The capabilities of a container's processes: Docker's default set, less `--cap-drop`,
/// plus `--cap-add` (`ALL` on either side as Docker reads it).
pub fn capabilities(add: &[String], drop: &[String]) -> Option<Vec<String>> {
    if add.is_empty() && drop.is_empty() {
        return None;
    }
    let all = || {
        agent_protocol::caps::NAMES
            .iter()
            .map(|n| format!("CAP_{n}"))
            .collect::<Vec<_>>()
    };
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        all()
    } else {
        agent_protocol::caps::DOCKER_DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    for c in add {
        if c != "ALL" && !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    Some(caps)
}

/// `--add-host name:address` (or `name=address`); `host-gateway` is the network's gateway.
pub fn parse_extra_host(entry: &str) -> Result<(String, String)> {
    let (name, address) = entry
        .split_once(':')
        .or_else(|| entry.split_once('='))
        .ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "invalid extra host: {entry}: expected name:address"
            ))
        })?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(EngineError::InvalidArgument(format!(
            "invalid extra host: {entry}: bad host name"
        )));
    }
    let address = address.trim_start_matches('[').trim_end_matches(']');
    if address != "host-gateway" && address.parse::<std::net::IpAddr>().is_err() {
        return Err(EngineError::InvalidArgument(format!(
            "invalid IP address in add-host: \"{address}\""
        )));
    }
    Ok((name.to_string(), address.to_string()))
}

/// `HostConfig.RestartPolicy` (`{"Name": "on-failure", "MaximumRetryCount": 3}`): the
/// policy's name and its retry limit, checked as dockerd checks them.
pub fn parse_restart_policy(v: Option<&Value>) -> Result<(String, i64)> {
    let Some(Value::Object(rp)) = v else {
        return Ok((restart::NO.to_string(), 0));
    };
    let name = string(rp.get("Name"), "RestartPolicy.Name")?;
    let max = int(
        rp.get("MaximumRetryCount"),
        "RestartPolicy.MaximumRetryCount",
    )?;
    let name = match name.as_str() {
        "" | "no" => restart::NO,
        "always" => restart::ALWAYS,
        "unless-stopped" => restart::UNLESS_STOPPED,
        "on-failure" => restart::ON_FAILURE,
        other => {
            return Err(EngineError::InvalidArgument(format!(
                "invalid restart policy '{other}'"
            )))
        }
    };
    if max < 0 {
        return Err(EngineError::InvalidArgument(
            "invalid restart policy: maximum retry count cannot be negative".into(),
        ));
    }
    if max != 0 && name != restart::ON_FAILURE {
        return Err(EngineError::InvalidArgument(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'".into(),
        ));
    }
    Ok((name.to_string(), max))
}

fn parse_host_config(v: Option<&Value>) -> Result<HostConfig> {
    let Some(Value::Object(hc)) = v else {
        return Ok(HostConfig {
            network_mode: "bridge".into(),
            restart_policy: "no".into(),
            log_type: "json-file".into(),
            ..HostConfig::default()
        });
    };
    for (k, v) in hc {
        if HOST_CONFIG_FIELDS.contains(&k.as_str()) || !is_set(k, v) {
            continue;
        }
        // The CLI sends a few non-zero defaults of its own.
        let default_ok = match (k.as_str(), v) {
            ("MemorySwappiness", Value::Number(n)) => n.as_i64() == Some(-1),
            ("OomScoreAdj", _) => is_unset(v),
            ("IpcMode", Value::String(s)) => s == "private" || s == "shareable",
            ("UsernsMode" | "Cgroup", Value::String(s)) => s.is_empty(),
            _ => false,
        };
        if !default_ok {
            return Err(unsupported(&format!("HostConfig.{k}"), refusal(k)));
        }
    }
    let network_mode = match string(hc.get("NetworkMode"), "NetworkMode")?.as_str() {
        "" | "default" | "bridge" => "bridge".to_string(),
        "none" => "none".to_string(),
        "host" => {
            return Err(EngineError::InvalidArgument(
                "--network host cannot mean anything for a container in its own VM: it has its own kernel and network stack".into(),
            ))
        }
        m if m.starts_with("container:") => {
            return Err(EngineError::InvalidArgument(format!(
                "--network {m} cannot mean anything for a container in its own VM: two VMs cannot share one network stack; put both containers on a user-defined network, where they reach each other by name"
            )))
        }
        other => other.to_string(),
    };
    let port_bindings = parse_port_bindings(hc.get("PortBindings"))?;
    let publish_all_ports = boolean(hc.get("PublishAllPorts"), "PublishAllPorts")?;
    if network_mode == "none" && (!port_bindings.is_empty() || publish_all_ports) {
        return Err(EngineError::InvalidArgument(
            "conflicting options: port publishing and the container type network mode".into(),
        ));
    }
    let dns = string_list(hc.get("Dns"), "Dns")?.unwrap_or_default();
    for a in &dns {
        if a.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(EngineError::InvalidArgument(format!(
                "{a} is not an IPv4 address (--dns)"
            )));
        }
    }
    let dns_search = string_list(hc.get("DnsSearch"), "DnsSearch")?.unwrap_or_default();
    let dns_options = string_list(hc.get("DnsOptions"), "DnsOptions")?.unwrap_or_default();
    for w in dns_search.iter().chain(&dns_options) {
        if w.is_empty() || w.len() > 253 || !w.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
            return Err(EngineError::InvalidArgument(format!(
                "invalid DNS setting {w:?}"
            )));
        }
    }
    let cap_add = capability_list(hc.get("CapAdd"), "CapAdd")?;
    let cap_drop = capability_list(hc.get("CapDrop"), "CapDrop")?;
    let extra_hosts = string_list(hc.get("ExtraHosts"), "ExtraHosts")?.unwrap_or_default();
    for h in &extra_hosts {
        parse_extra_host(h)?;
    }
    let (restart_policy, restart_max_retries) = parse_restart_policy(hc.get("RestartPolicy"))?;
    let auto_remove = boolean(hc.get("AutoRemove"), "AutoRemove")?;
    if auto_remove && restart_policy != restart::NO {
        return Err(EngineError::InvalidArgument(
            "can't create 'AutoRemove' container with restart policy".into(),
        ));
    }
    let (log_type, log_options) = match hc.get("LogConfig") {
        Some(Value::Object(lc)) => {
            let t = string(lc.get("Type"), "LogConfig.Type")?;
            let options = string_map(lc.get("Config"), "LogConfig.Config")?;
            super::logs::LogConfig::parse(&t, &options)
                .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
            // The daemon's default driver is named, as dockerd names it in inspect.
            let t = if t.is_empty() { "json-file".into() } else { t };
            (t, options)
        }
        _ => ("json-file".to_string(), BTreeMap::new()),
    };
    let group_add = string_list(hc.get("GroupAdd"), "GroupAdd")?.unwrap_or_default();
    if group_add.len() > agent_protocol::MAX_GROUP_ADD {
        return Err(EngineError::InvalidArgument(format!(
            "too many groups in --group-add ({}, at most {})",
            group_add.len(),
            agent_protocol::MAX_GROUP_ADD
        )));
    }
    for g in &group_add {
        if g.is_empty()
            || g.len() > agent_protocol::MAX_USER_LEN
            || g.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(EngineError::InvalidArgument(format!(
                "invalid group in --group-add: {g:?}"
            )));
        }
    }
    let ulimits = parse_ulimits(hc.get("Ulimits"))?;
    let security_opt = string_list(hc.get("SecurityOpt"), "SecurityOpt")?.unwrap_or_default();
    no_new_privileges(&security_opt)?;
    let runtime = string(hc.get("Runtime"), "Runtime")?;
    if !runtime.is_empty() && runtime != RUNTIME {
        return Err(EngineError::InvalidArgument(format!(
            "unknown or invalid runtime name: {runtime} (berth's one runtime is \"{RUNTIME}\": every container runs in its own microVM)"
        )));
    }
    match string(hc.get("CgroupnsMode"), "CgroupnsMode")?.as_str() {
        // The agent gives every container a cgroup namespace of its own.
        "" | "private" => {}
        "host" => {
            return Err(unsupported(
                "--cgroupns host",
                "the container runs in its own VM, whose kernel is not the host's: the host's cgroup hierarchy is out of its reach",
            ))
        }
        other => {
            return Err(EngineError::InvalidArgument(format!(
                "invalid cgroup namespace mode: {other}"
            )))
        }
    }
    match string(hc.get("PidMode"), "PidMode")?.as_str() {
        "" => {}
        "host" => {
            return Err(unsupported(
                "--pid host",
                "the container runs in its own VM, whose kernel does not see the host's processes",
            ))
        }
        m if m.starts_with("container:") => {
            return Err(unsupported(
                &format!("--pid {m}"),
                "each container runs in its own VM, and two VMs cannot share processes",
            ))
        }
        other => {
            return Err(EngineError::InvalidArgument(format!(
                "invalid PID mode: {other}"
            )))
        }
    }
    match string(hc.get("UTSMode"), "UTSMode")?.as_str() {
        "" => {}
        "host" => return Err(unsupported(
            "--uts host",
            "the container runs in its own VM, whose kernel has its own host name, not the host's",
        )),
        other => {
            return Err(EngineError::InvalidArgument(format!(
                "invalid UTS mode: {other}"
            )))
        }
    }
    let isolation = string(hc.get("Isolation"), "Isolation")?;
    if !isolation.is_empty() && isolation != "default" {
        return Err(unsupported(
            &format!("--isolation {isolation}"),
            "every berth container is isolated in its own microVM",
        ));
    }
    let memory = int(hc.get("Memory"), "Memory")?;
    if memory < 0 {
        return Err(EngineError::InvalidArgument(
            "invalid memory: negative".into(),
        ));
    }
    let nano_cpus = int(hc.get("NanoCpus"), "NanoCpus")?;
    if !(0..=64_000_000_000).contains(&nano_cpus) {
        return Err(EngineError::InvalidArgument(
            "range of CPUs is from 0.01 to 64.00".into(),
        ));
    }
    let console_size = match hc.get("ConsoleSize") {
        Some(Value::Array(a)) if a.len() == 2 => [
            a[0].as_u64().unwrap_or(0).min(u64::from(u16::MAX)) as u32,
            a[1].as_u64().unwrap_or(0).min(u64::from(u16::MAX)) as u32,
        ],
        _ => [0, 0],
    };
    let init = match hc.get("Init") {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let privileged = boolean(hc.get("Privileged"), "Privileged")?;
    let binds = string_list(hc.get("Binds"), "Binds")?.unwrap_or_default();
    let mount_requests = match hc.get("Mounts") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let tmpfs = string_map(hc.get("Tmpfs"), "Tmpfs")?;
    let mounts = super::mounts::parse_all(&binds, &mount_requests, &tmpfs)?;
    crate::volume::check_driver(&string(hc.get("VolumeDriver"), "VolumeDriver")?)?;
    let pids_limit = optional_int(hc.get("PidsLimit"), "PidsLimit")?;
    let limits = super::resources::Limits {
        memory_reservation: int(hc.get("MemoryReservation"), "MemoryReservation")?,
        memory_swap: int(hc.get("MemorySwap"), "MemorySwap")?,
        cpu_shares: int(hc.get("CpuShares"), "CpuShares")?,
        cpu_period: int(hc.get("CpuPeriod"), "CpuPeriod")?,
        cpu_quota: int(hc.get("CpuQuota"), "CpuQuota")?,
        cpuset_cpus: string(hc.get("CpusetCpus"), "CpusetCpus")?,
        pids_limit,
        sysctls: string_map(hc.get("Sysctls"), "Sysctls")?,
    };
    limits.check(memory, nano_cpus)?;
    let shm_size = int(hc.get("ShmSize"), "ShmSize")?;
    if shm_size < 0 {
        return Err(EngineError::InvalidArgument(
            "SHM size can not be less than 0".into(),
        ));
    }
    Ok(HostConfig {
        binds,
        mount_requests,
        tmpfs,
        mounts,
        readonly_rootfs: boolean(hc.get("ReadonlyRootfs"), "ReadonlyRootfs")?,
        shm_size,
        start: None,
        auto_remove,
        network_mode,
        port_bindings,
        publish_all_ports,
        dns,
        dns_search,
        dns_options,
        extra_hosts,
        cap_add,
        cap_drop,
        memory,
        nano_cpus,
        privileged,
        init,
        console_size,
        restart_policy,
        restart_max_retries,
        log_type,
        log_options,
        group_add,
        ulimits,
        security_opt,
        limits,
    })
}

/// Docker's `--security-opt`: `no-new-privileges` (with `:true`/`=true`/`:false`/`=false`)
/// is applied in the guest; the Linux security modules' options are refused by name.
pub fn no_new_privileges(opts: &[String]) -> Result<bool> {
    let mut on = false;
    for opt in opts {
        let (key, value) = match opt.split_once([':', '=']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => on = true,
            ("no-new-privileges", Some("false")) => on = false,
            ("no-new-privileges", Some(_)) => {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid --security-opt 2: {opt:?}"
                )))
            }
            ("seccomp" | "apparmor" | "label" | "systempaths" | "writable-cgroups", _) => {
                return Err(unsupported(
                    &format!("--security-opt {opt}"),
                    "the container is isolated by its own VM; seccomp profiles, AppArmor and SELinux labels are not applied inside it",
                ))
            }
            _ => {
                return Err(EngineError::InvalidArgument(format!(
                    "invalid --security-opt 1: {opt:?}"
                )))
            }
        }
    }
    Ok(on)
}

/// At most this many `--ulimit`s: there are 16 kinds.
const MAX_ULIMITS: usize = 16;

/// Docker's `--ulimit` (`HostConfig.Ulimits`), checked as dockerd checks it; -1 is
/// unlimited. Applied to every process of the container, exec'd ones included.
pub fn parse_ulimits(v: Option<&Value>) -> Result<Vec<Ulimit>> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(EngineError::InvalidArgument(
                "HostConfig.Ulimits must be a list".into(),
            ))
        }
    };
    if list.len() > MAX_ULIMITS {
        return Err(EngineError::InvalidArgument(format!(
            "too many ulimits ({}, at most {MAX_ULIMITS})",
            list.len()
        )));
    }
    let mut out: Vec<Ulimit> = Vec::new();
    for u in list {
        let name = string(u.get("Name"), "Ulimits.Name")?;
        if rlimit_resource(&name).is_none() {
            return Err(EngineError::InvalidArgument(format!(
                "invalid ulimit type: {name}"
            )));
        }
        let soft = int(u.get("Soft"), "Ulimits.Soft")?;
        let hard = int(u.get("Hard"), "Ulimits.Hard")?;
        let limit = |n: i64| if n < 0 { u64::MAX } else { n as u64 };
        if limit(soft) > limit(hard) {
            return Err(EngineError::InvalidArgument(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
        out.retain(|o| o.name != name);
        out.push(Ulimit { name, soft, hard });
    }
    Ok(out)
}

/// The agent's name for a limit Docker names.
pub fn rlimit_resource(name: &str) -> Option<agent_protocol::RlimitResource> {
    use agent_protocol::RlimitResource as R;
    Some(match name {
        "as" => R::As,
        "core" => R::Core,
        "cpu" => R::Cpu,
        "data" => R::Data,
        "fsize" => R::Fsize,
        "locks" => R::Locks,
        "memlock" => R::Memlock,
        "msgqueue" => R::Msgqueue,
        "nice" => R::Nice,
        "nofile" => R::Nofile,
        "nproc" => R::Nproc,
        "rss" => R::Rss,
        "rtprio" => R::Rtprio,
        "rttime" => R::Rttime,
        "sigpending" => R::Sigpending,
        "stack" => R::Stack,
        _ => return None,
    })
}

/// Merges the image's defaults into a user's config, as dockerd does.
pub fn merge(user: &mut ContainerConfig, image: &ImageRuntimeConfig) {
    if user.user.is_empty() {
        user.user = image.user.clone().unwrap_or_default();
    }
    let image_env = image.env.clone().unwrap_or_default();
    if user.env.is_empty() {
        user.env = image_env;
    } else {
        for e in image_env {
            let key = e.split('=').next().unwrap_or_default();
            if !user.env.iter().any(|u| u.split('=').next() == Some(key)) {
                user.env.push(e);
            }
        }
    }
    for (k, v) in image.labels.clone().unwrap_or_default() {
        user.labels.entry(k).or_insert(v);
    }
    for (k, v) in image.exposed_ports.clone().unwrap_or_default() {
        user.exposed_ports.entry(k).or_insert(v);
    }
    for (k, v) in image.volumes.clone().unwrap_or_default() {
        user.volumes.entry(k).or_insert(v);
    }
    let entrypoint_empty = user.entrypoint.as_ref().is_none_or(Vec::is_empty);
    if entrypoint_empty {
        if user.cmd.as_ref().is_none_or(Vec::is_empty) {
            user.cmd = image.cmd.clone();
        }
        if user.entrypoint.is_none() {
            user.entrypoint = image.entrypoint.clone();
        }
    }
    if user.working_dir.is_empty() {
        user.working_dir = image.working_dir.clone().unwrap_or_default();
    }
    if user.stop_signal.is_none() {
        user.stop_signal = image.stop_signal.clone().filter(|s| !s.is_empty());
    }
    let image_check = match super::health::parse(image.healthcheck.as_ref()) {
        Ok(check) => check,
        Err(e) => {
            // The image is already stored; its check cannot run, and the container says so
            // in its log rather than failing every start.
            log::warn!("the image's HEALTHCHECK cannot be used: {e}");
            None
        }
    };
    user.healthcheck = super::health::merge(user.healthcheck.take(), image_check);
}

/// Parses a signal name (`SIGTERM`, `TERM`, `term`) or number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => {
            let rt = name.strip_prefix("RTMIN")?;
            let offset: i32 = if rt.is_empty() {
                0
            } else {
                rt.strip_prefix('+')?.parse().ok()?
            };
            let n = 34 + offset;
            return (34..=64).contains(&n).then_some(n);
        }
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_are_checked_as_dockerd_checks_them() {
        let u = parse_ulimits(Some(&json!([
            {"Name": "nofile", "Soft": 1024, "Hard": 2048},
            {"Name": "core", "Soft": -1, "Hard": -1},
            {"Name": "nofile", "Soft": 10, "Hard": 20}
        ])))
        .unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(
            u[1],
            Ulimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20
            }
        );
        for (v, want) in [
            (
                json!([{"Name": "nofiles", "Soft": 1, "Hard": 1}]),
                "invalid ulimit type: nofiles",
            ),
            (json!([{"Name": "nofile", "Soft": 3, "Hard": 2}]), "3 > 2"),
            (json!([{"Name": "nofile", "Soft": -1, "Hard": 2}]), "-1 > 2"),
            (json!({"Name": "nofile"}), "must be a list"),
        ] {
            let e = parse_ulimits(Some(&v)).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(parse_ulimits(Some(&Value::Null)).unwrap().is_empty());
    }
    use serde_json::json;

    fn cli_body() -> Value {
        // What Docker CLI 28 sends for `docker run --rm -e A=1 busybox echo hi`.
        json!({
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
            "AttachStdout": true, "AttachStderr": true, "Tty": false, "OpenStdin": false,
            "StdinOnce": false, "Env": ["A=1"], "Cmd": ["echo", "hi"], "Image": "busybox",
            "Volumes": {}, "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": {},
            "HostConfig": {
                "Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
                "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                "AutoRemove": true, "VolumeDriver": "", "VolumesFrom": null, "ConsoleSize": [40, 120],
                "CapAdd": null, "CapDrop": null, "CgroupnsMode": "", "Dns": [], "DnsOptions": [],
                "DnsSearch": [], "ExtraHosts": null, "GroupAdd": null, "IpcMode": "", "Cgroup": "",
                "Links": null, "OomScoreAdj": 0, "PidMode": "", "Privileged": false,
                "PublishAllPorts": false, "ReadonlyRootfs": false, "SecurityOpt": null,
                "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "Isolation": "", "CpuShares": 0,
                "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0,
                "Devices": [], "DeviceCgroupRules": null, "DeviceRequests": null,
                "MemoryReservation": 0, "MemorySwap": 0,
                "OomKillDisable": false, "PidsLimit": null, "Ulimits": null, "MemorySwappiness": -1,
                "MaskedPaths": null, "ReadonlyPaths": null
            },
            "NetworkingConfig": {"EndpointsConfig": {}}
        })
    }

    #[test]
    fn the_clis_defaults_are_accepted() {
        let r = parse(&cli_body()).unwrap();
        assert_eq!(r.image, "busybox");
        assert!(r.host_config.auto_remove);
        assert_eq!(r.host_config.network_mode, "bridge");
        assert_eq!(r.config.cmd, Some(vec!["echo".into(), "hi".into()]));
        assert_eq!(r.host_config.console_size, [40, 120]);
    }

    #[test]
    fn process_and_log_options_sdks_send_are_read() {
        let mut body = cli_body();
        body["HostConfig"]["GroupAdd"] = json!(["audio", "1234"]);
        body["HostConfig"]["Runtime"] = json!("berth");
        body["HostConfig"]["CgroupnsMode"] = json!("private");
        body["HostConfig"]["LogConfig"] =
            json!({"Type": "json-file", "Config": {"max-size": "1k", "max-file": "2"}});
        let r = parse(&body).unwrap();
        let h = &r.host_config;
        assert_eq!(h.group_add, ["audio", "1234"]);
        assert_eq!(h.log_type, "json-file");
        assert_eq!(h.log_options["max-size"], "1k");
        assert_eq!(
            h.log_config(),
            Ok(super::super::logs::LogConfig::Store {
                max_size: Some(1000),
                max_files: 2
            })
        );
        // The CLI's defaults: the daemon's driver, named as dockerd names it.
        let r = parse(&cli_body()).unwrap();
        assert_eq!(r.host_config.log_type, "json-file");
        assert!(r.host_config.log_options.is_empty());
        for driver in ["local", "none"] {
            body["HostConfig"]["LogConfig"] = json!({"Type": driver, "Config": {}});
            assert_eq!(parse(&body).unwrap().host_config.log_type, driver);
        }
    }

    #[test]
    fn network_options_are_read() {
        let mut body = cli_body();
        body["HostConfig"]["NetworkMode"] = json!("appnet");
        body["HostConfig"]["PortBindings"] =
            json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}], "53/udp": []});
        body["HostConfig"]["Dns"] = json!(["10.0.0.53"]);
        body["HostConfig"]["ExtraHosts"] = json!(["db:10.0.0.9", "gw:host-gateway"]);
        body["HostConfig"]["CapAdd"] = json!(["net_admin"]);
        body["HostConfig"]["CapDrop"] = json!(["CAP_CHOWN"]);
        body["NetworkingConfig"] = json!({"EndpointsConfig": {"appnet": {
            "Aliases": ["web"], "IPAMConfig": {"IPv4Address": "10.1.0.5"}}}});
        let r = parse(&body).unwrap();
        assert_eq!(r.host_config.network_mode, "appnet");
        let p = &r.host_config.port_bindings;
        assert_eq!(p["80/tcp"][0].host_ip, "127.0.0.1");
        assert_eq!(p["80/tcp"][0].host_port, "8080");
        assert_eq!(p["53/udp"], vec![PortBindingSpec::default()]);
        let e = r.endpoint.unwrap();
        assert_eq!(e.aliases, vec!["web"]);
        assert_eq!(e.ipv4_address.as_deref(), Some("10.1.0.5"));
        let caps = capabilities(&r.host_config.cap_add, &r.host_config.cap_drop).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(caps.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(capabilities(&["ALL".into()], &[]).unwrap().len(), 41);
        assert!(capabilities(&[], &["ALL".into()]).unwrap().is_empty());
        assert_eq!(capabilities(&[], &[]), None);
        assert!(parse_extra_host("x:not-an-ip").is_err());
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (path, value, expect) in [
            (
                "/HostConfig/PortBindings",
                json!({"80/tcp": [{"HostPort": "8000-8010"}]}),
                "host port range",
            ),
            (
                "/HostConfig/PortBindings",
                json!({"80/sctp": [{"HostPort": "8080"}]}),
                "sctp ports",
            ),
            ("/HostConfig/NetworkMode", json!("container:abc"), "two VMs"),
            ("/HostConfig/Links", json!(["a:b"]), "links"),
            (
                "/HostConfig/CapAdd",
                json!(["NO_SUCH"]),
                "unknown capability",
            ),
            (
                "/HostConfig/Binds",
                json!(["d/x:/b"]),
                "invalid characters for a local volume name",
            ),
            (
                "/HostConfig/VolumeDriver",
                json!("nfs"),
                "plugin \"nfs\" not found",
            ),
            ("/HostConfig/ShmSize", json!(-1), "SHM size"),
            ("/HostConfig/CpusetMems", json!("0"), "single memory node"),
            ("/HostConfig/NetworkMode", json!("host"), "network host"),
            (
                "/HostConfig/RestartPolicy",
                json!({"Name": "sometimes"}),
                "invalid restart policy 'sometimes'",
            ),
            (
                "/HostConfig/RestartPolicy",
                json!({"Name": "always", "MaximumRetryCount": 2}),
                "only be used with 'on-failure'",
            ),
            (
                "/HostConfig/RestartPolicy",
                json!({"Name": "on-failure", "MaximumRetryCount": -1}),
                "cannot be negative",
            ),
            ("/Domainname", json!("bad domain"), "domainname"),
            // Maps whose values are empty are still set.
            ("/HostConfig/Tmpfs", json!({"x": ""}), "must be absolute"),
            (
                "/Volumes",
                json!({"data": {}}),
                "mount path must be absolute",
            ),
            ("/HostConfig/VolumesFrom", json!(["other"]), "VolumesFrom"),
            ("/HostConfig/CgroupnsMode", json!("host"), "--cgroupns host"),
            ("/HostConfig/PidMode", json!("host"), "--pid host"),
            (
                "/HostConfig/PidMode",
                json!("container:x"),
                "--pid container:x",
            ),
            ("/HostConfig/UTSMode", json!("host"), "--uts host"),
            (
                "/HostConfig/Runtime",
                json!("runc"),
                "invalid runtime name: runc",
            ),
            (
                "/HostConfig/LogConfig",
                json!({"Type": "syslog", "Config": {}}),
                "syslog log driver",
            ),
            (
                "/HostConfig/LogConfig",
                json!({"Type": "json-file", "Config": {"max-szie": "1m"}}),
                "unknown log opt 'max-szie'",
            ),
            (
                "/HostConfig/LogConfig",
                json!({"Type": "local", "Config": {"compress": "true"}}),
                "compress=true",
            ),
            ("/HostConfig/GroupAdd", json!(["a:b"]), "--group-add"),
            ("/HostConfig/GroupAdd", json!([""]), "--group-add"),
            (
                "/NetworkingConfig/EndpointsConfig",
                json!({"default": {"Aliases": ["web"]}}),
                "user defined networks",
            ),
            (
                "/NetworkingConfig/EndpointsConfig",
                json!({"a": {}, "b": {}}),
                "one network device",
            ),
        ] {
            let mut body = cli_body();
            let (parent, field) = path.rsplit_once('/').expect("a path");
            body.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .expect("the CLI sends every object tested")
                .insert(field.to_string(), value);
            let e = parse(&body).unwrap_err().to_string();
            assert!(e.contains(expect), "{path}: {e}");
        }
        let mut body = cli_body();
        body["Healthcheck"] = json!({"Test": ["CMD", "true"], "Interval": 5});
        assert!(parse(&body)
            .unwrap_err()
            .to_string()
            .contains("Interval in Healthcheck cannot be less than 1ms"));
        // Kept: a health check, ulimits, no-new-privileges.
        let mut body = cli_body();
        body["Healthcheck"] = json!({"Test": ["CMD-SHELL", "true"], "Retries": 2});
        body["HostConfig"]["SecurityOpt"] = json!(["no-new-privileges"]);
        body["HostConfig"]["Ulimits"] = json!([{"Name": "nproc", "Soft": 10, "Hard": 20}]);
        body["HostConfig"]["Init"] = json!(true);
        body["HostConfig"]["Privileged"] = json!(true);
        let req = parse(&body).unwrap();
        assert_eq!(req.host_config.init, Some(true));
        assert!(req.host_config.privileged);
        assert_eq!(req.config.healthcheck.unwrap().retries, 2);
        assert_eq!(req.host_config.ulimits.len(), 1);
        assert_eq!(req.host_config.security_opt, ["no-new-privileges"]);
    }

    #[test]
    fn security_opts_are_no_new_privileges_or_refused() {
        let opts =
            |v: &[&str]| no_new_privileges(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(opts(&["no-new-privileges"]).unwrap());
        assert!(opts(&["no-new-privileges:true"]).unwrap());
        assert!(opts(&["no-new-privileges=true"]).unwrap());
        assert!(!opts(&["no-new-privileges:false"]).unwrap());
        assert!(!opts(&[]).unwrap());
        let e = opts(&["seccomp=unconfined"]).unwrap_err().to_string();
        assert!(
            e.contains("berth does not support --security-opt seccomp=unconfined"),
            "{e}"
        );
        assert!(opts(&["apparmor=x"]).is_err());
        assert!(opts(&["no-new-privileges:maybe"]).is_err());
        assert!(opts(&["bogus"])
            .unwrap_err()
            .to_string()
            .contains("invalid --security-opt"));
    }

    #[test]
    fn the_start_label_chooses_how_the_vm_starts() {
        let with = |label: Option<&str>| {
            let mut body = cli_body();
            if let Some(v) = label {
                body["Labels"] = json!({ START_LABEL: v, "other": "kept" });
            }
            parse(&body)
        };
        assert_eq!(with(None).unwrap().host_config.start, None);
        assert_eq!(
            with(Some("cold")).unwrap().host_config.start,
            Some(crate::StartPath::Cold)
        );
        assert_eq!(
            with(Some("clone")).unwrap().host_config.start,
            Some(crate::StartPath::Clone)
        );
        let e = with(Some("warm")).unwrap_err().to_string();
        assert!(e.contains("invalid label io.berth.start"), "{e}");
    }

    #[test]
    fn merge_follows_dockerd() {
        let image = ImageRuntimeConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            working_dir: Some("/w".into()),
            user: Some("nobody".into()),
            ..Default::default()
        };
        let mut c = ContainerConfig {
            env: vec!["A=user".into()],
            ..Default::default()
        };
        merge(&mut c, &image);
        assert_eq!(c.argv(), vec!["/ep", "default"]);
        assert_eq!(c.env, vec!["A=user", "PATH=/bin"]);
        assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/w", "nobody"));
        // --entrypoint replaces the image's CMD too.
        let mut c = ContainerConfig {
            entrypoint: Some(vec!["/other".into()]),
            ..Default::default()
        };
        merge(&mut c, &image);
        assert_eq!(c.argv(), vec!["/other"]);
        // A user CMD keeps the image's entrypoint.
        let mut c = ContainerConfig {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        merge(&mut c, &image);
        assert_eq!(c.argv(), vec!["/ep", "x"]);
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("kill"), Some(9));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("RTMIN+3"), Some(37));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}
