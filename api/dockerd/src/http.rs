//! HTTP plumbing shared by every route: the response body type, JSON and error responses in
//! Docker's format, query strings, request bodies (bounded in time and size; uploads
//! received into a scratch file before the engine reads them), and the bridge from the
//! engine's blocking writers to streamed response bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use engine::EngineError;

/// Every response body: buffered or streamed.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A response.
pub type Resp = Response<Body>;

/// An API error: a status and Docker's `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// The one place engine errors meet HTTP.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::InvalidArgument(_) | EngineError::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            EngineError::NotModified(_) => StatusCode::NOT_MODIFIED,
            EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Route results.
pub type ApiResult = Result<Resp, ApiError>;

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response with `status` and no body.
pub fn status(status: StatusCode) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let mut bytes = serde_json::to_vec(value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// The JSON error response for `e`.
pub fn error_response(e: &ApiError) -> Resp {
    let body = serde_json::json!({ "message": e.message });
    let mut r = Response::new(full(format!("{body}\n")));
    *r.status_mut() = e.status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Percent-decodes a query component (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed query string; repeated keys keep every value.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(percent_decode(k))
                .or_default()
                .push(percent_decode(v));
        }
        Query(map)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Docker's booleans: `1`, `true`, `True` (and absent or anything else is false).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True" | "TRUE"))
    }

    /// An integer parameter, with a clear error when malformed.
    pub fn int<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}"))),
        }
    }

    /// Docker's `filters` parameter: JSON `{"key": ["v", ...]}` or `{"key": {"v": true}}`.
    pub fn filters(&self) -> Result<HashMap<String, Vec<String>>, ApiError> {
        let Some(raw) = self.get("filters").filter(|s| !s.is_empty()) else {
            return Ok(HashMap::new());
        };
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filter: not an object"))?;
        let mut out = HashMap::new();
        for (k, v) in obj {
            // A value of another type is refused, as dockerd refuses it, rather than dropped
            // (a dropped value would widen the filter).
            let invalid = || {
                ApiError::bad_request(format!(
                    "invalid filter {k:?}: expected a list of strings or an object of booleans"
                ))
            };
            let values: Vec<String> = match v {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(String::from).ok_or_else(invalid))
                    .collect::<Result<_, _>>()?,
                serde_json::Value::Object(o) => {
                    let mut on = Vec::new();
                    for (s, b) in o {
                        if b.as_bool().ok_or_else(invalid)? {
                            on.push(s.clone());
                        }
                    }
                    on
                }
                _ => return Err(invalid()),
            };
            out.insert(k.clone(), values);
        }
        Ok(out)
    }
}

/// Largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 16 << 20;

/// How long a client may go without sending a byte of a request body it announced. A
/// stalled upload then ends in an error instead of holding its request (and whatever the
/// request holds) for good.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The next frame of `body`, or an error when the client sent nothing for
/// [`BODY_STALL_TIMEOUT`].
async fn next_frame(body: &mut Incoming) -> Option<Result<Frame<Bytes>, std::io::Error>> {
    match tokio::time::timeout(BODY_STALL_TIMEOUT, body.frame()).await {
        Ok(frame) => frame.map(|f| f.map_err(std::io::Error::other)),
        Err(_) => Some(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client sent nothing of the request body for {} s",
                BODY_STALL_TIMEOUT.as_secs()
            ),
        ))),
    }
}

/// Reads a whole (bounded) request body.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = next_frame(&mut body).await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: it is larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Parses a JSON request body; an empty body is `T::default()` when allowed.
pub async fn json_body<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_JSON_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))
}

/// Receives a whole request body into `file` (then rewound), waiting on the client without
/// holding a thread: what reads it afterwards on a blocking thread never waits on a client,
/// so clients that stall cannot take the blocking threads everyone else needs.
pub async fn spool_body(mut body: Incoming, file: std::fs::File) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::from_std(file);
    while let Some(frame) = next_frame(&mut body).await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data).await?;
        }
    }
    out.flush().await?;
    let mut file = out.into_std().await;
    file.rewind()?;
    Ok(file)
}

/// A blocking `Write` whose bytes become a streamed response body.
pub struct BodyWriter {
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BodyWriter {
    /// Ends the stream with an error (the client sees a truncated body).
    pub fn fail(self, e: std::io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

/// A streamed body and the writer that feeds it (use the writer on a blocking thread).
pub fn streamed_body() -> (Body, BodyWriter) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stream = tokio_stream_from(rx);
    (BodyExt::boxed(StreamBody::new(stream)), BodyWriter { tx })
}

/// A streamed body fed by async code.
pub fn channel_body() -> (
    Body,
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))), tx)
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::io::Error>> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_filters() {
        let q = Query::parse(Some(
            "all=1&filters=%7B%22status%22%3A%5B%22exited%22%5D%7D&x=a+b&x=c",
        ));
        assert!(q.flag("all"));
        assert_eq!(q.all("x"), &["a b".to_string(), "c".to_string()]);
        let f = q.filters().unwrap();
        assert_eq!(f["status"], vec!["exited".to_string()]);
        let q = Query::parse(Some("filters=%7B%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%7D"));
        assert_eq!(q.filters().unwrap()["label"], vec!["a=b".to_string()]);
        let q = Query::parse(Some("filters=notjson&t=x"));
        assert!(q.filters().is_err());
        assert!(q.int::<u32>("t").is_err());
        assert_eq!(percent_decode("%2Fa%zz%"), "/a%zz%");
    }
}
