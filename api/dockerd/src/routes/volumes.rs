//! The volume endpoints: list, inspect, create, remove, prune, in Docker's shapes and
//! wording (the store and its rules are the engine's: engine::volume and the containers'
//! side of it).

use std::collections::HashMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use engine::volume::{CreateVolume, Volume};

use super::body;
use crate::http::{json, json_body, status, ApiError, ApiResult, Query};
use crate::router::{not_found, State, Version};

pub async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
    version: Version,
) -> ApiResult {
    let q = Query::parse(req.uri().query());
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(crate::http::percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["volumes"]) => list(state, &q).await,
        (Method::POST, ["volumes", "create"]) => create(state, req).await,
        (Method::POST, ["volumes", "prune"]) => prune(state, &q, version).await,
        (Method::GET, ["volumes", name]) => {
            let v = state.engine.containers.volume_store().get(name)?;
            json(StatusCode::OK, &volume_json(&v))
        }
        (Method::DELETE, ["volumes", name]) => {
            state
                .engine
                .containers
                .remove_volume(name, q.flag("force"))
                .await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        _ => Err(not_found()),
    }
}

/// A volume in Docker's shape.
pub fn volume_json(v: &Volume) -> Value {
    json!({
        "CreatedAt": engine::time::rfc3339(v.record.created),
        "Driver": engine::volume::LOCAL,
        "Labels": v.record.labels,
        "Mountpoint": v.mountpoint.to_string_lossy(),
        "Name": v.record.name,
        "Options": {},
        "Scope": "local",
    })
}

fn bool_filter(key: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!("invalid filter '{key}={v}'"))),
    }
}

/// Whether `v` passes `docker volume ls`'s filters (name by substring, driver, label,
/// label!, dangling).
fn matches(
    v: &Volume,
    used: bool,
    filters: &HashMap<String, Vec<String>>,
) -> Result<bool, ApiError> {
    for (key, values) in filters {
        let ok = match key.as_str() {
            "name" => values.iter().any(|f| v.record.name.contains(f.as_str())),
            "driver" => values.iter().any(|f| f == engine::volume::LOCAL),
            "label" => values
                .iter()
                .all(|f| body::label_matches(&v.record.labels, f)),
            "label!" => !values
                .iter()
                .any(|f| body::label_matches(&v.record.labels, f)),
            "dangling" => {
                let mut any = false;
                for f in values {
                    any |= bool_filter(key, f)? != used;
                }
                any
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
    let users = state.engine.containers.volume_users().await;
    let mut out = vec![];
    for v in state.engine.containers.volume_store().list() {
        if matches(&v, users.contains_key(&v.record.name), &filters)? {
            out.push(volume_json(&v));
        }
    }
    json(StatusCode::OK, &json!({ "Volumes": out, "Warnings": null }))
}

async fn create(state: &Arc<State>, req: Request<Incoming>) -> ApiResult {
    let body: Value = json_body(req.into_body()).await?;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let string = |k: &str| body::string(obj, k);
    let map = |k: &str| body::string_map(obj, k);
    if obj
        .get("ClusterVolumeSpec")
        .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(ApiError::bad_request(
            "berth does not support cluster volumes: they belong to swarm",
        ));
    }
    let v = state
        .engine
        .containers
        .create_volume(CreateVolume {
            name: string("Name")?,
            driver: string("Driver")?,
            driver_opts: map("DriverOpts")?,
            labels: map("Labels")?,
        })
        .await?;
    json(StatusCode::CREATED, &volume_json(&v))
}

/// `docker volume prune`: unused anonymous volumes, or every unused one with `all=true` and
/// under API versions before 1.42 (which prune every unused volume, as dockerd does).
async fn prune(state: &Arc<State>, q: &Query, version: Version) -> ApiResult {
    let filters = q.filters()?;
    let mut all = version < Version(1, 42);
    let mut label: Vec<String> = vec![];
    let mut not_label: Vec<String> = vec![];
    for (key, values) in &filters {
        match key.as_str() {
            "all" => {
                for v in values {
                    all = bool_filter(key, v)?;
                }
            }
            "label" => label.extend(values.iter().cloned()),
            "label!" => not_label.extend(values.iter().cloned()),
            other => return Err(ApiError::bad_request(format!("invalid filter '{other}'"))),
        }
    }
    let pruned = state
        .engine
        .containers
        .prune_volumes(all, |v| {
            !label
                .iter()
                .all(|f| body::label_matches(&v.record.labels, f))
                || not_label
                    .iter()
                    .any(|f| body::label_matches(&v.record.labels, f))
        })
        .await?;
    json(
        StatusCode::OK,
        &json!({ "VolumesDeleted": pruned.names, "SpaceReclaimed": pruned.bytes }),
    )
}
