//! The shape of a `POST /containers/create` body, checked the way dockerd's decoder checks
//! it before berth reads a single option.
//!
//! dockerd decodes the body into typed Go structs: a field of the wrong type is a 400, a
//! field it does not know is ignored (clients send fields of newer API versions), and keys
//! match field names case-insensitively. berth must agree on all three: were it to ignore a
//! wrongly typed `HostConfig`, a `Binds` inside it would slip past the refusal of what berth
//! does not do; were it to ignore `binds`, a user of dockerd would lose a mount silently.
//!
//! [`canonical`] returns the body rebuilt from the fields Docker knows, under their canonical
//! names, each of the right type; [`super::spec`] then reads options from that alone. The
//! walk follows the schema below, so its depth is the schema's (five levels), never the
//! client's.

use serde_json::{Map, Value};

use crate::{EngineError, Result};

/// The JSON type of a field, as Go's decoder accepts it. `null` is accepted for every type
/// (Go leaves the field at its zero value).
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    Bool,
    /// Go's `int`, `int64`: a JSON integer.
    Int,
    /// `uint16` (blkio weights).
    U16,
    /// `uint`, `uint64`.
    Uint,
    /// `strslice.StrSlice`: a string or a list of strings.
    StrSlice,
    List(&'static Ty),
    /// An object with any keys, each value of the given type.
    Map(&'static Ty),
    /// A struct: known fields are checked, others dropped.
    Obj(&'static [(&'static str, Ty)]),
    /// `[2]uint`: a list whose first two items count.
    Pair(&'static Ty),
    /// A struct berth refuses whenever it is set: any object.
    Opaque,
}

use Ty::*;

const STRINGS: Ty = List(&Str);
const EMPTY: Ty = Obj(&[]);

const HEALTH: &[(&str, Ty)] = &[
    ("Test", STRINGS),
    ("Interval", Int),
    ("Timeout", Int),
    ("StartPeriod", Int),
    ("StartInterval", Int),
    ("Retries", Int),
];

const LOG_CONFIG: &[(&str, Ty)] = &[("Type", Str), ("Config", Map(&Str))];

const RESTART_POLICY: &[(&str, Ty)] = &[("Name", Str), ("MaximumRetryCount", Int)];

const PORT_BINDING: &[(&str, Ty)] = &[("HostIp", Str), ("HostPort", Str)];

const WEIGHT_DEVICE: &[(&str, Ty)] = &[("Path", Str), ("Weight", U16)];

const THROTTLE_DEVICE: &[(&str, Ty)] = &[("Path", Str), ("Rate", Uint)];

const DEVICE_MAPPING: &[(&str, Ty)] = &[
    ("PathOnHost", Str),
    ("PathInContainer", Str),
    ("CgroupPermissions", Str),
];

const DEVICE_REQUEST: &[(&str, Ty)] = &[
    ("Driver", Str),
    ("Count", Int),
    ("DeviceIDs", STRINGS),
    ("Capabilities", List(&STRINGS)),
    ("Options", Map(&Str)),
];

const ULIMIT: &[(&str, Ty)] = &[("Name", Str), ("Hard", Int), ("Soft", Int)];

