//! `GET /events`: the engine's events as dockerd streams them, one JSON object per line,
//! with `since` (replayed from the engine's history), `until` (the stream ends then) and
//! dockerd's filters (`container`, `image`, `event`, `label`, `type`, `network`, `scope`,
//! `daemon`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use engine::events::{Event, Kind};
use engine::time::parse_api_time;

use crate::http::{channel_body, ApiError, ApiResult, Query};
use crate::router::State;

/// The filters dockerd takes for events.
const FILTERS: &[&str] = &[
    "container",
    "image",
    "event",
    "label",
    "type",
    "network",
    "scope",
    "daemon",
    "volume",
    "plugin",
    "node",
    "service",
    "secret",
    "config",
];

/// dockerd's JSON for one event.
pub fn to_json(e: &Event) -> Value {
    let time = e.time();
    let mut v = json!({
        "Type": e.kind.as_str(),
        "Action": e.action,
        "Actor": { "ID": e.id, "Attributes": e.attributes },
        "scope": "local",
        "time": time,
        "timeNano": e.time_nano as u64,
    });
    // The fields older clients read.
    match e.kind {
        Kind::Container => {
            v["status"] = json!(e.action);
            v["id"] = json!(e.id);
            v["from"] = json!(e.attributes.get("image").cloned().unwrap_or_default());
        }
        Kind::Image => {
            v["status"] = json!(e.action);
            v["id"] = json!(e.id);
        }
        Kind::Network | Kind::Volume => {}
    }
    v
}

fn strip_tag(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// Whether `e` passes `filters` (each key: any of its values; all keys).
pub fn matches(e: &Event, filters: &HashMap<String, Vec<String>>) -> bool {
    let any = |key: &str, f: &dyn Fn(&str) -> bool| -> bool {
        filters
            .get(key)
            .is_none_or(|values| values.iter().any(|v| f(v)))
    };
    let named = |kind: Kind| {
        move |v: &str| {
            e.kind == kind
                && (e.id.starts_with(v)
                    || e.attributes
                        .get("name")
                        .is_some_and(|n| n == v || n.strip_prefix('/') == Some(v)))
        }
    };
    any("event", &|v| e.action == v || e.base_action() == v)
        && any("type", &|v| e.kind.as_str() == v)
        && any("container", &named(Kind::Container))
        && any("network", &named(Kind::Network))
        && any("volume", &named(Kind::Volume))
        && any("image", &|v| {
            let attr = if e.kind == Kind::Image {
                "name"
            } else {
                "image"
            };
            let name = e.attributes.get(attr).map(String::as_str).unwrap_or("");
            let v = strip_tag(v);
            e.id == v || name == v || strip_tag(&e.id) == v || strip_tag(name) == v
        })
        && any("label", &|v| match v.split_once('=') {
            Some((k, val)) => e.attributes.get(k).is_some_and(|x| x == val),
            None => e.attributes.contains_key(v),
        })
        && any("scope", &|v| v == "local")
        && filters.get("daemon").is_none()
        && ["plugin", "node", "service", "secret", "config"]
            .iter()
            .all(|k| filters.get(*k).is_none())
}

fn parse_time(q: &Query, key: &str) -> Result<Option<SystemTime>, ApiError> {
    match q.get(key).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => parse_api_time(v)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

pub async fn events(state: &Arc<State>, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    for k in filters.keys() {
        if !FILTERS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    if let Some(types) = filters.get("type") {
        for t in types {
            if ![
                "container",
                "image",
                "network",
                "volume",
                "daemon",
                "plugin",
                "node",
                "service",
                "secret",
                "config",
                "builder",
            ]
            .contains(&t.as_str())
            {
                return Err(ApiError::bad_request(format!("invalid filter 'type={t}'")));
            }
        }
    }
    let since = parse_time(q, "since")?;
    let until = parse_time(q, "until")?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(ApiError::bad_request(
                "`since` time cannot be after `until` time",
            ));
        }
    }
    let (history, mut rx) = state.engine.events.subscribe();
    let (body, tx) = channel_body();
    let since_n = since.map(nanos);
    let until_n = until.map(nanos);
    tokio::spawn(async move {
        let send = |e: &Event| {
            let mut line = serde_json::to_vec(&to_json(e)).unwrap_or_default();
            line.push(b'\n');
            Frame::data(Bytes::from(line))
        };
        let in_window = |e: &Event| {
            since_n.is_none_or(|s| e.time_nano >= s) && until_n.is_none_or(|u| e.time_nano <= u)
        };
        // Without `since`, nothing from before the request is replayed (as dockerd).
        if since_n.is_some() {
            for e in history
                .iter()
                .filter(|e| in_window(e) && matches(e, &filters))
            {
                if tx.send(Ok(send(e))).await.is_err() {
                    return;
                }
            }
        }
        let deadline = until.map(|u| {
            let left = u
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            return;
        }
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                () = tx.closed() => return,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
            };
            let e = match next {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    log::warn!("an events client fell behind and lost {n} events");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if !in_window(&e) || !matches(&e, &filters) {
                continue;
            }
            if tx.send(Ok(send(&e))).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn event(kind: Kind, action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            time_nano: 1_700_000_000_123_456_789,
        }
    }

    fn f(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn filters_match_as_dockerd() {
        let start = event(
            Kind::Container,
            "start",
            "c0ffee00",
            &[
                ("name", "web"),
                ("image", "busybox:latest"),
                ("tier", "front"),
            ],
        );
        let exec = event(
            Kind::Container,
            "exec_start: sh -c date",
            "c0ffee00",
            &[("name", "web")],
        );
        let tag = event(Kind::Image, "tag", "sha256:ab", &[("name", "busybox:v1")]);
        assert!(matches(&start, &f(&[])));
        assert!(matches(&start, &f(&[("container", &["web"])])));
        assert!(matches(&start, &f(&[("container", &["c0ff"])])));
        assert!(!matches(&start, &f(&[("container", &["db"])])));
        assert!(!matches(&tag, &f(&[("container", &["web"])])));
        assert!(matches(&exec, &f(&[("event", &["exec_start"])])));
        assert!(matches(&start, &f(&[("event", &["die", "start"])])));
        assert!(matches(&start, &f(&[("image", &["busybox"])])));
        assert!(matches(&tag, &f(&[("image", &["busybox:v1"])])));
        assert!(matches(&start, &f(&[("label", &["tier=front"])])));
        assert!(!matches(&start, &f(&[("label", &["tier=back"])])));
        assert!(matches(&start, &f(&[("label", &["tier"])])));
        assert!(matches(&tag, &f(&[("type", &["image"])])));
        assert!(!matches(&tag, &f(&[("type", &["container"])])));
        // A volume by its name (its id).
        let made = event(Kind::Volume, "create", "data", &[("driver", "local")]);
        assert!(matches(
            &made,
            &f(&[("volume", &["data"]), ("type", &["volume"])])
        ));
        assert!(!matches(&made, &f(&[("volume", &["other"])])));
        assert!(!matches(&start, &f(&[("volume", &["data"])])));
    }

    #[test]
    fn json_has_dockers_fields() {
        let e = event(
            Kind::Container,
            "die",
            "c1",
            &[("image", "busybox"), ("exitCode", "3")],
        );
        let v = to_json(&e);
        assert_eq!(v["status"], "die");
        assert_eq!(v["from"], "busybox");
        assert_eq!(v["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(v["time"], 1_700_000_000u64);
        assert_eq!(v["timeNano"], 1_700_000_000_123_456_789u64);
    }
}
