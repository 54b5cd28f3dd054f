//! `GET /containers/{id}/top` and `GET /containers/{id}/stats`: the engine's process table
//! and figures in Docker's shapes (`ContainerTopOKBody`, `StatsResponse`).
//!
//! Stats are sampled once a second; each sample carries the previous one's CPU figures as
//! `precpu_stats`, from which the CLI computes CPU %. `stream=false` answers one sample
//! after taking two a second apart, as dockerd does, unless `one-shot=true` asks for the
//! first alone (no `precpu_stats`). A stream ends when the container stops, and at once
//! when the client goes away: the task waits on the client as on the next tick. The VMM's
//! own cost is in a `berth` object, which Docker's clients ignore.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use engine::container::stats::StatsSample;
use engine::time::{rfc3339, ZERO_TIME};

use crate::http::{channel_body, json, ApiError, ApiResult, Query};
use crate::router::State;

/// Time between two samples (dockerd's collector interval).
const INTERVAL: Duration = Duration::from_secs(1);

pub async fn top(state: &Arc<State>, id: &str, q: &Query) -> ApiResult {
    let ps_args = q.get("ps_args").unwrap_or("");
    let top = state.engine.containers.top(id, ps_args).await?;
    json(
        StatusCode::OK,
        &json!({ "Titles": top.titles, "Processes": top.processes }),
    )
}

/// Docker's `BoolValueOrDefault`: absent or empty is the default; `0`, `no`, `false` and
/// `none` are false; anything else true.
fn bool_or(q: &Query, key: &str, default: bool) -> bool {
    match q.get(key) {
        None | Some("") => default,
        Some(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "no" | "false" | "none"
        ),
    }
}

