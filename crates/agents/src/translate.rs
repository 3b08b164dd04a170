//! Translation between the OpenAI Responses shapes Holdfast stores and the chat-completions
//! shapes upstream models speak: history items → chat messages, Responses tools → chat tools,
//! and streamed chat chunks → the text, tool calls and usage of one model turn.
//!
//! Pure functions only; the calls themselves are in `upstream.rs`, the orchestration in
//! `responses.rs`.

use holdfast_types::Error;
use serde_json::{Map, Value, json};

use crate::Result;

/// The name under which `file_search` is offered to the model as a function Holdfast runs itself.
pub(crate) const FILE_SEARCH_FUNCTION: &str = "file_search";

/// Most results one `file_search` call returns unless its tool says otherwise.
pub(crate) const DEFAULT_FILE_SEARCH_RESULTS: usize = 10;

// History → messages ------------------------------------------------------------------------------

/// The chat messages for `instructions` followed by the Responses `items` (history and new input).
///
/// Messages keep their role, except `developer`, which becomes `system` (many OpenAI-compatible
/// servers know no `developer` role). Consecutive `function_call` items become one assistant
/// message with `tool_calls` (joined to the assistant text just before them), each
/// `function_call_output` a `tool` message; a stored `file_search_call` becomes the assistant's
/// call of the `file_search` function and a `tool` message with its results, so the model sees
/// what it searched and found.
pub(crate) fn messages(instructions: Option<&str>, items: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(text) = instructions.filter(|t| !t.is_empty()) {
        out.push(json!({ "role": "system", "content": text }));
    }
    for item in items {
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str).unwrap_or("user") {
                    "developer" => "system",
                    role => role,
                };
                let content = chat_content(role, item.get("content"));
                out.push(json!({ "role": role, "content": content }));
            }
            "function_call" => {
                let call = json!({
                    "id": str_field(item, "call_id"),
                    "type": "function",
                    "function": { "name": str_field(item, "name"), "arguments": str_field(item, "arguments") },
                });
                push_tool_call(&mut out, call);
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(parts),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                out.push(json!({ "role": "tool", "tool_call_id": str_field(item, "call_id"), "content": output }));
            }
            "file_search_call" => {
                // Stored calls carry no call id; the item id stands in for it.
                let id = str_field(item, "id");
                let query = item
                    .get("queries")
                    .and_then(Value::as_array)
                    .map(|q| q.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let arguments = json!({ "query": query }).to_string();
                push_tool_call(
                    &mut out,
                    json!({ "id": id, "type": "function", "function": { "name": FILE_SEARCH_FUNCTION, "arguments": arguments } }),
                );
                let results = item.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
                out.push(json!({ "role": "tool", "tool_call_id": id, "content": file_search_text(&results) }));
            }
            // Nothing else is stored; an unknown item contributes nothing rather than failing a
            // conversation that holds it.
            _ => {}
        }
    }
    out
}

/// Appends a tool call to the last assistant message if the model's turn is still open (no
/// tool answer since), else starts an assistant message for it.
fn push_tool_call(out: &mut Vec<Value>, call: Value) {
    if let Some(last) = out.last_mut().filter(|m| m["role"] == "assistant")
        && let Some(message) = last.as_object_mut()
    {
        let calls = message.entry("tool_calls").or_insert_with(|| json!([]));
        if let Some(calls) = calls.as_array_mut() {
            calls.push(call);
            return;
        }
    }
    out.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }));
}

fn str_field<'a>(item: &'a Value, field: &str) -> &'a str {
    item.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The text of content parts, joined by blank lines.
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
            Some("refusal") => p.get("refusal").and_then(Value::as_str),
            _ => p.get("text").and_then(Value::as_str),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Chat content for a message: a string when it is all text, else a list of text and image
