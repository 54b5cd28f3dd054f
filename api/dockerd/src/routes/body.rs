//! Fields of a JSON request body, read with dockerd's type checks (a field of the wrong
//! type is a 400 naming it), and Docker's label filters: shared by the routes that create
//! and list objects.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::http::ApiError;

/// Field `k` as a string; absent or null is empty.
pub fn string(obj: &Map<String, Value>, k: &str) -> Result<String, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be a string"))),
    }
}

/// Field `k` as a boolean; absent or null is false.
pub fn boolean(obj: &Map<String, Value>, k: &str) -> Result<bool, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be a boolean"))),
    }
}

/// Field `k` as a map of strings (labels, options); absent or null is empty.
pub fn string_map(obj: &Map<String, Value>, k: &str) -> Result<BTreeMap<String, String>, ApiError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k2, v)| {
                v.as_str()
                    .map(|s| (k2.clone(), s.to_string()))
                    .ok_or_else(|| ApiError::bad_request(format!("{k}[{k2:?}] must be a string")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be an object"))),
    }
}

/// Docker's `label` filter: `key` is carried, or `key=value` is carried with that value.
pub fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_of_the_wrong_type_are_named() {
        let v = json!({"Name": "n", "Internal": true, "Labels": {"a": "1"}, "Bad": 3});
        let obj = v.as_object().unwrap();
        assert_eq!(string(obj, "Name").unwrap(), "n");
        assert_eq!(string(obj, "Missing").unwrap(), "");
        assert!(boolean(obj, "Internal").unwrap());
        assert_eq!(string_map(obj, "Labels").unwrap()["a"], "1");
        assert!(string(obj, "Bad").is_err());
        assert!(boolean(obj, "Bad").is_err());
        assert!(string_map(obj, "Bad").is_err());
        let labels = string_map(obj, "Labels").unwrap();
        assert!(label_matches(&labels, "a") && label_matches(&labels, "a=1"));
        assert!(!label_matches(&labels, "a=2") && !label_matches(&labels, "b"));
    }
}
