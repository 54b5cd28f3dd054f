//! Turning a received frame body into a trusted message, with the reason and the
//! [`ErrorCode`] to answer when it is not one. Both request-like messages go through here,
//! so "unknown request type" (a newer host) is told apart from "garbage" and "bad field".

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::messages::{ConnectionHeader, ErrorCode, Request};
use crate::validate::ValidationError;

/// Why a received frame body is not an acceptable message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all, or not a JSON object with a string `"type"`.
    #[error("frame is not a JSON object with a \"type\"")]
    Malformed(#[source] Option<serde_json::Error>),
    /// A well-formed message of a type this version does not know.
    #[error("unsupported message type {type_name:?}")]
    Unsupported { type_name: String },
    /// A known type whose fields do not decode.
    #[error("invalid {type_name:?} message")]
    Decode {
        type_name: String,
        #[source]
        source: serde_json::Error,
    },
    /// A message that decodes but breaks a limit.
    #[error("invalid {type_name:?} message")]
    Invalid {
        type_name: String,
        #[source]
        source: ValidationError,
    },
}

impl ParseError {
    /// The code the agent answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::Malformed(_) => ErrorCode::MalformedFrame,
            ParseError::Unsupported { .. } => ErrorCode::Unsupported,
            ParseError::Decode { .. } | ParseError::Invalid { .. } => ErrorCode::InvalidArgument,
        }
    }

    /// A one-line description including the underlying cause, for error replies and logs.
    pub fn describe(&self) -> String {
        match self {
            ParseError::Malformed(Some(e)) => format!("{self}: {e}"),
            ParseError::Malformed(None) | ParseError::Unsupported { .. } => self.to_string(),
            ParseError::Decode { source, .. } => format!("{self}: {source}"),
            ParseError::Invalid { source, .. } => format!("{self}: {source}"),
        }
    }
}

fn parse_tagged<T: DeserializeOwned>(
    body: &[u8],
    known: &[&str],
    validate: impl FnOnce(&T) -> Result<(), ValidationError>,
) -> Result<T, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::Malformed(Some(e)))?;
    let type_name = match value.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(ParseError::Malformed(None)),
    };
    if !known.contains(&type_name.as_str()) {
        let mut end = type_name.len().min(64);
        while !type_name.is_char_boundary(end) {
            end -= 1;
        }
        return Err(ParseError::Unsupported {
            type_name: type_name[..end].to_owned(),
        });
    }
    let msg: T = serde_json::from_value(value).map_err(|source| ParseError::Decode {
        type_name: type_name.clone(),
        source,
    })?;
    validate(&msg).map_err(|source| ParseError::Invalid { type_name, source })?;
    Ok(msg)
}

/// Parses and validates the first frame of a connection.
pub fn parse_header(body: &[u8]) -> Result<ConnectionHeader, ParseError> {
    parse_tagged(body, ConnectionHeader::TYPES, ConnectionHeader::validate)
}

/// Parses and validates a request on a control connection.
pub fn parse_request(body: &[u8]) -> Result<Request, ParseError> {
    parse_tagged(body, Request::TYPES, Request::validate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, ProcessSpec};

    #[test]
    fn classifies_garbage_unknown_and_invalid() {
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"\x00\x01", ErrorCode::MalformedFrame),
            (b"[]", ErrorCode::MalformedFrame),
            (br#"{"id":"x"}"#, ErrorCode::MalformedFrame),
            (br#"{"type":7}"#, ErrorCode::MalformedFrame),
            (
                br#"{"type":"mount_share","tag":"x"}"#,
                ErrorCode::Unsupported,
            ),
            (br#"{"type":"hello"}"#, ErrorCode::Unsupported),
            (br#"{"type":"start_process"}"#, ErrorCode::InvalidArgument),
            (
                br#"{"type":"start_process","id":7}"#,
                ErrorCode::InvalidArgument,
            ),
            (
                br#"{"type":"start_process","id":"../x"}"#,
                ErrorCode::InvalidArgument,
            ),
            (
                br#"{"type":"signal","id":"a","signal":0}"#,
                ErrorCode::InvalidArgument,
            ),
        ];
        for (body, code) in cases {
            let got = parse_request(body).unwrap_err();
            assert_eq!(
                got.code(),
                *code,
                "{:?}: {}",
                String::from_utf8_lossy(body),
                got.describe()
            );
        }
    }

    #[test]
    fn accepts_valid_messages() {
        let r = Request::CreateProcess {
            id: "c1".into(),
            spec: ProcessSpec::new(["true"]),
        };
        let frame = encode(&r).unwrap();
        assert_eq!(parse_request(&frame[4..]).unwrap(), r);
        let h = parse_header(br#"{"type":"attach","process_id":"c1","stream":"stdout"}"#).unwrap();
        assert!(matches!(h, ConnectionHeader::Attach { .. }));
        let e =
            parse_header(br#"{"type":"attach","process_id":"c1","stream":"stdfoo"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        let e = parse_header(br#"{"type":"start_process","id":"c1"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported);
    }

    #[test]
    fn long_unknown_type_names_are_cut() {
        let body = format!(r#"{{"type":"{}"}}"#, "€".repeat(100));
        match parse_request(body.as_bytes()).unwrap_err() {
            ParseError::Unsupported { type_name } => assert!(type_name.len() <= 64),
            other => panic!("{other:?}"),
        }
    }
}
