//! The container endpoints.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Request;

use crate::http::ApiResult;
use crate::router::{not_found, State, Version};

pub async fn route(
    _state: &Arc<State>,
    _req: Request<Incoming>,
    _path: &str,
    _version: Version,
) -> ApiResult {
    Err(not_found())
}