const HOST_CONFIG: &[(&str, Ty)] = &[
    ("Binds", STRINGS),
    ("ContainerIDFile", Str),
    ("LogConfig", Obj(LOG_CONFIG)),
    ("NetworkMode", Str),
    ("PortBindings", Map(&List(&Obj(PORT_BINDING)))),
    ("RestartPolicy", Obj(RESTART_POLICY)),
    ("AutoRemove", Bool),
    ("VolumeDriver", Str),
    ("VolumesFrom", STRINGS),
    ("ConsoleSize", Pair(&Uint)),
    ("Annotations", Map(&Str)),
    ("CapAdd", StrSlice),
    ("CapDrop", StrSlice),
    ("CgroupnsMode", Str),
    ("Dns", STRINGS),
    ("DnsOptions", STRINGS),
    ("DnsSearch", STRINGS),
    ("ExtraHosts", STRINGS),
    ("GroupAdd", STRINGS),
    ("IpcMode", Str),
    ("Cgroup", Str),
    ("Links", STRINGS),
    ("OomScoreAdj", Int),
    ("PidMode", Str),
    ("Privileged", Bool),
    ("PublishAllPorts", Bool),
    ("ReadonlyRootfs", Bool),
    ("SecurityOpt", STRINGS),
    ("StorageOpt", Map(&Str)),
    ("Tmpfs", Map(&Str)),
    ("UTSMode", Str),
    ("UsernsMode", Str),
    ("ShmSize", Int),
    ("Sysctls", Map(&Str)),
    ("Runtime", Str),
    ("Isolation", Str),
    // Resources, embedded.
    ("CpuShares", Int),
    ("Memory", Int),
    ("NanoCpus", Int),
    ("CgroupParent", Str),
    ("BlkioWeight", U16),
    ("BlkioWeightDevice", List(&Obj(WEIGHT_DEVICE))),
    ("BlkioDeviceReadBps", List(&Obj(THROTTLE_DEVICE))),
    ("BlkioDeviceWriteBps", List(&Obj(THROTTLE_DEVICE))),
    ("BlkioDeviceReadIOps", List(&Obj(THROTTLE_DEVICE))),
    ("BlkioDeviceWriteIOps", List(&Obj(THROTTLE_DEVICE))),
    ("CpuPeriod", Int),
    ("CpuQuota", Int),
    ("CpuRealtimePeriod", Int),
    ("CpuRealtimeRuntime", Int),
    ("CpusetCpus", Str),
    ("CpusetMems", Str),
    ("Devices", List(&Obj(DEVICE_MAPPING))),
    ("DeviceCgroupRules", STRINGS),
    ("DeviceRequests", List(&Obj(DEVICE_REQUEST))),
    ("KernelMemory", Int),
    ("KernelMemoryTCP", Int),
    ("MemoryReservation", Int),
    ("MemorySwap", Int),
    ("MemorySwappiness", Int),
    ("OomKillDisable", Bool),
    ("PidsLimit", Int),
    ("Ulimits", List(&Obj(ULIMIT))),
    ("CpuCount", Int),
    ("CpuPercent", Int),
    ("IOMaximumIOps", Uint),
    ("IOMaximumBandwidth", Uint),
    // After Resources.
    ("Mounts", List(&Opaque)),
    ("MaskedPaths", STRINGS),
    ("ReadonlyPaths", STRINGS),
    ("Init", Bool),
];

const ENDPOINT_IPAM: &[(&str, Ty)] = &[
    ("IPv4Address", Str),
    ("IPv6Address", Str),
    ("LinkLocalIPs", STRINGS),
];

const ENDPOINT: &[(&str, Ty)] = &[
    ("IPAMConfig", Obj(ENDPOINT_IPAM)),
    ("Links", STRINGS),
    ("Aliases", STRINGS),
    ("DriverOpts", Map(&Str)),
    ("GwPriority", Int),
    ("NetworkID", Str),
    ("EndpointID", Str),
    ("Gateway", Str),
    ("IPAddress", Str),
    ("MacAddress", Str),
    ("IPPrefixLen", Int),
    ("IPv6Gateway", Str),
    ("GlobalIPv6Address", Str),
    ("GlobalIPv6PrefixLen", Int),
    ("DNSNames", STRINGS),
];

const NETWORKING_CONFIG: &[(&str, Ty)] = &[("EndpointsConfig", Map(&Obj(ENDPOINT)))];

/// The body: `container.Config` with `HostConfig` and `NetworkingConfig` beside its fields.
const BODY: &[(&str, Ty)] = &[
    ("Hostname", Str),
    ("Domainname", Str),
    ("User", Str),
    ("AttachStdin", Bool),
    ("AttachStdout", Bool),
    ("AttachStderr", Bool),
    ("ExposedPorts", Map(&EMPTY)),
    ("Tty", Bool),
    ("OpenStdin", Bool),
    ("StdinOnce", Bool),
    ("Env", STRINGS),
    ("Cmd", StrSlice),
    ("Healthcheck", Obj(HEALTH)),
    ("ArgsEscaped", Bool),
    ("Image", Str),
    ("Volumes", Map(&EMPTY)),
    ("WorkingDir", Str),
    ("Entrypoint", StrSlice),
    ("NetworkDisabled", Bool),
    ("MacAddress", Str),
    ("OnBuild", STRINGS),
    ("Labels", Map(&Str)),
    ("StopSignal", Str),
    ("StopTimeout", Int),
    ("Shell", StrSlice),
    ("HostConfig", Obj(HOST_CONFIG)),
    ("NetworkingConfig", Obj(NETWORKING_CONFIG)),
];

