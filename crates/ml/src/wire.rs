//! MLflow's wire conventions shared by every ML resource: milliseconds, ids, `{key, value}`
//! lists, lenient request fields (the client sends GET requests as query strings, so numbers
//! and lists arrive as strings), and MLflow's limits on names and values.

use std::collections::BTreeMap;

use holdfast_core::Result;
use holdfast_store::{Order, Resource, StateView, StoreError};
use holdfast_types::{Error, Kind};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Milliseconds since the Unix epoch, MLflow's time unit.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn store_err(e: StoreError) -> Error {
    Error::from(e)
}

/// Every resource of `kind` under `parent` (or at the top level), in creation order, read a
/// thousand at a time.
pub(crate) fn children(view: &StateView<'_>, kind: Kind, parent: Option<&str>) -> Result<Vec<Resource>> {
    let mut out = Vec::new();
    loop {
        let rows = view.list(kind, parent, out.last().map(|r: &Resource| r.id.as_str()), 1000, Order::Asc).map_err(store_err)?;
        if rows.is_empty() {
            return Ok(out);
        }
        out.extend(rows);
    }
}

pub(crate) fn parse<T: DeserializeOwned>(r: &Resource) -> Result<T> {
    serde_json::from_value(r.body.clone())
        .map_err(|e| Error::internal(format!("bad {} record {}: {e}", r.kind.as_str(), r.id)))
}

pub(crate) fn to_body<T: Serialize>(t: &T) -> Result<Value> {
    serde_json::to_value(t).map_err(|e| Error::internal(e.to_string()))
}

/// A request's fields, from a JSON body or a query string made JSON by the facade.
pub fn request<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::invalid(format!("invalid request: {e}")))
}

/// A fresh 32-hex id (MLflow's run and model ids are uuid4 hex).
pub(crate) fn hex_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct KeyValue {
    pub key: String,
    #[serde(default, deserialize_with = "string")]
    pub value: String,
}

/// `{key: value}` as MLflow's `[{key, value}]`.
pub(crate) fn pairs(map: &BTreeMap<String, String>) -> Value {
    Value::Array(map.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect())
}

// ---- MLflow's limits (mlflow/utils/validation.py) ----

pub(crate) const MAX_KEY_LENGTH: usize = 250;
pub(crate) const MAX_PARAM_VALUE_LENGTH: usize = 6000;
pub(crate) const MAX_TAG_VALUE_LENGTH: usize = 8000;
pub(crate) const MAX_NAME_LENGTH: usize = 500;
pub(crate) const MAX_BATCH_METRICS: usize = 1000;
pub(crate) const MAX_BATCH_PARAMS: usize = 100;
pub(crate) const MAX_BATCH_TAGS: usize = 100;
pub(crate) const MAX_BATCH_ENTRIES: usize = 1000;
/// Most results a search page holds.
pub(crate) const MAX_RESULTS: usize = 50_000;

/// A metric, param or tag key: 1 to 250 of letters, digits, `_ - . / :` and spaces, no `..`
/// path component and not absolute (MLflow's rule, as keys become file names in some stores).
pub(crate) fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LENGTH {
        return Err(Error::invalid(format!("{what} name must be 1 to {MAX_KEY_LENGTH} characters, got {}", key.len())));
    }
    let allowed = |c: char| c.is_alphanumeric() || "_-./: ".contains(c);
    if !key.chars().all(allowed) {
        return Err(Error::invalid(format!(
            "Invalid {what} name: '{key}'. Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)."
        )));
    }
    if key.starts_with('/') || key.split('/').any(|part| part == "..") {
        return Err(Error::invalid(format!("Invalid {what} name: '{key}'. Names may not be absolute or contain '..'.")));
    }
    Ok(())
}

pub(crate) fn check_value(what: &str, key: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(format!(
            "{what} '{key}' had length {}, which exceeded length limit of {max}",
            value.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid(format!("{what} name must not be empty")));
    }
    if name.len() > MAX_NAME_LENGTH || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{what} name must be 1 to {MAX_NAME_LENGTH} printable characters")));
    }
    Ok(())
}