/// parts (user messages with images). Files Holdfast cannot inline are named in the text.
fn chat_content(role: &str, content: Option<&Value>) -> Value {
    let parts = match content {
        Some(Value::String(s)) => return json!(s),
        Some(Value::Array(parts)) => parts,
        _ => return json!(""),
    };
    let has_image =
        parts.iter().any(|p| p["type"] == "input_image" && p.get("image_url").is_some_and(Value::is_string));
    if role != "user" || !has_image {
        let text = parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("refusal") => p.get("refusal").and_then(Value::as_str).map(str::to_owned),
                Some("input_image") => Some(format!("[image {}]", p["file_id"].as_str().unwrap_or("attached"))),
                Some("input_file") => {
                    Some(format!("[file {}]", p["filename"].as_str().or(p["file_id"].as_str()).unwrap_or("attached")))
                }
                _ => p.get("text").and_then(Value::as_str).map(str::to_owned),
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        return json!(text);
    }
    let out: Vec<Value> = parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => {
                    let mut image = json!({ "url": url });
                    if let Some(detail) = p.get("detail").and_then(Value::as_str) {
                        image["detail"] = json!(detail);
                    }
                    json!({ "type": "image_url", "image_url": image })
                }
                None => json!({ "type": "text", "text": format!("[image {}]", p["file_id"].as_str().unwrap_or("attached")) }),
            },
            Some("input_file") => json!({
                "type": "text",
                "text": format!("[file {}]", p["filename"].as_str().or(p["file_id"].as_str()).unwrap_or("attached")),
            }),
            _ => json!({ "type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default() }),
        })
        .collect();
    Value::Array(out)
}

/// What the model reads back from a file search: each result's file, score and text.
pub(crate) fn file_search_text(results: &[Value]) -> String {
    if results.is_empty() {
        return "No results found.".to_owned();
    }
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = r["filename"].as_str().or(r["file_id"].as_str()).unwrap_or("unknown");
            let score = r["score"].as_f64().map(|s| format!(" (score {s:.3})")).unwrap_or_default();
            format!("[{}] {name}{score}\n{}", i + 1, r["text"].as_str().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A vector-store search result (`{file_id, filename, score, attributes, content: [{type, text}]}`)
/// as a `file_search_call` result (`{file_id, filename, score, attributes, text}`).
pub(crate) fn file_search_result(hit: &Value) -> Value {
    let text = match hit.get("content") {
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        Some(Value::String(s)) => s.clone(),
        _ => hit["text"].as_str().unwrap_or_default().to_owned(),
    };
    json!({
        "file_id": hit.get("file_id").cloned().unwrap_or(Value::Null),
        "filename": hit.get("filename").cloned().unwrap_or(Value::Null),
        "score": hit.get("score").cloned().unwrap_or(Value::Null),
        "attributes": hit.get("attributes").cloned().unwrap_or_else(|| json!({})),
        "text": text,
    })
}

/// Refuses a turn that would hand the model an unpaired tool message, as OpenAI does: an output
/// for a call that was never made, or a call (in the history or the input) whose output is
/// missing.
pub(crate) fn check_tool_pairs(history: &[Value], input: &[Value]) -> Result<()> {
    let mut calls = std::collections::HashSet::new();
    let mut pending: Vec<&str> = Vec::new();
    for item in history.iter().chain(input) {
        let call_id = item["call_id"].as_str().unwrap_or_default();
        match item["type"].as_str() {
            Some("function_call") => {
                calls.insert(call_id);
                pending.push(call_id);
            }
            Some("function_call_output") => {
                if !calls.contains(call_id) {
                    return Err(Error::invalid(format!(
                        "No tool call found for function call output with call_id {call_id}."
                    )));
                }
                pending.retain(|p| *p != call_id);
            }
            _ => {}
        }
    }
    match pending.first() {
        Some(call_id) => Err(Error::invalid(format!("No tool output found for function call {call_id}."))),
        None => Ok(()),
    }
}

// Tools ---------------------------------------------------------------------------------------------

/// The `file_search` tool of a request: which vector stores, how many results.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FileSearch {
    pub vector_store_ids: Vec<String>,
    pub max_num_results: usize,
    /// Attribute filter of the tool (see `vector_stores::check_filter`).
    pub filters: Option<Value>,
    /// `ranking_options.score_threshold`, from 0 to 1.
    pub score_threshold: Option<f64>,
}

/// Responses tools as chat tools.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ChatTools {
    pub tools: Vec<Value>,
    pub file_search: Option<FileSearch>,
}