/// Go's case folding of a key, for the ASCII field names above: `ſ` and the Kelvin sign
/// fold to `s` and `k` as they do in Go; any other non-ASCII character matches no field.
fn fold(key: &str) -> Option<String> {
    key.chars()
        .map(|c| match c {
            '\u{17f}' => Some('s'),
            '\u{212a}' => Some('k'),
            c if c.is_ascii() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn expected(ty: Ty) -> &'static str {
    match ty {
        Str => "a string",
        Bool => "a boolean",
        Int => "an integer",
        U16 => "an integer from 0 to 65535",
        Uint => "a non-negative integer",
        StrSlice => "a string or a list of strings",
        List(_) | Pair(_) => "a list",
        Map(_) | Obj(_) | Opaque => "an object",
    }
}

fn wrong(path: &str, ty: Ty, v: &Value) -> EngineError {
    EngineError::InvalidArgument(format!(
        "invalid request: {path} must be {}, not {}",
        expected(ty),
        kind(v)
    ))
}

/// `v` checked against `ty` at `path`, rebuilt from the fields `ty` knows.
fn check(path: &str, ty: Ty, v: &Value) -> Result<Value> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let ok = match (ty, v) {
        (Str, Value::String(_)) | (Bool, Value::Bool(_)) | (Opaque, Value::Object(_)) => true,
        (Int, Value::Number(n)) => n.is_i64(),
        (Uint, Value::Number(n)) => n.is_u64(),
        (U16, Value::Number(n)) => n.as_u64().is_some_and(|n| n <= u64::from(u16::MAX)),
        (StrSlice, Value::String(_)) => true,
        (StrSlice, Value::Array(_)) => return check(path, STRINGS, v),
        (List(item), Value::Array(items)) => {
            return items
                .iter()
                .enumerate()
                .map(|(i, x)| list_item(&format!("{path}[{i}]"), *item, x))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        (Pair(item), Value::Array(items)) => {
            return items
                .iter()
                .take(2)
                .enumerate()
                .map(|(i, x)| check(&format!("{path}[{i}]"), *item, x))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        (Map(item), Value::Object(o)) => {
            return o
                .iter()
                .map(|(k, x)| Ok((k.clone(), check(&format!("{path}[{k:?}]"), *item, x)?)))
                .collect::<Result<Map<_, _>>>()
                .map(Value::Object)
        }
        (Obj(fields), Value::Object(o)) => return object(path, fields, o).map(Value::Object),
        _ => false,
    };
    if ok {
        Ok(v.clone())
    } else {
        Err(wrong(path, ty, v))
    }
}

/// A list item; `null` in a list of strings is an empty string, as Go decodes it.
fn list_item(path: &str, ty: Ty, v: &Value) -> Result<Value> {
    match (ty, v) {
        (Str, Value::Null) => Ok(Value::String(String::new())),
        _ => check(path, ty, v),
    }
}

fn object(path: &str, fields: &[(&str, Ty)], o: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (key, v) in o {
        let found = fields.iter().find(|(name, _)| *name == key).or_else(|| {
            let folded = fold(key)?;
            fields
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&folded))
        });
        // Fields Docker does not know are ignored, as dockerd ignores them.
        let Some((name, ty)) = found else { continue };
        let field_path = if path.is_empty() {
            (*name).to_string()
        } else {
            format!("{path}.{name}")
        };
        let value = check(&field_path, *ty, v)?;
        if out.insert((*name).to_string(), value).is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "invalid request: {field_path} is given more than once (field names match whatever their case)"
            )));
        }
    }
    Ok(out)
}

