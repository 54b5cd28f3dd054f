//! The network endpoints: list, inspect, create, remove, prune, connect, disconnect, in
//! Docker's shapes and wording; and the network parts of a container's JSON
//! (`NetworkSettings`, the `Ports` of `docker ps`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use engine::container::record::Record;
use engine::network::{CreateNetwork, NetworkRecord};
use engine::time::rfc3339;

use super::body;
use crate::http::{json, json_body, status, ApiError, ApiResult, Query};
use crate::router::{not_found, State};

pub async fn route(state: &Arc<State>, req: Request<Incoming>, path: &str) -> ApiResult {
    let q = Query::parse(req.uri().query());
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(crate::http::percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["networks"]) => list(state, &q).await,
        (Method::POST, ["networks", "create"]) => create(state, req).await,
        (Method::POST, ["networks", "prune"]) => prune(state, &q).await,
        (Method::GET, ["networks", id]) => {
            let r = state.engine.networks.get(id)?;
            json(StatusCode::OK, &network_json(state, &r, true).await)
        }
        (Method::DELETE, ["networks", id]) => {
            state.engine.networks.remove(id).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Method::POST, ["networks", id, "connect"]) => {
            let body: Value = json_body(req.into_body()).await?;
            let container = body["Container"].as_str().unwrap_or_default().to_string();
            if container.is_empty() {
                return Err(ApiError::bad_request("no container specified"));
            }
            let ep = &body["EndpointConfig"];
            let aliases: Vec<String> = ep["Aliases"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let ip = ep["IPAMConfig"]["IPv4Address"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from);
            if ep["IPAMConfig"]["IPv6Address"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::bad_request(
                    "berth does not support --ip6: berth networks are IPv4 only for now",
                ));
            }
            if ep["Links"].as_array().is_some_and(|l| !l.is_empty()) {
                return Err(ApiError::bad_request(
                    "berth does not support links: containers on a user-defined network find each other by name",
                ));
            }
            state
                .engine
                .containers
                .connect(&container, id, aliases, ip)
                .await?;
            Ok(status(StatusCode::OK))
        }
        (Method::POST, ["networks", id, "disconnect"]) => {
            let body: Value = json_body(req.into_body()).await?;
            let container = body["Container"].as_str().unwrap_or_default();
            if container.is_empty() {
                return Err(ApiError::bad_request("no container specified"));
            }
            let force = body["Force"].as_bool().unwrap_or(false);
            state
                .engine
                .containers
                .disconnect(container, id, force)
                .await?;
            Ok(status(StatusCode::OK))
        }
        _ => Err(not_found()),
    }
}

/// A network in Docker's shape; `Containers` lists the running containers on it (with
/// `verbose`, as `GET /networks/{id}` has it; `docker network ls` gets an empty map).
pub async fn network_json(state: &Arc<State>, r: &NetworkRecord, verbose: bool) -> Value {
    let ipam_config: Vec<Value> = match (r.subnet, r.gateway) {
        (Some(subnet), Some(gateway)) => {
            let mut c = json!({ "Subnet": subnet.to_string(), "Gateway": gateway.to_string() });
            if let Some(range) = r.ip_range {
                c["IPRange"] = json!(range.to_string());
            }
            vec![c]
        }
        _ => vec![],
    };
    let mut containers = serde_json::Map::new();
    if verbose {
        for e in state.engine.networks.endpoints_of(&r.id) {
            containers.insert(
                e.container_id.clone(),
                json!({
                    "Name": e.container_name,
                    "EndpointID": e.endpoint_id,
                    "MacAddress": engine::network::ipam::format_mac(&e.mac),
                    "IPv4Address": format!("{}/{}", e.ip, r.subnet.map_or(32, |s| s.prefix)),
                    "IPv6Address": "",
                }),
            );
        }
    }
    json!({
        "Name": r.name,
        "Id": r.id,
        "Created": rfc3339(r.created),
        "Scope": "local",
        "Driver": r.driver,
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": {}, "Config": ipam_config },
        "Internal": r.internal,
        "Attachable": r.attachable,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": r.options,
        "Labels": r.labels,
    })
}