/// Translates Responses tools (already checked by `agents::check_tools`: `function` and
/// `file_search` only) to chat tools. `file_search` becomes a function the model calls with a
/// query; all `file_search` tools share one function over the union of their vector stores.
pub(crate) fn chat_tools(tools: &[Value]) -> Result<ChatTools> {
    let mut out = ChatTools::default();
    let mut names = Vec::new();
    for tool in tools {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = str_field(tool, "name");
                if name == FILE_SEARCH_FUNCTION && tools.iter().any(|t| t["type"] == "file_search") {
                    return Err(Error::invalid(format!(
                        "a function tool may not be named {FILE_SEARCH_FUNCTION:?} alongside the file_search tool"
                    )));
                }
                if names.contains(&name) {
                    return Err(Error::invalid(format!("two function tools are named {name:?}")));
                }
                names.push(name);
                let mut function = Map::new();
                function.insert("name".into(), json!(name));
                if let Some(d) = tool.get("description").filter(|d| d.is_string()) {
                    function.insert("description".into(), d.clone());
                }
                let parameters = tool
                    .get("parameters")
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
                function.insert("parameters".into(), parameters);
                if let Some(strict) = tool.get("strict").and_then(Value::as_bool) {
                    function.insert("strict".into(), json!(strict));
                }
                out.tools.push(json!({ "type": "function", "function": function }));
            }
            Some("file_search") => {
                let ids: Vec<String> = tool
                    .get("vector_store_ids")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                let max = match tool.get("max_num_results") {
                    None | Some(Value::Null) => DEFAULT_FILE_SEARCH_RESULTS,
                    Some(v) => match v.as_u64() {
                        Some(n @ 1..=50) => n as usize,
                        _ => return Err(Error::invalid("file_search max_num_results must be between 1 and 50")),
                    },
                };
                let (filters, score_threshold) =
                    super::vector_stores::search_options(tool.get("filters").cloned(), tool.get("ranking_options"))?;
                if out.file_search.as_ref().is_some_and(|fs| fs.filters != filters || fs.score_threshold != score_threshold) {
                    return Err(Error::invalid("file_search tools with different filters or ranking options cannot be combined"));
                }
                let fs = out.file_search.get_or_insert_with(|| FileSearch {
                    vector_store_ids: Vec::new(),
                    max_num_results: max,
                    filters,
                    score_threshold,
                });
                for id in ids {
                    if !fs.vector_store_ids.contains(&id) {
                        fs.vector_store_ids.push(id);
                    }
                }
                fs.max_num_results = fs.max_num_results.max(max);
            }
            other => {
                return Err(Error::invalid(format!(
                    "unsupported tool type {:?}; supported: function, file_search",
                    other.unwrap_or_default()
                )));
            }
        }
    }
    if let Some(fs) = &out.file_search {
        if fs.vector_store_ids.is_empty() {
            return Err(Error::invalid("the file_search tool needs vector_store_ids"));
        }
        out.tools.push(json!({
            "type": "function",
            "function": {
                "name": FILE_SEARCH_FUNCTION,
                "description": "Search the user's files for passages relevant to a query. Use it to answer questions about their documents.",
                "parameters": {
                    "type": "object",
                    "properties": { "query": { "type": "string", "description": "What to search for." } },
                    "required": ["query"],
                },
            },
        }));
    }
    Ok(out)
}

/// A Responses `tool_choice` as a chat `tool_choice`.
pub(crate) fn chat_tool_choice(choice: &Value) -> Result<Value> {
    match choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => Ok(choice.clone()),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => match o.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => Ok(json!({ "type": "function", "function": { "name": name } })),
                _ => Err(Error::invalid("tool_choice of type function needs a name")),
            },
            Some("file_search") => Ok(json!({ "type": "function", "function": { "name": FILE_SEARCH_FUNCTION } })),
            other => Err(Error::invalid(format!(
                "unsupported tool_choice type {:?}; supported: function, file_search",
                other.unwrap_or_default()
            ))),
        },
        _ => Err(Error::invalid("tool_choice must be 'auto', 'none', 'required' or a tool object")),
    }
}

