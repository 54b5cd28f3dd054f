//! HTTP plumbing shared by every route: the response body type, JSON and error responses in
//! Docker's format, query strings, request bodies (bounded in time and size; uploads
//! received into a scratch file before the engine reads them), and the bridge from the
//! engine's blocking writers to streamed response bodies.

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
            EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
            EngineError::InvalidArgument(_) | EngineError::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            EngineError::NotModified(_) => StatusCode::NOT_MODIFIED,
            EngineError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
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

pub use berthd::query::{percent_decode, Query};

impl From<berthd::query::QueryError> for ApiError {
    fn from(e: berthd::query::QueryError) -> Self {
        ApiError::bad_request(e.to_string())
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