pub async fn stats(state: &Arc<State>, id: &str, q: &Query) -> ApiResult {
    let stream = bool_or(q, "stream", true);
    let one_shot = bool_or(q, "one-shot", false);
    if stream && one_shot {
        return Err(ApiError::bad_request(
            "cannot have stream=true and one-shot=true",
        ));
    }
    let c = state.engine.containers.get(id).await?;
    let name = format!("/{}", c.record().await.name);
    let id = c.id.clone();
    let containers = &state.engine.containers;
    if !stream {
        let first = containers.stats(&c).await?;
        let answer = match first {
            Some(first) if !one_shot => {
                tokio::time::sleep(INTERVAL).await;
                match containers.stats(&c).await? {
                    Some(second) => docker_stats(&name, &id, Some(&second), Some(&first)),
                    None => docker_stats(&name, &id, None, None),
                }
            }
            first => docker_stats(&name, &id, first.as_ref(), None),
        };
        return json(StatusCode::OK, &answer);
    }
    let (body, tx) = channel_body();
    let state = state.clone();
    tokio::spawn(async move {
        let mut prev: Option<StatsSample> = None;
        let mut lifecycle = c.lifecycle();
        loop {
            let sample = tokio::select! {
                _ = tx.closed() => return gone(&id),
                s = state.engine.containers.stats(&c) => s,
            };
            let sample = match sample {
                Ok(s) => s,
                Err(e) => {
                    log::info!("container {id}: stats stream ends: {e}");
                    return;
                }
            };
            let line = docker_stats(&name, &id, sample.as_ref(), prev.as_ref());
            // A stopped container gets one empty sample, as from dockerd, and the end.
            if sample.is_none() && prev.is_some() {
                return;
            }
            let frame = Frame::data(Bytes::from(format!("{line}\n")));
            if tx.send(Ok(frame)).await.is_err() {
                return gone(&id);
            }
            let Some(sample) = sample else { return };
            prev = Some(sample);
            tokio::select! {
                _ = tx.closed() => return gone(&id),
                _ = tokio::time::sleep(INTERVAL) => {}
                // Stopping ends the stream now, not a tick later.
                _ = lifecycle.wait_for(|l| !l.running) => return,
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The end of a stream whose client went away (the end-to-end test reads this line).
fn gone(id: &str) {
    log::debug!("container {id}: stats stream ended: the client went away");
}

fn cpu_stats(s: Option<&StatsSample>) -> Value {
    let Some(s) = s else {
        return json!({
            "cpu_usage": { "total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0 },
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        });
    };
    let cpu = &s.guest.cpu;
    json!({
        "cpu_usage": {
            "total_usage": cpu.container_user_ns.saturating_add(cpu.container_system_ns),
            "usage_in_kernelmode": cpu.container_system_ns,
            "usage_in_usermode": cpu.container_user_ns,
        },
        "system_cpu_usage": cpu.vm_total_ns,
        "online_cpus": cpu.online_cpus,
        "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
    })
}

/// Docker's `StatsResponse` for `cur` (none: the empty sample of a stopped container),
/// with `prev`'s CPU figures as `precpu_stats`.
pub fn docker_stats(
    name: &str,
    id: &str,
    cur: Option<&StatsSample>,
    prev: Option<&StatsSample>,
) -> Value {
    let blkio = json!({
        "io_service_bytes_recursive": null,
        "io_serviced_recursive": null,
        "io_queue_recursive": null,
        "io_service_time_recursive": null,
        "io_wait_time_recursive": null,
        "io_merged_recursive": null,
        "io_time_recursive": null,
        "sectors_recursive": null,
    });
    let mut v = json!({
        "name": name,
        "id": id,
        "read": cur.map_or_else(|| ZERO_TIME.to_owned(), |s| rfc3339(s.read)),
        "preread": prev.map_or_else(|| ZERO_TIME.to_owned(), |s| rfc3339(s.read)),
        "pids_stats": {},
        "blkio_stats": blkio,
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_stats(cur),
        "precpu_stats": cpu_stats(prev),
        "memory_stats": {},
    });
    let Some(s) = cur else {
        return v;
    };
    let m = &s.guest.memory;
    let stats = json!({
        "active_anon": m.active_anon,
        "active_file": m.active_file,
        "anon": m.anon,
        "file": m.cached.saturating_add(m.buffers),
        "file_mapped": m.mapped,
        "inactive_anon": m.inactive_anon,
        "inactive_file": m.inactive_file,
        "kernel_stack": m.kernel_stack,
        "pagetables": m.page_tables,
        "pgfault": m.pgfault,
        "pgmajfault": m.pgmajfault,
        "shmem": m.shmem,
        "slab": m.slab_reclaimable.saturating_add(m.slab_unreclaimable),
        "slab_reclaimable": m.slab_reclaimable,
        "slab_unreclaimable": m.slab_unreclaimable,
    });
    v["pids_stats"] = json!({ "current": s.guest.pids });
    v["memory_stats"] = json!({
        // What the guest kernel uses of what it manages, page cache included, as a
        // cgroup's usage includes it; the CLI takes inactive_file off.
        "usage": m.total.saturating_sub(m.free),
        "stats": stats,
        "limit": s.memory_limit_bytes,
    });
    let networks: Map<String, Value> = s
        .guest
        .networks
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                json!({
                    "rx_bytes": n.rx_bytes,
                    "rx_packets": n.rx_packets,
                    "rx_errors": n.rx_errors,
                    "rx_dropped": n.rx_dropped,
                    "tx_bytes": n.tx_bytes,
                    "tx_packets": n.tx_packets,
                    "tx_errors": n.tx_errors,
                    "tx_dropped": n.tx_dropped,
                }),
            )
        })
        .collect();
    if !networks.is_empty() {
        v["networks"] = Value::Object(networks);
    }
    let vmm = s.vmm.map_or(Value::Null, |f| {
        json!({
            "pid": f.pid,
            "private_memory_bytes": f.private_memory_bytes,
            "pss_bytes": f.pss_bytes,
            "cpu_time_ns": f.cpu_time_ns,
        })
    });
    v["berth"] = json!({
        "vm": {
            "cpu_busy_ns": s.guest.cpu.vm_busy_ns,
            "memory_total_bytes": m.total,
            "memory_available_bytes": m.available,
        },
        "vmm": vmm,
    });
    v
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use engine::container::stats::{
        CpuFigures, GuestStats, InterfaceCounters, MemoryFigures, VmmFigures,
    };

    use super::*;

    fn sample(container_ns: u64, total_ns: u64) -> StatsSample {
        StatsSample {
            read: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            guest: GuestStats {
                cpu: CpuFigures {
                    container_user_ns: container_ns * 3 / 4,
                    container_system_ns: container_ns / 4,
                    vm_total_ns: total_ns,
                    vm_busy_ns: container_ns,
                    online_cpus: 2,
                },
                memory: MemoryFigures {
                    total: 240 << 20,
                    free: 200 << 20,
                    available: 220 << 20,
                    inactive_file: 10 << 20,
                    ..Default::default()
                },
                pids: 3,
                networks: vec![InterfaceCounters {
                    name: "eth0".into(),
                    rx_bytes: 1000,
                    tx_bytes: 500,
                    ..Default::default()
                }],
            },
            memory_limit_bytes: 256 << 20,
            vmm: Some(VmmFigures {
                pid: 42,
                private_memory_bytes: 30 << 20,
                pss_bytes: 31 << 20,
                cpu_time_ns: 7,
            }),
        }
    }

    /// A number as Go decodes it: absent is 0.
    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap_or(0.0)
    }

    /// docker/cli's `calculateCPUPercentUnix` over one answer.
    fn cli_cpu_percent(v: &Value) -> f64 {
        let cpu_delta = f(&v["cpu_stats"]["cpu_usage"]["total_usage"])
            - f(&v["precpu_stats"]["cpu_usage"]["total_usage"]);
        let system_delta = f(&v["cpu_stats"]["system_cpu_usage"])
            - v["precpu_stats"]["system_cpu_usage"]
                .as_f64()
                .unwrap_or(0.0);
        let online = f(&v["cpu_stats"]["online_cpus"]);
        if system_delta > 0.0 && cpu_delta > 0.0 {
            cpu_delta / system_delta * online * 100.0
        } else {
            0.0
        }
    }

    /// docker/cli's `calculateMemUsageUnixNoCache` and `calculateMemPercentUnixNoCache`.
    fn cli_memory(v: &Value) -> (f64, f64, f64) {
        let usage = f(&v["memory_stats"]["usage"]);
        let inactive = f(&v["memory_stats"]["stats"]["inactive_file"]);
        let used = if inactive < usage {
            usage - inactive
        } else {
            usage
        };
        let limit = f(&v["memory_stats"]["limit"]);
        (used, limit, used / limit * 100.0)
    }

    #[test]
    fn the_clis_figures_come_out_right() {
        // Two vCPUs, one second apart: 2 s of VM time, of which the container used 1 s.
        let prev = sample(5_000_000_000, 100_000_000_000);
        let cur = sample(6_000_000_000, 102_000_000_000);
        let v = docker_stats("/c", "abc", Some(&cur), Some(&prev));
        assert!((cli_cpu_percent(&v) - 100.0).abs() < 1e-9, "{v}");
        assert_eq!(
            v["cpu_stats"]["cpu_usage"]["usage_in_usermode"],
            4_500_000_000u64
        );
        let (used, limit, pct) = cli_memory(&v);
        assert_eq!(used, (30 << 20) as f64);
        assert_eq!(limit, (256 << 20) as f64);
        assert!((pct - 11.71875).abs() < 1e-9);
        assert_eq!(v["networks"]["eth0"]["rx_bytes"], 1000);
        assert_eq!(v["pids_stats"]["current"], 3);
        assert_eq!(v["berth"]["vmm"]["private_memory_bytes"], 30u64 << 20);
        assert_eq!(v["name"], "/c");
        assert_ne!(v["preread"], ZERO_TIME);
        // The first sample of a stream has no previous one (zeros, as from dockerd): the
        // CLI shows the container's share of the VM's time since it booted.
        let v = docker_stats("/c", "abc", Some(&cur), None);
        let since_boot = 6.0 / 102.0 * 2.0 * 100.0;
        assert!((cli_cpu_percent(&v) - since_boot).abs() < 1e-9);
        assert_eq!(v["preread"], ZERO_TIME);
    }

    #[test]
    fn a_stopped_container_has_dockers_empty_sample() {
        let v = docker_stats("/c", "abc", None, None);
        assert_eq!(v["read"], ZERO_TIME);
        assert_eq!(v["memory_stats"], json!({}));
        assert_eq!(v["cpu_stats"]["cpu_usage"]["total_usage"], 0);
        assert!(v.get("networks").is_none() && v.get("berth").is_none());
        assert_eq!(cli_cpu_percent(&v), 0.0);
    }

    #[test]
    fn dockers_booleans() {
        let q = Query::parse(Some("stream=0&one-shot=1&a=no&b=False&c=yes&d="));
        assert!(!bool_or(&q, "stream", true));
        assert!(bool_or(&q, "one-shot", false));
        assert!(!bool_or(&q, "a", true));
        assert!(!bool_or(&q, "b", true));
        assert!(bool_or(&q, "c", false));
        assert!(bool_or(&q, "d", true));
        assert!(bool_or(&q, "absent", true));
    }
}