/// The chat `response_format` for a Responses `text` config (`text.format`), if not plain text.
pub(crate) fn response_format(text: Option<&Value>) -> Result<Option<Value>> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "json_object" }))),
        Some("json_schema") => {
            let name = format.get("name").and_then(Value::as_str).unwrap_or("response");
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| Error::invalid("text.format json_schema needs a schema object"))?;
            let mut js = json!({ "name": name, "schema": schema });
            if let Some(strict) = format.get("strict").and_then(Value::as_bool) {
                js["strict"] = json!(strict);
            }
            if let Some(d) = format.get("description").and_then(Value::as_str) {
                js["description"] = json!(d);
            }
            Ok(Some(json!({ "type": "json_schema", "json_schema": js })))
        }
        other => Err(Error::invalid(format!(
            "unsupported text.format type {:?}; supported: text, json_object, json_schema",
            other.unwrap_or_default()
        ))),
    }
}

// Chat chunks → one turn --------------------------------------------------------------------------

/// Token counts, in the Responses shape when written out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Reads a chat-completions `usage` object.
    pub(crate) fn from_chat(usage: &Value) -> Option<Usage> {
        let obj = usage.as_object()?;
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let input = n(obj.get("prompt_tokens"));
        let output = n(obj.get("completion_tokens"));
        let total = obj.get("total_tokens").and_then(Value::as_u64).unwrap_or(input + output);
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: total,
            cached_tokens: n(usage.pointer("/prompt_tokens_details/cached_tokens")),
            reasoning_tokens: n(usage.pointer("/completion_tokens_details/reasoning_tokens")),
        })
    }

    pub(crate) fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }

    pub(crate) fn to_wire(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": { "cached_tokens": self.cached_tokens, "cache_write_tokens": 0 },
            "output_tokens": self.output_tokens,
            "output_tokens_details": { "reasoning_tokens": self.reasoning_tokens },
            "total_tokens": self.total_tokens,
        })
    }
}

/// One tool call the model is making, as its chunks arrive.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What one chunk added to a turn, in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Delta {
    Text(String),
    Refusal(String),
    /// Arguments text added to the tool call at this position of `Turn::tool_calls`.
    Arguments {
        call: usize,
        delta: String,
    },
    /// The tool call at this position got its name (its first chunk, usually).
    Named {
        call: usize,
    },
}

/// One model turn, accumulated from a chat-completions stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Turn {
    pub text: String,
    pub refusal: String,
    pub tool_calls: Vec<ToolCall>,
    /// Upstream index of each entry of `tool_calls`.
    indices: Vec<u64>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

impl Turn {
    /// Folds in one `chat.completion.chunk` (only the first choice is read) and says what it
    /// added. A complete `chat.completion` body can be fed as a chunk after [`completion_as_chunk`].
    pub(crate) fn apply_chunk(&mut self, chunk: &Value) -> Vec<Delta> {
        let mut out = Vec::new();
        if let Some(usage) = chunk.get("usage").and_then(Usage::from_chat) {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return out;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.text.push_str(text);
            out.push(Delta::Text(text.to_owned()));
        }
        if let Some(text) = delta.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.refusal.push_str(text);
            out.push(Delta::Refusal(text.to_owned()));
        }
        for (position, tc) in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let id = tc.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
            // Servers that send whole calls sometimes leave out `index`: a new id is a new call.
            let index = match tc.get("index").and_then(Value::as_u64) {
                Some(i) => i,
                None => match id {
                    Some(id) => match self.tool_calls.iter().position(|c| c.id == id) {
                        Some(p) => self.indices[p],
                        None => self.indices.iter().max().map_or(position as u64, |m| m + 1),
                    },
                    None => self.indices.last().copied().unwrap_or(0),
                },
            };
            let call = match self.indices.iter().position(|&i| i == index) {
                Some(p) => p,
                None => {
                    self.indices.push(index);
                    self.tool_calls.push(ToolCall::default());
                    self.tool_calls.len() - 1
                }
            };
            let entry = &mut self.tool_calls[call];
            if let Some(id) = id
                && entry.id.is_empty()
            {
                entry.id = id.to_owned();
            }
            let function = tc.get("function").unwrap_or(&Value::Null);
            if let Some(name) = function.get("name").and_then(Value::as_str).filter(|n| !n.is_empty())
                && entry.name.is_empty()
            {
                entry.name = name.to_owned();
                out.push(Delta::Named { call });
            }
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                // Some servers send arguments as an object.
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => String::new(),
            };
            if !arguments.is_empty() {
                entry.arguments.push_str(&arguments);
                out.push(Delta::Arguments { call, delta: arguments });
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        out
    }
}

