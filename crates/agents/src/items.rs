//! Conversation items in the OpenAI Responses shape: messages, function calls and their
//! outputs. Input is normalised on the way in (string content becomes a content list, ids and
//! statuses are filled in) so what is stored is what every reader gets.

use holdfast_types::Error;
use serde_json::{Map, Value, json};

use crate::wire::new_id;
use crate::Result;

/// Most items one request may add.
pub const MAX_ITEMS_PER_REQUEST: usize = 1000;

/// The id prefix of each item type Holdfast stores.
fn id_prefix(item_type: &str) -> Option<&'static str> {
    Some(match item_type {
        "message" => "msg_",
        "function_call" => "fc_",
        "function_call_output" => "fco_",
        "file_search_call" => "fs_",
        _ => return None,
    })
}

/// Validates and normalises one input item. Items without a type are messages (the OpenAI
/// "easy input message" form).
pub fn normalize(item: &Value) -> Result<Value> {
    let Some(obj) = item.as_object() else {
        return Err(Error::invalid("each item must be an object"));
    };
    let item_type = obj.get("type").and_then(Value::as_str).unwrap_or("message");
    let mut out = Map::new();
    out.insert("type".into(), json!(item_type));
    match item_type {
        "message" => {
            let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| Error::invalid("a message needs a role"))?;
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(Error::invalid(format!(
                    "invalid message role {role:?}: use user, assistant, system or developer"
                )));
            }
            out.insert("role".into(), json!(role));
            out.insert("content".into(), normalize_content(role, obj.get("content"))?);
            out.insert("status".into(), json!(obj.get("status").and_then(Value::as_str).unwrap_or("completed")));
        }
        "function_call" => {
            let call_id = required_str(obj, "call_id", "function_call")?;
            let name = required_str(obj, "name", "function_call")?;
            let arguments = obj.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            out.insert("call_id".into(), json!(call_id));
            out.insert("name".into(), json!(name));
            out.insert("arguments".into(), json!(arguments));
            out.insert("status".into(), json!(obj.get("status").and_then(Value::as_str).unwrap_or("completed")));
        }
        "function_call_output" => {
            let call_id = required_str(obj, "call_id", "function_call_output")?;
            let output = match obj.get("output") {
                Some(Value::String(s)) => json!(s),
                Some(Value::Array(parts)) => json!(parts),
                _ => return Err(Error::invalid("function_call_output needs an output string")),
            };
            out.insert("call_id".into(), json!(call_id));
            out.insert("output".into(), output);
            out.insert("status".into(), json!("completed"));
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported item type {other:?}; supported: message, function_call, function_call_output"
            )));
        }
    }
    let prefix = id_prefix(item_type).unwrap_or("item_");
    let id = match obj.get("id").and_then(Value::as_str) {
        Some(id) if id.starts_with(prefix) && id.len() <= 128 => id.to_owned(),
        _ => new_id(prefix),
    };
    out.insert("id".into(), json!(id));
    Ok(Value::Object(out))
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str, what: &str) -> Result<&'a str> {
    obj.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid(format!("a {what} item needs {field}")))
}

fn normalize_content(role: &str, content: Option<&Value>) -> Result<Value> {
    let text_type = if role == "assistant" { "output_text" } else { "input_text" };
    match content {
        Some(Value::String(text)) => Ok(text_part(text_type, text)),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "input_text" | "output_text" | "text" | "summary_text" => {
                        let text = part
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| Error::invalid(format!("a {kind} content part needs text")))?;
                        let kind = if kind == "text" { text_type } else { kind };
                        let mut p = json!({ "type": kind, "text": text });
                        if kind == "output_text" {
                            p["annotations"] = part.get("annotations").cloned().unwrap_or_else(|| json!([]));
                        }
                        out.push(p);
                    }
                    "refusal" => out.push(json!({
                        "type": "refusal",
                        "refusal": part.get("refusal").and_then(Value::as_str).unwrap_or_default(),
                    })),
                    "input_image" | "input_file" => out.push(part.clone()),
                    other => {
                        return Err(Error::invalid(format!("unsupported content part type {other:?}")));
                    }
                }
            }
            Ok(Value::Array(out))
        }
        _ => Err(Error::invalid("a message needs content: a string or a list of content parts")),
    }
}

fn text_part(kind: &str, text: &str) -> Value {
    if kind == "output_text" {
        json!([{ "type": kind, "text": text, "annotations": [] }])
    } else {
        json!([{ "type": kind, "text": text }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_content_becomes_parts() {
        let m = normalize(&json!({"role": "user", "content": "hi"})).expect("ok");
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"], json!([{"type": "input_text", "text": "hi"}]));
        assert!(m["id"].as_str().expect("id").starts_with("msg_"));
        let a = normalize(&json!({"type": "message", "role": "assistant", "content": "yo"})).expect("ok");
        assert_eq!(a["content"][0]["type"], "output_text");
    }

    #[test]
    fn bad_items_are_refused() {
        assert!(normalize(&json!("text")).is_err());
        assert!(normalize(&json!({"role": "robot", "content": "x"})).is_err());
        assert!(normalize(&json!({"role": "user"})).is_err());
        assert!(normalize(&json!({"type": "computer_call"})).is_err());
        assert!(normalize(&json!({"type": "function_call", "name": "f"})).is_err());
        assert!(normalize(&json!({"role": "user", "content": [{"type": "audio"}]})).is_err());
    }
}
