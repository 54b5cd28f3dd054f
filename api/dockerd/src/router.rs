//! Version negotiation and dispatch: `/_ping` unversioned, everything else with an optional
//! `/vX.Y` prefix, as the Docker CLI sends it.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

use crate::http::{error_response, ApiError, Resp};
use crate::routes;

/// The newest API version berthd speaks (what dockerd 20.10 speaks: the behaviour berth
/// matches is the one measured against it).
pub const API_VERSION: &str = "1.41";
/// The oldest.
pub const MIN_API_VERSION: &str = "1.24";

/// What every handler can reach.
pub struct State {
    pub engine: engine::Engine,
    /// Permits for upgraded (attach) streams, each held until its stream ends.
    pub streams: Arc<tokio::sync::Semaphore>,
    pub stream_cap: usize,
}

impl State {
    pub fn new(engine: engine::Engine, stream_cap: usize) -> Self {
        State {
            engine,
            streams: Arc::new(tokio::sync::Semaphore::new(stream_cap)),
            stream_cap,
        }
    }
}

/// An API version as (major, minor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let (a, b) = s.split_once('.')?;
        Some(Version(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Splits `/v1.41/containers/json` into (1.41, `/containers/json`).
fn split_version(path: &str) -> Result<(Version, &str), ApiError> {
    let max = Version::parse(API_VERSION).expect("API_VERSION is well formed");
    let min = Version::parse(MIN_API_VERSION).expect("MIN_API_VERSION is well formed");
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok((max, path));
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let Some(version) = Version::parse(&rest[..end]) else {
        return Ok((max, path));
    };
    if version > max {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if version < min {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok((version, &rest[end..]))
}

/// The service entry point: every error becomes Docker's JSON error response.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut resp = match dispatch(state, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                log::warn!("{method} {uri}: {}", e.message);
            }
            error_response(&e)
        }
    };
    log::debug!("{method} {uri} -> {}", resp.status());
    let headers = resp.headers_mut();
    headers.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    headers.insert(
        "Server",
        HeaderValue::from_static(concat!(
            "Docker/berth-",
            env!("CARGO_PKG_VERSION"),
            " (linux)"
        )),
    );
    headers.insert("Ostype", HeaderValue::from_static("linux"));
    Ok(resp)
}

async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let full_path = req.uri().path().to_string();
    if full_path == "/_ping" {
        return routes::system::ping(&req);
    }
    let (version, path) = split_version(&full_path)?;
    let path = path.to_string();
    if path == "/images" || path.starts_with("/images/") || path == "/build" {
        return routes::images::route(&state, req, &path, version).await;
    }
    if path == "/networks" || path.starts_with("/networks/") {
        return routes::networks::route(&state, req, &path).await;
    }
    if path == "/volumes" || path.starts_with("/volumes/") {
        return routes::volumes::route(&state, req, &path, version).await;
    }
    if path.starts_with("/exec/") {
        return routes::exec::route(&state, req, &path, version).await;
    }
    if path == "/containers" || path.starts_with("/containers/") {
        return routes::containers::route(&state, req, &path, version).await;
    }
    routes::system::route(&state, req, &path, version).await
}

/// Docker's answer to an unknown endpoint.
pub fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "page not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            split_version("/v1.41/info").unwrap(),
            (Version(1, 41), "/info")
        );
        assert_eq!(split_version("/v1.24/x").unwrap().0, Version(1, 24));
        assert_eq!(split_version("/info").unwrap(), (Version(1, 41), "/info"));
        let e = split_version("/v1.50/info").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("too new"));
        assert!(split_version("/v1.12/info")
            .unwrap_err()
            .message
            .contains("too old"));
        assert_eq!(split_version("/volumes").unwrap().1, "/volumes");
    }
}