/// A whole `chat.completion` (an upstream that ignored `stream: true`) as one chunk.
pub(crate) fn completion_as_chunk(completion: &Value) -> Value {
    let choice =
        completion.get("choices").and_then(Value::as_array).and_then(|c| c.first()).cloned().unwrap_or(Value::Null);
    let mut delta = choice.get("message").cloned().unwrap_or_else(|| json!({}));
    if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for (i, call) in calls.iter_mut().enumerate() {
            if let Some(call) = call.as_object_mut() {
                call.entry("index").or_insert(json!(i));
            }
        }
    }
    json!({
        "choices": [{ "index": 0, "delta": delta, "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null) }],
        "usage": completion.get("usage").cloned().unwrap_or(Value::Null),
    })
}

// Output items ------------------------------------------------------------------------------------

/// An assistant `message` output item holding `text` (and a refusal, if any).
pub(crate) fn message_item(id: &str, text: &str, refusal: &str, status: &str) -> Value {
    let mut content = Vec::new();
    if !text.is_empty() || refusal.is_empty() {
        content.push(output_text(text));
    }
    if !refusal.is_empty() {
        content.push(json!({ "type": "refusal", "refusal": refusal }));
    }
    json!({ "id": id, "type": "message", "role": "assistant", "status": status, "content": content })
}

pub(crate) fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// A `function_call` output item.
pub(crate) fn function_call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    })
}

