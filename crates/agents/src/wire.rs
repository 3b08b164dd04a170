//! The OpenAI wire's conventions shared by every agent resource: lists and their cursors,
//! metadata, ids, names, deletion answers, Unix seconds.

use std::collections::BTreeMap;

use holdfast_core::Result;
use holdfast_store::{Order, Resource, StateView, StoreError};
use holdfast_types::{Error, Kind, Micros};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Unix seconds, the time unit of the OpenAI wire.
pub(crate) fn unix_seconds(us: Micros) -> i64 {
    us.div_euclid(1_000_000)
}

pub(crate) fn store_err(e: StoreError) -> Error {
    Error::from(e)
}

/// Gets a resource or fails with a not-found error naming it as the wire does.
pub(crate) fn must_get(view: &StateView<'_>, kind: Kind, id: &str, what: &str, shown: &str) -> Result<Resource> {
    view.get(kind, id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("{what} {shown:?} not found")))
}

/// Query of an OpenAI-style list.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListQuery {
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
}

impl ListQuery {
    pub(crate) fn limit(&self) -> Result<usize> {
        match self.limit {
            None => Ok(20),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(n) => Err(Error::invalid(format!("limit must be between 1 and 100, got {n}"))),
        }
    }

    /// `desc` unless told otherwise, as the OpenAI API does.
    pub(crate) fn order(&self, default: Order) -> Result<Order> {
        match self.order.as_deref() {
            None => Ok(default),
            Some("asc") => Ok(Order::Asc),
            Some("desc") => Ok(Order::Desc),
            Some(o) => Err(Error::invalid(format!("order must be 'asc' or 'desc', got {o:?}"))),
        }
    }
}

/// An OpenAI-style list: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
/// `first_id` and `last_id` are null on an empty page.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct List {
    pub object: String,
    pub data: Vec<Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl List {
    pub fn new(data: Vec<Value>, has_more: bool) -> Self {
        let id = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_owned);
        Self {
            object: "list".into(),
            first_id: data.first().and_then(id),
            last_id: data.last().and_then(id),
            data,
            has_more,
        }
    }
}

/// One page of children of `parent` (or top-level resources) of `kind`, after the cursor.
pub(crate) fn page(
    view: &StateView<'_>,
    kind: Kind,
    parent: Option<&str>,
    query: &ListQuery,
    default_order: Order,
) -> Result<(Vec<Resource>, bool)> {
    let limit = query.limit()?;
    let order = query.order(default_order)?;
    if let Some(after) = &query.after
        && view.get(kind, after).map_err(store_err)?.is_none()
    {
        return Err(Error::invalid(format!("'after' cursor {after:?} does not name an object in this list")));
    }
    let mut rows = view.list(kind, parent, query.after.as_deref(), limit + 1, order).map_err(store_err)?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, has_more))
}

/// One page of `kind` resources under `parent` after `after` (a resource id), keeping those
/// `keep` accepts; `(rows, has_more)`.
pub(crate) fn filtered_page(
    view: &StateView<'_>,
    kind: Kind,
    parent: Option<&str>,
    after: Option<String>,
    limit: usize,
    order: Order,
    keep: impl Fn(&Resource) -> bool,
) -> Result<(Vec<Resource>, bool)> {
    const SCAN: usize = 256;
    let mut cursor = after;
    let mut out = Vec::new();
    loop {
        let rows = view.list(kind, parent, cursor.as_deref(), SCAN, order).map_err(store_err)?;
        let scanned = rows.len();
        for r in rows {
            cursor = Some(r.id.clone());
            if keep(&r) {
                out.push(r);
                if out.len() > limit {
                    break;
                }
            }
        }
        if out.len() > limit || scanned < SCAN {
            break;
        }
    }
    let has_more = out.len() > limit;
    out.truncate(limit);
    Ok((out, has_more))
}

/// OpenAI metadata: at most 16 string pairs, keys up to 64 characters, values up to 512.
pub(crate) fn metadata(value: Option<Value>) -> Result<BTreeMap<String, String>> {
    let Some(value) = value else { return Ok(BTreeMap::new()) };
    if value.is_null() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, Value> = serde_json::from_value(value)
        .map_err(|_| Error::invalid("metadata must be an object of string values"))?;
    if map.len() > 16 {
        return Err(Error::invalid(format!("metadata has {} keys; at most 16 are allowed", map.len())));
    }
    map.into_iter()
        .map(|(k, v)| {
            let Value::String(v) = v else {
                return Err(Error::invalid(format!("metadata value for {k:?} must be a string")));
            };
            if k.is_empty() || k.chars().count() > 64 {
                return Err(Error::invalid(format!("metadata key {k:?} must be 1 to 64 characters")));
            }
            if v.chars().count() > 512 {
                return Err(Error::invalid(format!("metadata value for {k:?} must be at most 512 characters")));
            }
            Ok((k, v))
        })
        .collect()
}

/// A fresh id in the platform's style: `{prefix}{32 hex digits}` (128 random bits), unique
/// across regions without coordination.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::generate().to_string().to_lowercase())
}

/// The names Foundry resources (connections, deployments, agents) may have.
pub(crate) fn resource_name(what: &str, name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name {name:?}: use 1 to 63 letters, digits, '-', '_' and '.', starting with a letter or digit"
        )))
    }
}

pub(crate) fn deleted(id: &str, object: &str) -> Value {
    json!({ "id": id, "object": object, "deleted": true })
}
