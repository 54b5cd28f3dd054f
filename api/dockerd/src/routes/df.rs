//! `GET /system/df` (`docker system df`): the disk space images and containers take, as
//! dockerd reports it, volumes included. berth has no build cache yet: that list is empty.
//! Sizes are measured on the host's disk (unpacked layers, containers' writable layers), so
//! the walk runs on a blocking thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use engine::fsutil::tree_size;
use engine::image::ListOptions;
use engine::time::unix_secs;

use super::containers::{command_text, status_text};
use crate::http::{json, ApiError, ApiResult};
use crate::router::State;

pub async fn df(state: &Arc<State>) -> ApiResult {
    let images = state.engine.images.list(&ListOptions {
        all: true,
        filters: HashMap::new(),
    })?;
    let mut users: HashMap<String, i64> = HashMap::new();
    let mut containers = Vec::new();
    for c in state.engine.containers.all().await {
        let r = c.record().await;
        *users.entry(r.image_id.clone()).or_default() += 1;
        let (rw, root) = state.engine.containers.sizes(&r.id).await.unwrap_or((0, 0));
        containers.push(json!({
            "Id": r.id,
            "Names": [format!("/{}", r.name)],
            "Image": r.image,
            "ImageID": r.image_id,
            "Command": command_text(&r),
            "Created": unix_secs(r.created),
            "State": r.state.docker_status(),
            "Status": status_text(&r),
            "SizeRw": rw,
            "SizeRootFs": root,
            "Labels": r.config.labels,
            "Mounts": r.host_config.mounts.iter().map(|m| m.inspect()).collect::<Vec<_>>(),
        }));
    }
    let volume_users = state.engine.containers.volume_users().await;
    let store_volumes = state.engine.containers.volume_store().list();
    let sizes = {
        let dirs: Vec<PathBuf> = store_volumes.iter().map(|v| v.mountpoint.clone()).collect();
        tokio::task::spawn_blocking(move || dirs.iter().map(|d| tree_size(d)).collect::<Vec<u64>>())
            .await
            .map_err(|e| ApiError::from(engine::EngineError::internal("volume sizes", e)))?
    };
    let volumes: Vec<Value> = store_volumes
        .iter()
        .zip(sizes)
        .map(|(v, size)| {
            let mut j = super::volumes::volume_json(v);
            j["UsageData"] = json!({
                "Size": size,
                "RefCount": volume_users.get(&v.record.name).map_or(0, Vec::len),
            });
            j
        })
        .collect();
    // Layers are shared between images: each is measured once, and what more than one
    // image holds is each one's SharedSize.
    let layer_sets: Vec<Vec<PathBuf>> = images.iter().map(|d| d.layer_dirs.clone()).collect();
    let (layers_size, shared) = tokio::task::spawn_blocking(move || {
        let mut holders: HashMap<PathBuf, usize> = HashMap::new();
        for set in &layer_sets {
            let mut seen = std::collections::HashSet::new();
            for l in set {
                if seen.insert(l) {
                    *holders.entry(l.clone()).or_default() += 1;
                }
            }
        }
        let sizes: HashMap<PathBuf, u64> =
            holders.keys().map(|l| (l.clone(), tree_size(l))).collect();
        let total: u64 = sizes.values().sum();
        let shared: Vec<u64> = layer_sets
            .iter()
            .map(|set| {
                set.iter()
                    .filter(|l| holders.get(*l).is_some_and(|n| *n > 1))
                    .map(|l| sizes.get(l).copied().unwrap_or(0))
                    .sum()
            })
            .collect();
        (total, shared)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("system df: {e}")))?;
    let images: Vec<Value> = images
        .iter()
        .zip(shared)
        .map(|(d, shared)| {
            json!({
                "Containers": users.get(&d.id).copied().unwrap_or(0),
                "Created": d.created_unix,
                "Id": d.id,
                "Labels": d.config.config.as_ref().and_then(|c| c.labels.clone()),
                "ParentId": d.parent,
                "RepoDigests": d.repo_digests,
                "RepoTags": d.repo_tags,
                "SharedSize": shared,
                "Size": d.size,
                "VirtualSize": d.size,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "LayersSize": layers_size,
            "Images": images,
            "Containers": containers,
            "Volumes": volumes,
            "BuildCache": [],
        }),
    )
}