pub(crate) fn check_tags(tags: &[KeyValue]) -> Result<()> {
    for t in tags {
        check_key("tag", &t.key)?;
        check_value("Tag value for", &t.key, &t.value, MAX_TAG_VALUE_LENGTH)?;
    }
    Ok(())
}

/// `max_results`, within 1..=`limit` (default `default`).
pub(crate) fn max_results(asked: Option<i64>, default: usize, limit: usize) -> Result<usize> {
    match asked {
        None | Some(0) => Ok(default),
        Some(n) if n > 0 && n as usize <= limit => Ok(n as usize),
        Some(n) => Err(Error::invalid(format!("Invalid value {n} for parameter 'max_results' supplied: it must be between 1 and {limit}"))),
    }
}

// ---- artifact paths ----

/// A path under the artifact root: relative, `/`-separated, no empty, `.` or `..` component.
pub fn check_path(path: &str) -> Result<String> {
    let path = path.trim_matches('/');
    let bad = path.is_empty()
        || path.len() > 4096
        || path.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || path.contains('\\')
        || path.chars().any(char::is_control);
    if bad {
        return Err(Error::invalid(format!("Invalid artifact path: '{path}'")));
    }
    Ok(path.to_owned())
}

/// The path under the artifact root of a `mlflow-artifacts:/…` URI.
pub(crate) fn root_path(uri: &str) -> &str {
    uri.strip_prefix("mlflow-artifacts:").unwrap_or(uri).trim_start_matches('/')
}

// ---- lenient request fields ----

/// A string, or a number or bool written as one (query strings, loose clients).
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// An integer, also as a string (proto JSON writes int64 as strings).
pub(crate) fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).map(Some).ok_or_else(|| D::Error::custom("not an integer")),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => s.trim().parse().map(Some).map_err(|_| D::Error::custom(format!("{s:?} is not an integer"))),
        other => Err(D::Error::custom(format!("expected an integer, got {other}"))),
    }
}

pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" | "" => Ok(Some(false)),
            _ => Err(D::Error::custom(format!("{s:?} is not a boolean"))),
        },
        other => Err(D::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

/// A list of strings, also one string (a query string's single value).
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(D::Error::custom(format!("expected a string, got {other}"))),
            })
            .collect(),
        other => Err(D::Error::custom(format!("expected a list of strings, got {other}"))),
    }
}

/// A metric value: a number, or proto JSON's `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub(crate) fn metric_value(v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| Error::invalid("metric value is not a number")),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other.parse().map_err(|_| Error::invalid(format!("metric value {other:?} is not a number"))),
        },
        other => Err(Error::invalid(format!("metric value {other} is not a number"))),
    }
}

/// A metric value as the journal and the wire keep it: a number, or proto JSON's names for the
/// values JSON has no number for.
pub(crate) fn metric_json(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f == f64::INFINITY {
        json!("Infinity")
    } else if f == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_mlflow_rules() {
        assert!(check_key("param", "lr").is_ok());
        assert!(check_key("metric", "loss/train step:1").is_ok());
        assert!(check_key("param", "").is_err());
        assert!(check_key("param", "a..b").is_ok());
        assert!(check_key("param", "a/../b").is_err());
        assert!(check_key("param", "/abs").is_err());
        assert!(check_key("param", "semi;colon").is_err());
        assert!(check_key("param", &"k".repeat(251)).is_err());
    }

    #[test]
    fn metric_values_keep_what_json_cannot_hold() {
        for f in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(metric_value(&metric_json(f)).unwrap(), f);
        }
        assert!(metric_value(&metric_json(f64::NAN)).unwrap().is_nan());
        assert!(metric_value(&json!("x")).is_err());
    }

    #[test]
    fn hex_ids_are_32_hex_and_distinct() {
        let (a, b) = (hex_id().unwrap(), hex_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