/// Whether `r` passes `docker network ls`'s filters (name and id by substring and prefix,
/// driver, label, scope, type custom|builtin, dangling).
async fn matches(
    state: &Arc<State>,
    r: &NetworkRecord,
    filters: &HashMap<String, Vec<String>>,
) -> Result<bool, ApiError> {
    for (key, values) in filters {
        let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
        let ok = match key.as_str() {
            "name" => any(&|v| r.name.contains(v)),
            "id" => any(&|v| r.id.starts_with(v)),
            "driver" => any(&|v| r.driver == v),
            "label" => values.iter().all(|v| body::label_matches(&r.labels, v)),
            "scope" => any(&|v| v == "local"),
            "type" => {
                for v in values {
                    if v != "custom" && v != "builtin" {
                        return Err(ApiError::bad_request(format!(
                            "invalid filter: 'type'='{v}'"
                        )));
                    }
                }
                any(&|v| (v == "builtin") == r.predefined())
            }
            "dangling" => {
                let used =
                    r.predefined() || !state.engine.containers.on_network(&r.id).await.is_empty();
                any(&|v| matches!(v, "true" | "1") != used)
            }
            other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn list(state: &Arc<State>, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    let mut out = vec![];
    for r in state.engine.networks.list() {
        if matches(state, &r, &filters).await? {
            out.push(network_json(state, &r, false).await);
        }
    }
    json(StatusCode::OK, &out)
}

async fn create(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    let body: Value = json_body(req.into_body()).await?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let string = |k: &str| body::string(obj, k);
    let boolean = |k: &str| body::boolean(obj, k);
    let map = |k: &str| body::string_map(obj, k);
    let name = string("Name")?;
    if name.is_empty() {
        return Err(ApiError::bad_request("network name must be given"));
    }
    for refused in ["Ingress", "ConfigOnly"] {
        if boolean(refused)? {
            return Err(ApiError::bad_request(format!(
                "berth does not support {refused} networks: they belong to swarm"
            )));
        }
    }
    if obj
        .get("ConfigFrom")
        .and_then(|c| c.get("Network"))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request(
            "berth does not support --config-from: networks are configured where they are created",
        ));
    }
    let mut req = CreateNetwork {
        name,
        driver: string("Driver")?,
        internal: boolean("Internal")?,
        attachable: boolean("Attachable")?,
        enable_ipv6: boolean("EnableIPv6")?,
        labels: map("Labels")?,
        options: map("Options")?,
        ..CreateNetwork::default()
    };
    if let Some(ipam) = obj.get("IPAM").filter(|v| !v.is_null()) {
        let driver = ipam["Driver"].as_str().unwrap_or("");
        if !driver.is_empty() && driver != "default" {
            return Err(ApiError::bad_request(format!(
                "berth does not support the IPAM driver {driver:?}: networks take berth's default"
            )));
        }
        if ipam["Options"].as_object().is_some_and(|o| !o.is_empty()) {
            return Err(ApiError::bad_request("berth does not support IPAM options"));
        }
        let configs = ipam["Config"].as_array().cloned().unwrap_or_default();
        if configs.len() > 1 {
            return Err(ApiError::bad_request("berth networks take one IPv4 subnet"));
        }
        if let Some(c) = configs.first() {
            let field = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(String::from);
            if c["AuxiliaryAddresses"]
                .as_object()
                .is_some_and(|o| !o.is_empty())
            {
                return Err(ApiError::bad_request(
                    "berth does not support --aux-address",
                ));
            }
            req.subnet = field("Subnet");
            req.gateway = field("Gateway");
            req.ip_range = field("IPRange");
        }
    }
    let r = state.engine.networks.create(req).await?;
    json(StatusCode::CREATED, &json!({ "Id": r.id, "Warning": "" }))
}

async fn prune(state: &Arc<State>, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    let mut deleted = vec![];
    for r in state.engine.networks.list() {
        if r.predefined() || !state.engine.networks.endpoints_of(&r.id).is_empty() {
            continue;
        }
        if !state.engine.containers.on_network(&r.id).await.is_empty() {
            continue;
        }
        let mut keep = false;
        for (key, values) in &filters {
            match key.as_str() {
                "label" => keep |= !values.iter().all(|v| body::label_matches(&r.labels, v)),
                "label!" => keep |= values.iter().any(|v| body::label_matches(&r.labels, v)),
                "until" => {
                    for v in values {
                        let until = engine::time::parse_api_time(v).ok_or_else(|| {
                            ApiError::bad_request(format!("invalid filter 'until={v}'"))
                        })?;
                        keep |= r.created > until;
                    }
                }
                other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
            }
        }
        if keep {
            continue;
        }
        if state.engine.networks.remove(&r.id).await.is_ok() {
            deleted.push(r.name.clone());
        }
    }
    json(StatusCode::OK, &json!({ "NetworksDeleted": deleted }))
}

/// A container's `NetworkSettings`, as `docker inspect` shows it.
pub fn network_settings(r: &Record) -> Value {
    let mut networks = serde_json::Map::new();
    for (name, s) in &r.networks {
        networks.insert(
            name.clone(),
            json!({
                "IPAMConfig": s.ipv4_address.as_ref().map(|a| json!({ "IPv4Address": a })),
                "Links": null,
                "Aliases": if s.aliases.is_empty() { Value::Null } else { json!(s.aliases) },
                "NetworkID": s.network_id,
                "EndpointID": s.endpoint_id,
                "Gateway": s.gateway,
                "IPAddress": s.ip_address,
                "IPPrefixLen": s.ip_prefix_len,
                "IPv6Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "MacAddress": s.mac_address,
                "DriverOpts": null,
                "DNSNames": if s.ip_address.is_empty() { Value::Null } else {
                    let mut names = vec![r.name.clone()];
                    names.extend(s.aliases.iter().cloned());
                    names.push(r.id[..12].to_string());
                    json!(names)
                },
            }),
        );
    }
    if r.networks.is_empty() && r.host_config.network_mode == "none" {
        networks.insert(
            "none".into(),
            json!({
                "IPAMConfig": null, "Links": null, "Aliases": null, "NetworkID": "",
                "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "MacAddress": "", "DriverOpts": null,
            }),
        );
    }
    // The legacy top-level fields mirror the default bridge network's endpoint.
    let bridge = r.networks.get("bridge");
    let top =
        |f: fn(&engine::container::record::EndpointSettings) -> Value| bridge.map_or(json!(""), f);
    json!({
        "Bridge": "",
        "SandboxID": "",
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports_map(r),
        "SandboxKey": "",
        "SecondaryIPAddresses": null,
        "SecondaryIPv6Addresses": null,
        "EndpointID": top(|s| json!(s.endpoint_id)),
        "Gateway": top(|s| json!(s.gateway)),
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": top(|s| json!(s.ip_address)),
        "IPPrefixLen": bridge.map_or(0, |s| s.ip_prefix_len),
        "IPv6Gateway": "",
        "MacAddress": top(|s| json!(s.mac_address)),
        "Networks": networks,
    })
}

/// `NetworkSettings.Ports`: every exposed or published port, with its host bindings while
/// the container runs (null otherwise, as Docker shows an unpublished one).
pub fn ports_map(r: &Record) -> Value {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    if r.state.status != engine::container::record::Status::Running {
        return json!({});
    }
    for key in r.config.exposed_ports.keys() {
        out.insert(key.clone(), Value::Null);
    }
    for key in r.host_config.port_bindings.keys() {
        out.insert(key.clone(), Value::Null);
    }
    for p in &r.ports {
        let entry = out.entry(p.port.clone()).or_insert(Value::Null);
        if entry.is_null() {
            *entry = json!([]);
        }
        if let Some(list) = entry.as_array_mut() {
            list.push(json!({ "HostIp": p.host_ip, "HostPort": p.host_port.to_string() }));
        }
    }
    json!(out)
}

/// `HostConfig.PortBindings`, as asked.
pub fn port_bindings(r: &Record) -> Value {
    let map: BTreeMap<&String, Vec<Value>> = r
        .host_config
        .port_bindings
        .iter()
        .map(|(k, list)| {
            (
                k,
                list.iter()
                    .map(|b| json!({ "HostIp": b.host_ip, "HostPort": b.host_port }))
                    .collect(),
            )
        })
        .collect();
    json!(map)
}

/// The `Ports` of `docker ps`: published ports, then exposed ones without a binding.
pub fn ps_ports(r: &Record) -> Value {
    let mut out = vec![];
    let running = r.state.status == engine::container::record::Status::Running;
    let mut published = std::collections::HashSet::new();
    if running {
        for p in &r.ports {
            let (port, proto) = p.port.split_once('/').unwrap_or((&p.port, "tcp"));
            published.insert(p.port.clone());
            out.push(json!({
                "IP": p.host_ip,
                "PrivatePort": port.parse::<u16>().unwrap_or(0),
                "PublicPort": p.host_port,
                "Type": proto,
            }));
        }
    }
    for key in r.config.exposed_ports.keys() {
        if published.contains(key) {
            continue;
        }
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        out.push(json!({ "PrivatePort": port.parse::<u16>().unwrap_or(0), "Type": proto }));
    }
    json!(out)
}

/// The `NetworkSettings` of `docker ps`.
pub fn ps_networks(r: &Record) -> Value {
    let full = network_settings(r);
    json!({ "Networks": full["Networks"] })
}