/// The create request `body` rebuilt from the fields Docker knows, under their canonical
/// names; a field of the wrong type is an error naming it.
pub fn canonical(body: &Value) -> Result<Value> {
    match body {
        Value::Object(o) => object("", BODY, o).map(Value::Object),
        other => Err(EngineError::InvalidArgument(format!(
            "invalid request: the body must be a JSON object, not {}",
            kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Value) -> String {
        canonical(&body).unwrap_err().to_string()
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (body, field) in [
            (
                json!({"HostConfig": []}),
                "HostConfig must be an object, not a list",
            ),
            (json!({"HostConfig": "x"}), "HostConfig must be an object"),
            (
                json!({"HostConfig": {"RestartPolicy": "always"}}),
                "HostConfig.RestartPolicy must be an object",
            ),
            (
                json!({"HostConfig": {"LogConfig": "none"}}),
                "HostConfig.LogConfig",
            ),
            (
                json!({"HostConfig": {"Init": "true"}}),
                "HostConfig.Init must be a boolean, not a string",
            ),
            (
                json!({"ExposedPorts": ["80/tcp"]}),
                "ExposedPorts must be an object",
            ),
            (
                json!({"ExposedPorts": {"80/tcp": 1}}),
                "ExposedPorts[\"80/tcp\"]",
            ),
            (json!({"NetworkingConfig": []}), "NetworkingConfig"),
            (
                json!({"NetworkingConfig": {"EndpointsConfig": ["a"]}}),
                "NetworkingConfig.EndpointsConfig must be an object",
            ),
            (
                json!({"NetworkingConfig": {"EndpointsConfig": {"n": {"Aliases": "a"}}}}),
                "NetworkingConfig.EndpointsConfig[\"n\"].Aliases must be a list",
            ),
            (json!({"Env": ["A=1", 2]}), "Env[1] must be a string"),
            (
                json!({"Cmd": 1}),
                "Cmd must be a string or a list of strings",
            ),
            (
                json!({"StopTimeout": 1.5}),
                "StopTimeout must be an integer, not a fractional",
            ),
            (
                json!({"StopTimeout": "10"}),
                "StopTimeout must be an integer",
            ),
            (json!({"HostConfig": {"BlkioWeight": 70000}}), "BlkioWeight"),
            (
                json!({"HostConfig": {"ConsoleSize": [-1, 2]}}),
                "ConsoleSize[0]",
            ),
            (
                json!({"Labels": {"a": 1}}),
                "Labels[\"a\"] must be a string",
            ),
            (
                json!({"HostConfig": {"Mounts": [1]}}),
                "HostConfig.Mounts[0]",
            ),
            (json!([]), "the body must be a JSON object"),
        ] {
            let e = err(body.clone());
            assert!(e.contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_dropped_and_known_ones_kept_whatever_their_case() {
        let v = canonical(&json!({
            "image": "busybox",
            "FutureField": {"x": [1]},
            "hostconfig": {"BINDS": ["/a:/b"], "FutureOption": 3},
            // ſ folds to s and the Kelvin sign to k in Go's matching.
            "ſtopSignal": "TERM",
            "\u{212a}": 1,
            "Labels": {"a": "b"},
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "Image": "busybox",
                "HostConfig": {"Binds": ["/a:/b"]},
                "StopSignal": "TERM",
                "Labels": {"a": "b"},
            })
        );
    }

    #[test]
    fn a_field_given_twice_under_two_spellings_is_refused() {
        let e = err(json!({"HostConfig": {"Binds": [], "binds": ["/a:/b"]}}));
        assert!(
            e.contains("HostConfig.Binds is given more than once"),
            "{e}"
        );
    }

    #[test]
    fn null_is_every_types_zero_and_strslice_takes_a_string() {
        let v = canonical(&json!({
            "HostConfig": null, "Cmd": "echo hi", "Entrypoint": ["a", null],
            "ConsoleSize": [1, 2, 3],
        }))
        .unwrap();
        assert_eq!(v["HostConfig"], Value::Null);
        assert_eq!(v["Cmd"], json!("echo hi"));
        assert_eq!(v["Entrypoint"], json!(["a", ""]));
        let v = canonical(&json!({"HostConfig": {"ConsoleSize": [1, 2, 3]}})).unwrap();
        assert_eq!(v["HostConfig"]["ConsoleSize"], json!([1, 2]));
    }
}
