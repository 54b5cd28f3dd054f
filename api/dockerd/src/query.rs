//! Query strings and Docker's `filters` parameter: what every client puts in a URL, parsed
//! without trusting any of it (a fuzz target drives this module).

use std::collections::HashMap;

/// Why a query parameter is unusable; answered as a 400 naming the parameter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(String);

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
    pub fn int<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, QueryError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| QueryError(format!("invalid value for {key}: {v:?}"))),
        }
    }

    /// Docker's `filters` parameter: JSON `{"key": ["v", ...]}` or `{"key": {"v": true}}`.
    pub fn filters(&self) -> Result<HashMap<String, Vec<String>>, QueryError> {
        let Some(raw) = self.get("filters").filter(|s| !s.is_empty()) else {
            return Ok(HashMap::new());
        };
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| QueryError(format!("invalid filter: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| QueryError("invalid filter: not an object".into()))?;
        let mut out = HashMap::new();
        for (k, v) in obj {
            // A value of another type is refused, as dockerd refuses it, rather than dropped
            // (a dropped value would widen the filter).
            let invalid = || {
                QueryError(format!(
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
        // Values of the wrong type are refused, not dropped (which would widen the filter).
        for bad in [
            "%7B%22label%22%3A%5B1%5D%7D",
            "%7B%22label%22%3A%7B%22a%22%3A1%7D%7D",
        ] {
            let q = Query::parse(Some(&format!("filters={bad}")));
            assert!(q.filters().is_err(), "{bad}");
        }
    }
}