/// The assistant message (with tool calls) and tool messages that feed a turn's internal
/// `file_search` calls and their results back to the model.
pub(crate) fn tool_round_messages(text: &str, tool_calls: &[ToolCall], answers: &[(String, String)]) -> Vec<Value> {
    let calls: Vec<Value> = tool_calls
        .iter()
        .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
        .collect();
    let content = if text.is_empty() { Value::Null } else { json!(text) };
    let mut out = vec![json!({ "role": "assistant", "content": content, "tool_calls": calls })];
    for (call_id, text) in answers {
        out.push(json!({ "role": "tool", "tool_call_id": call_id, "content": text }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    }

    #[test]
    fn tool_messages_must_pair() {
        let call = json!({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"});
        let output = json!({"type": "function_call_output", "call_id": "c1", "output": "x"});
        let user = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]});
        assert!(check_tool_pairs(&[call.clone()], std::slice::from_ref(&output)).is_ok());
        assert!(check_tool_pairs(&[], std::slice::from_ref(&output)).is_err(), "output without call");
        assert!(check_tool_pairs(&[call.clone()], std::slice::from_ref(&user)).is_err(), "call left unanswered");
        assert!(check_tool_pairs(&[call, output], &[user]).is_ok());
    }

    #[test]
    fn history_becomes_messages_with_instructions_first() {
        let items = vec![
            user("hi"),
            json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello", "annotations": []}]}),
            json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]}),
            user("and?"),
        ];
        let m = messages(Some("You are terse."), &items);
        assert_eq!(
            m,
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "hi"}),
                json!({"role": "assistant", "content": "hello"}),
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "and?"}),
            ]
        );
        assert_eq!(messages(Some(""), &[]), Vec::<Value>::new());
    }

    #[test]
    fn function_calls_join_the_assistant_turn_and_outputs_become_tool_messages() {
        let items = vec![
            user("weather in Oslo and Paris?"),
            json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]}),
            json!({"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"}),
            json!({"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "weather", "arguments": "{\"city\":\"Paris\"}"}),
            json!({"type": "function_call_output", "call_id": "call_a", "output": "cold"}),
            json!({"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "mild"}]}),
            json!({"type": "function_call", "call_id": "call_c", "name": "clock", "arguments": "{}"}),
        ];
        let m = messages(None, &items);
        assert_eq!(m.len(), 5, "{m:#?}");
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(m[1]["content"], "Checking.");
        assert_eq!(
            m[1]["tool_calls"],
            json!([
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            ])
        );
        assert_eq!(m[2], json!({"role": "tool", "tool_call_id": "call_a", "content": "cold"}));
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "call_b", "content": "mild"}));
        // A call after tool answers opens a new assistant message.
        assert_eq!(m[4]["role"], "assistant");
        assert_eq!(m[4]["content"], Value::Null);
        assert_eq!(m[4]["tool_calls"][0]["id"], "call_c");
    }

    #[test]
    fn stored_file_search_calls_replay_as_a_call_and_its_results() {
        let items = vec![json!({
            "type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["holdfast"],
            "results": [{"file_id": "file-1", "filename": "a.txt", "score": 0.5, "text": "Holdfast keeps state."}],
        })];
        let m = messages(None, &items);
        assert_eq!(m[0]["tool_calls"][0]["function"]["name"], FILE_SEARCH_FUNCTION);
        assert_eq!(m[0]["tool_calls"][0]["id"], "fs_1");
        assert_eq!(m[0]["tool_calls"][0]["function"]["arguments"], "{\"query\":\"holdfast\"}");
        assert_eq!(m[1]["role"], "tool");
        assert_eq!(m[1]["tool_call_id"], "fs_1");
        assert!(m[1]["content"].as_str().unwrap_or_default().contains("Holdfast keeps state."));
    }

    #[test]
    fn images_make_content_parts() {
        let item = json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        ]});
        let m = messages(None, &[item]);
        assert_eq!(
            m[0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ])
        );
    }

    #[test]
    fn tools_translate_and_file_search_becomes_a_function() {
        let tools = vec![
            json!({"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}),
            json!({"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 3}),
        ];
        let t = chat_tools(&tools).expect("tools");
        assert_eq!(
            t.tools[0],
            json!({"type": "function", "function": {
            "name": "weather", "description": "d", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
        );
        assert_eq!(t.tools[1]["function"]["name"], FILE_SEARCH_FUNCTION);
        assert_eq!(
            t.file_search,
            Some(FileSearch { vector_store_ids: vec!["vs_1".into()], max_num_results: 3, filters: None, score_threshold: None })
        );
        assert!(chat_tools(&[json!({"type": "web_search"})]).is_err());
        assert!(chat_tools(&[json!({"type": "file_search", "vector_store_ids": []})]).is_err());
        let clash = [
            json!({"type": "function", "name": "file_search"}),
            json!({"type": "file_search", "vector_store_ids": ["vs_1"]}),
        ];
        assert!(chat_tools(&clash).is_err());
    }

    #[test]
    fn tool_choice_and_text_format_translate() {
        assert_eq!(chat_tool_choice(&json!("required")).expect("ok"), json!("required"));
        assert_eq!(
            chat_tool_choice(&json!({"type": "function", "name": "f"})).expect("ok"),
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(chat_tool_choice(&json!("sometimes")).is_err());
        assert!(chat_tool_choice(&json!({"type": "web_search_preview"})).is_err());
        assert_eq!(response_format(None).expect("ok"), None);
        assert_eq!(response_format(Some(&json!({"format": {"type": "text"}}))).expect("ok"), None);
        assert_eq!(
            response_format(Some(
                &json!({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}})
            ))
            .expect("ok"),
            Some(
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}})
            )
        );
    }

    #[test]
    fn streamed_chunks_accumulate_text_tool_calls_and_usage() {
        let mut turn = Turn::default();
        let chunks = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Let me "}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "check."}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "clock", "arguments": "{}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 2}}}),
        ];
        let deltas: Vec<Delta> = chunks.iter().flat_map(|c| turn.apply_chunk(c)).collect();
        assert_eq!(
            deltas,
            vec![
                Delta::Text("Let me ".into()),
                Delta::Text("check.".into()),
                Delta::Named { call: 0 },
                Delta::Arguments { call: 0, delta: "{\"city\":".into() },
                Delta::Arguments { call: 0, delta: "\"Oslo\"}".into() },
                Delta::Named { call: 1 },
                Delta::Arguments { call: 1, delta: "{}".into() },
            ]
        );
        assert_eq!(turn.text, "Let me check.");
        assert_eq!(
            turn.tool_calls,
            vec![
                ToolCall { id: "call_1".into(), name: "weather".into(), arguments: "{\"city\":\"Oslo\"}".into() },
                ToolCall { id: "call_2".into(), name: "clock".into(), arguments: "{}".into() },
            ]
        );
        assert_eq!(turn.finish_reason.as_deref(), Some("tool_calls"));
        let usage = turn.usage.expect("usage");
        assert_eq!(
            usage,
            Usage { input_tokens: 12, output_tokens: 7, total_tokens: 19, cached_tokens: 2, reasoning_tokens: 0 }
        );
        assert_eq!(usage.to_wire()["input_tokens_details"]["cached_tokens"], 2);

        // Tool calls become function_call items, and the round feeds back as chat messages.
        let item = function_call_item("fc_x", &turn.tool_calls[0], "completed");
        assert_eq!(item["call_id"], "call_1");
        assert_eq!(item["arguments"], "{\"city\":\"Oslo\"}");
        let back = messages(None, &[item]);
        assert_eq!(back[0]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        let round = tool_round_messages(&turn.text, &turn.tool_calls, &[("call_1".into(), "cold".into())]);
        assert_eq!(round[0]["content"], "Let me check.");
        assert_eq!(round[0]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(round[1], json!({"role": "tool", "tool_call_id": "call_1", "content": "cold"}));
    }

    #[test]
    fn whole_completions_and_index_less_calls_are_understood() {
        let completion = json!({
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        });
        let mut turn = Turn::default();
        turn.apply_chunk(&completion_as_chunk(&completion));
        assert_eq!(
            turn.tool_calls,
            vec![ToolCall { id: "c1".into(), name: "f".into(), arguments: "{\"a\":1}".into() }]
        );
        assert_eq!(turn.usage.map(|u| u.total_tokens), Some(7));

        let mut turn = Turn::default();
        turn.apply_chunk(&json!({"choices": [{"delta": {"tool_calls": [
            {"id": "x", "function": {"name": "f", "arguments": {"k": "v"}}},
            {"id": "y", "function": {"name": "g", "arguments": "{}"}},
        ]}}]}));
        assert_eq!(turn.tool_calls.len(), 2);
        assert_eq!(turn.tool_calls[0].arguments, "{\"k\":\"v\"}");
    }

    #[test]
    fn usage_adds_up_across_rounds() {
        let mut total = Usage::default();
        total.add(
            &Usage::from_chat(&json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})).expect("u"),
        );
        total.add(&Usage::from_chat(&json!({"prompt_tokens": 20, "completion_tokens": 1})).expect("u"));
        assert_eq!(total.to_wire()["input_tokens"], 30);
        assert_eq!(total.to_wire()["output_tokens"], 6);
        assert_eq!(total.to_wire()["total_tokens"], 36);
        assert!(Usage::from_chat(&Value::Null).is_none());
    }

    #[test]
    fn message_items_hold_output_text() {
        let m = message_item("msg_1", "hi", "", "completed");
        assert_eq!(m["content"], json!([{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]));
        let r = message_item("msg_2", "", "no", "completed");
        assert_eq!(r["content"], json!([{"type": "refusal", "refusal": "no"}]));
        // And read back as an assistant chat message.
        assert_eq!(messages(None, &[m])[0], json!({"role": "assistant", "content": "hi"}));
    }
}
