//! OpenAI Responses: a model call over a deployment (or an agent's definition), with its history
//! taken from a conversation or a chain of previous responses, executed against the upstream's
//! chat-completions endpoint and journaled.
//!
//! **Journaling** (DESIGN.md invariant 1): a model's output cannot be recomputed on replay, so it
//! is carried in the changes. A stored response is journaled twice: when it starts (`in_progress`,
//! its input items appended to its conversation), and when it ends (status, output items, usage,
//! error; the output appended to its conversation if the response completed). The resource body
//! is the wire object plus its `input_items`, so reads are a lookup.
//!
//! **Execution** runs in a task of its own, which owns the journaling: a client that disconnects
//! from a stream does not stop the response from completing and being stored. The task streams
//! the upstream call, turns its chunks into Responses stream events, runs `file_search` calls
//! itself (feeding the results back to the model, a bounded number of rounds), and stops at the
//! service's upstream timeout or when the response is cancelled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_store::{Order, StateView};
use holdfast_types::{Error, ErrorKind, Kind, Op, ProjectId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::agents::check_tools;
use crate::upstream::Upstream;
use crate::conversations::append_items;
use crate::items::{MAX_ITEMS_PER_REQUEST, normalize};
use crate::translate::{
    self, ChatTools, Delta, FILE_SEARCH_FUNCTION, ToolCall, Turn, Usage, function_call_item, message_item, output_text,
};
use crate::upstream::{self, UpstreamError};
use holdfast_core::Data;
use crate::wire::{List, ListQuery, deleted, metadata, must_get, new_id, store_err};
use holdfast_core::{Action, Caller, Result, Service};

use crate::Agents;
use crate::index::SearchIndex;

/// Most model calls one response makes while it runs `file_search` for the model.
const MAX_ROUNDS: usize = 8;

/// Most previous responses a `previous_response_id` chain is followed through.
const MAX_CHAIN: usize = 1000;

/// How long `cancel` waits for a running response to stop and journal its state.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// `POST /responses`. Unknown fields are ignored, as SDKs send options Holdfast has no use for.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResponseCreate {
    #[serde(default)]
    pub model: Option<String>,
    /// `{"type": "agent_reference", "name", "version"?}` (azure-ai-projects, in `extra_body`).
    #[serde(default)]
    pub agent_reference: Option<Value>,
    /// The same, under the name older azure-ai-projects samples use.
    #[serde(default)]
    pub agent: Option<Value>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    /// A conversation id, or `{"id": …}`.
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
}

/// One Responses stream event: its `type` and its JSON (which repeats the type and carries a
/// `sequence_number`).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub event: String,
    pub data: Value,
}

/// What `create_response` hands back.
#[derive(Debug)]
pub enum Created {
    /// The response object: finished, or `in_progress` for a background response.
    Done(Value),
    /// The events of a streamed response, from `response.created` to its last event.
    Stream(mpsc::UnboundedReceiver<StreamEvent>),
}

/// Responses running in this process, by id: how to cancel each and how to learn it stopped.
static RUNNING: LazyLock<Mutex<HashMap<String, Running>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

struct Running {
    cancel: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// Ends the responses a stopped process left running: each one still `in_progress` or `queued`
/// becomes `failed` with code `server_error`, so no client waits on it forever — except a
/// background one, which is run again to its end ([`Agents::spawn_resumer`]). Run when a
/// project's store is opened, before anything of the project can run.
pub(crate) fn fail_interrupted(project: ProjectId, resume: Arc<ResumeQueue>) -> holdfast_store::Plan {
    Box::new(move |view| {
        unfinished_failed(view, &project, &resume, "server_error", "the server stopped while this response was running; submit it again")
    })
}

/// The ops that fail every foreground response still running when its region lost the primary
/// (code `region_failover`; `holdfast resubmit` runs them again on the new primary). Background
/// ones are run again at the new primary, to their end.
pub(crate) fn failed_by_failover(view: &holdfast_store::StateView<'_>, project: &ProjectId, resume: &ResumeQueue) -> Result<Vec<Op>> {
    unfinished_failed(
        view,
        project,
        resume,
        REGION_FAILOVER,
        "the region running this response lost the project's primary; resubmit it (holdfast resubmit)",
    )
}

/// The error code of a response a failover cut off.
pub const REGION_FAILOVER: &str = "region_failover";

/// Background responses to run again once their project serves, for one service: (project id,
/// response id). Filled by the plans that end a project's cut-off responses (its open, its
/// promotion), drained by [`Agents::spawn_resumer`]; an entry that is stale by then (its
/// response ended, or was run again, meanwhile) is found so by the resume's first write.
#[derive(Default)]
pub(crate) struct ResumeQueue {
    queue: Mutex<Vec<(ProjectId, String)>>,
    wake: tokio::sync::Notify,
}

impl ResumeQueue {
    fn push(&self, entries: impl IntoIterator<Item = (ProjectId, String)>) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.extend(entries);
        }
        self.wake.notify_one();
    }

    /// Everything queued, each once.
    fn drain(&self) -> Vec<(ProjectId, String)> {
        let mut taken = self.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
        taken.sort();
        taken.dedup();
        taken
    }
}

fn unfinished_failed(
    view: &holdfast_store::StateView<'_>,
    project: &ProjectId,
    resume: &ResumeQueue,
    code: &str,
    message: &str,
) -> Result<Vec<Op>> {
    let rows = view
        .list(Kind::Response, None, None, usize::MAX >> 1, holdfast_store::Order::Asc)
        .map_err(crate::wire::store_err)?;
    let (background, foreground): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter(|r| matches!(r.body["status"].as_str(), Some("in_progress" | "queued")))
        .partition(|r| r.body["background"] == true);
    if !background.is_empty() {
        resume.push(background.into_iter().map(|r| (project.clone(), r.id)));
    }
    Ok(foreground
        .into_iter()
        .map(|r| Op::Patch {
            kind: Kind::Response,
            id: r.id,
            patch: json!({ "status": "failed", "error": { "code": code, "message": message } }),
        })
        .collect())
}

/// Whether a response with this id is executing in this process.
pub fn is_running(id: &str) -> bool {
    RUNNING.lock().map(|r| r.contains_key(id)).unwrap_or(false)
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What is stored of a response: its wire object, plus its input items (for `input_items` and
/// for responses that name it as `previous_response_id`).
fn stored_body(wire: &Value, input_items: &[Value]) -> Value {
    let mut body = wire.clone();
    body["input_items"] = json!(input_items);
    body
}

/// The wire object of a stored response.
fn stored_wire(r: &holdfast_store::Resource) -> Value {
    let mut wire = r.body.clone();
    if let Some(o) = wire.as_object_mut() {
        o.remove("input_items");
    }
    wire
}

fn response_not_found(id: &str) -> Error {
    Error::not_found(format!("response {id:?} not found"))
}

/// Input as items: a string is one user message (an empty one is no input: the azure-ai-projects
/// samples send `input=""` to answer a conversation as it stands); a list is normalised item by
/// item.
/// `file_search_call` items (a previous output passed back as input) are kept as they are.
fn input_items(input: Option<Value>) -> Result<Vec<Value>> {
    match input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => {
            Ok(vec![normalize(&json!({ "type": "message", "role": "user", "content": text }))?])
        }
        Some(Value::Array(items)) => {
            if items.len() > MAX_ITEMS_PER_REQUEST {
                return Err(Error::invalid(format!(
                    "input has {} items; at most {MAX_ITEMS_PER_REQUEST} are allowed",
                    items.len()
                )));
            }
            items
                .iter()
                .map(|item| match item.get("type").and_then(Value::as_str) {
                    Some("file_search_call") => file_search_input(item),
                    _ => normalize(item),
                })
                .collect()
        }
        Some(_) => Err(Error::invalid("input must be a string or a list of items")),
    }
}

fn file_search_input(item: &Value) -> Result<Value> {
    let queries = item.get("queries").and_then(Value::as_array).cloned().unwrap_or_default();
    if queries.iter().any(|q| !q.is_string()) {
        return Err(Error::invalid("a file_search_call item's queries must be strings"));
    }
    let id = match item.get("id").and_then(Value::as_str) {
        Some(id) if id.starts_with("fs_") && id.len() <= 128 => id.to_owned(),
        _ => new_id("fs_"),
    };
    Ok(json!({
        "id": id,
        "type": "file_search_call",
        "status": item.get("status").and_then(Value::as_str).unwrap_or("completed"),
        "queries": queries,
        "results": item.get("results").filter(|r| r.is_array()).cloned().unwrap_or(Value::Null),
    }))
}

/// `conversation`: an id string or `{"id": …}`.
fn conversation_id(value: Option<Value>) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id)),
        Some(Value::Object(o)) => match o.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Some(id.to_owned())),
            _ => Err(Error::invalid("conversation must be an id or an object with an id")),
        },
        Some(_) => Err(Error::invalid("conversation must be an id or an object with an id")),
    }
}

/// An agent reference: `(name, version)`.
fn agent_reference(value: Option<Value>) -> Result<Option<(String, Option<String>)>> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    if let Value::String(name) = &value {
        return Ok(Some((name.clone(), None)));
    }
    let Some(o) = value.as_object() else {
        return Err(Error::invalid(
            "agent_reference must be an object {\"type\": \"agent_reference\", \"name\", \"version\"}",
        ));
    };
    if let Some(t) = o.get("type").and_then(Value::as_str)
        && t != "agent_reference"
    {
        return Err(Error::invalid(format!("unsupported agent reference type {t:?}; use \"agent_reference\"")));
    }
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::invalid("agent_reference needs the agent's name"))?;
    let version = match o.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(Error::invalid("agent_reference version must be a string")),
    };
    Ok(Some((name.to_owned(), version)))
}

/// The items of a conversation, oldest first.
fn conversation_items(view: &StateView<'_>, cid: &str) -> Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = view.list(Kind::Item, Some(cid), after.as_deref(), 1000, Order::Asc).map_err(store_err)?;
        let last = page.last().map(|r| r.id.clone());
        let full = page.len() == 1000;
        out.extend(page.into_iter().map(|r| r.body));
        match (full, last) {
            (true, Some(last)) => after = Some(last),
            _ => return Ok(out),
        }
    }
}

/// The input and output items of a chain of previous responses, oldest first.
fn chain_items(view: &StateView<'_>, previous: &str) -> Result<Vec<Value>> {
    let mut turns: Vec<Vec<Value>> = Vec::new();
    let mut next = Some(previous.to_owned());
    let mut seen = HashSet::new();
    while let Some(id) = next.take() {
        if turns.len() >= MAX_CHAIN || !seen.insert(id.clone()) {
            break;
        }
        let r = view
            .get(Kind::Response, &id)
            .map_err(store_err)?
            .ok_or_else(|| Error::not_found(format!("previous response {id:?} not found")))?;
        let wire = stored_wire(&r);
        if matches!(wire["status"].as_str(), Some("in_progress" | "queued")) {
            return Err(Error::invalid(format!(
                "previous response {id:?} is still in progress; wait for it to finish"
            )));
        }
        let mut items = r.body["input_items"].as_array().cloned().unwrap_or_default();
        items.extend(wire["output"].as_array().cloned().unwrap_or_default());
        turns.push(items);
        next = wire["previous_response_id"].as_str().map(str::to_owned);
    }
    Ok(turns.into_iter().rev().flatten().collect())
}

/// Gives fresh ids to input items whose ids exist in the project (or repeat within the input),
/// so they can be appended to a conversation.
fn fresh_ids(view: &StateView<'_>, items: &mut [Value]) -> Result<()> {
    let mut seen = HashSet::new();
    for item in items.iter_mut() {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        if !seen.insert(id.clone()) || view.get(Kind::Item, &id).map_err(store_err)?.is_some() {
            let prefix = id.split_once('_').map(|(p, _)| format!("{p}_")).unwrap_or_else(|| "item_".into());
            let fresh = new_id(&prefix);
            seen.insert(fresh.clone());
            item["id"] = json!(fresh);
        }
    }
    Ok(())
}

fn check_unit(name: &str, value: Option<f64>, max: f64) -> Result<()> {
    match value {
        Some(v) if !(0.0..=max).contains(&v) => {
            Err(Error::invalid(format!("{name} must be between 0 and {max}, got {v}")))
        }
        _ => Ok(()),
    }
}

impl Agents {
    /// Creates a response and runs it: answers with the finished response, with the events of
    /// a stream, or (in the background) with the response as it starts.
    pub async fn create_response(
        self: &Arc<Self>,
        caller: &Caller,
        project: &str,
        req: ResponseCreate,
    ) -> Result<Created> {
        self.create_response_as(caller, project, req, None).await
    }

    /// [`Agents::create_response`], or, with `resume` (its id and creation time), a background
    /// response a stop or a failover cut off, run again under its own id: its record is put
    /// again in progress (its input is already where it was put), then finished as any.
    async fn create_response_as(
        self: &Arc<Self>,
        caller: &Caller,
        project: &str,
        req: ResponseCreate,
        resume: Option<holdfast_store::Resource>,
    ) -> Result<Created> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let store = req.store.unwrap_or(true);
        let stream = req.stream.unwrap_or(false);
        let background = req.background.unwrap_or(false);
        let conversation = conversation_id(req.conversation)?;
        let previous = req.previous_response_id.filter(|p| !p.is_empty());
        if background && !store {
            return Err(Error::invalid(
                "background responses must be stored: do not combine background with store: false",
            ));
        }
        if conversation.is_some() && previous.is_some() {
            return Err(Error::invalid("use either conversation or previous_response_id, not both"));
        }
        if conversation.is_some() && !store {
            return Err(Error::invalid(
                "a response in a conversation is stored in it: do not combine conversation with store: false",
            ));
        }
        let metadata = metadata(req.metadata)?;
        check_unit("temperature", req.temperature, 2.0)?;
        check_unit("top_p", req.top_p, 1.0)?;
        if req.max_output_tokens == Some(0) {
            return Err(Error::invalid("max_output_tokens must be at least 1"));
        }
        let mut input = input_items(req.input)?;

        // The agent, if one is referenced, supplies the model and defaults.
        let agent = agent_reference(req.agent_reference.or(req.agent))?;
        let (definition, agent_wire) = match &agent {
            Some((name, version)) => {
                let v = self.agent_definition(&data, name, version.as_deref()).await?;
                let wire = json!({ "type": "agent_reference", "name": name, "version": v["version"] });
                (v["definition"].clone(), Some(wire))
            }
            None => (Value::Null, None),
        };
        let model = definition["model"]
            .as_str()
            .map(str::to_owned)
            .or(req.model)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| Error::invalid("model is required: the name of a deployment (or reference an agent)"))?;
        let deployment = self.deployment(&data, &model).await?;
        // A connection whose secret does not open here is left out while another is there to
        // call (a fallback made in a region this one cannot read the secrets of).
        let mut upstreams = Vec::new();
        let mut unusable = None;
        for connection in deployment.connections() {
            match self.upstream(&data, connection).await {
                Ok(upstream) => upstreams.push(upstream),
                Err(e) => {
                    tracing::warn!(connection, error = %e, "a deployment's connection cannot be used here; trying the others");
                    unusable.get_or_insert(e);
                }
            }
        }
        if upstreams.is_empty() {
            return Err(unusable.unwrap_or_else(|| Error::internal("the deployment names no connection")));
        }

        let mut tools: Vec<Value> = definition["tools"].as_array().cloned().unwrap_or_default();
        match req.tools {
            None | Some(Value::Null) => {}
            Some(Value::Array(t)) => tools.extend(t),
            Some(_) => return Err(Error::invalid("tools must be an array")),
        }
        let chat = translate::chat_tools(&tools)?;
        // The request's options win over the agent's.
        let or_agent = |v: Option<Value>, field: &str| {
            v.filter(|v| !v.is_null()).or_else(|| Some(definition[field].clone()).filter(|v| !v.is_null()))
        };
        let tool_choice = or_agent(req.tool_choice, "tool_choice");
        let chat_tool_choice = tool_choice.as_ref().map(translate::chat_tool_choice).transpose()?;
        let text = or_agent(req.text, "text");
        let response_format = translate::response_format(text.as_ref())?;
        let temperature = req.temperature.or(definition["temperature"].as_f64());
        let top_p = req.top_p.or(definition["top_p"].as_f64());
        let instructions = [definition["instructions"].as_str(), req.instructions.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        let instructions = Some(instructions).filter(|s| !s.is_empty());

        // History, read together with the checks of what the request names.
        let (cid, prev, checked_tools) = (conversation.clone(), previous.clone(), json!(tools));
        let history = data
            .read(move |view| {
                check_tools(view, Some(&checked_tools))?;
                if let Some(cid) = &cid {
                    if view.get(Kind::Conversation, cid).map_err(store_err)?.is_none() {
                        return Err(Error::not_found(format!("conversation {cid:?} not found")));
                    }
                    return conversation_items(view, cid);
                }
                match &prev {
                    Some(p) => chain_items(view, p),
                    None => Ok(Vec::new()),
                }
            })
            .await?;
        translate::check_tool_pairs(&history, &input)?;

        let (id, created_at) = match &resume {
            Some(record) => (record.id.clone(), record.body["created_at"].clone()),
            None => (new_id("resp_"), json!(now_seconds())),
        };
        let mut wire = json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": "in_progress",
            "completed_at": null,
            "background": background,
            "error": null,
            "incomplete_details": null,
            "instructions": instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": null,
            "model": model,
            "output": [],
            "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": previous,
            "conversation": conversation.as_ref().map(|c| json!({ "id": c })),
            "reasoning": null,
            "store": store,
            "temperature": temperature,
            "text": text.clone().unwrap_or_else(|| json!({ "format": { "type": "text" } })),
            "tool_choice": tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": tools,
            "top_p": top_p,
            "truncation": "disabled",
            "usage": null,
            "user": req.user,
            "metadata": metadata,
            "agent_reference": agent_wire,
        });
        if let Some(record) = &resume {
            // Said in the record, not in the user's metadata: where and when it was run again.
            wire["holdfast"]["resumed"] = json!({ "region": self.core.region(), "at": now_seconds() });
            // What only the first request said stays as it was.
            wire["agent_reference"] = record.body["agent_reference"].clone();
            wire["user"] = record.body["user"].clone();
        }

        // Registered before it is stored, so a cancel never finds it stored but not running.
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        if store && let Ok(mut running) = RUNNING.lock() {
            running.insert(id.clone(), Running { cancel: cancel_tx.clone(), done: done_rx });
        }
        let unregister = |id: &str| {
            if let Ok(mut running) = RUNNING.lock() {
                running.remove(id);
            }
        };

        // The first change: the response in progress, its input in its conversation.
        if store {
            let slot = Arc::new(std::sync::OnceLock::<Vec<Value>>::new());
            let (plan_id, plan_wire, plan_conv, plan_slot) =
                (id.clone(), wire.clone(), conversation.clone(), slot.clone());
            let mut plan_input = input.clone();
            let expected = resume.clone();
            data.commit(Box::new(move |view| {
                let mut ops = Vec::new();
                if let Some(record) = &expected {
                    // Run again only what is still the cut-off response it was: not one that
                    // ended, was deleted, or was run again meanwhile.
                    let now = view.get(Kind::Response, &record.id).map_err(store_err)?;
                    if now.as_ref().map(|r| &r.body) != Some(&record.body) {
                        return Err(Error::conflict(format!("{STALE_RESUME}: response {}", record.id)));
                    }
                    // Its input is where the first run put it (in its conversation, if any):
                    // the model gets it from there, and the record keeps listing it.
                    let _ = plan_slot.set(plan_input.clone());
                    if plan_input.is_empty() {
                        plan_input = record.body["input_items"].as_array().cloned().unwrap_or_default();
                    }
                    let body = stored_body(&plan_wire, &plan_input);
                    return Ok(vec![Op::Put { kind: Kind::Response, id: plan_id, parent: None, body }]);
                }
                if let Some(cid) = &plan_conv {
                    must_get(view, Kind::Conversation, cid, "conversation", cid)?;
                    fresh_ids(view, &mut plan_input)?;
                }
                ops.push(Op::Put {
                    kind: Kind::Response,
                    id: plan_id,
                    parent: None,
                    body: stored_body(&plan_wire, &plan_input),
                });
                if let Some(cid) = &plan_conv {
                    ops.extend(append_items(cid, &plan_input));
                }
                let _ = plan_slot.set(plan_input);
                Ok(ops)
            }))
            .await
            .inspect_err(|_| unregister(&id))?;
            if let Some(items) = slot.get() {
                input = items.clone();
            }
        }

        // Model input: instructions, history, then the new input.
        let mut all = history;
        all.extend(input.iter().cloned());
        let messages = translate::messages(instructions.as_deref(), &all);

        let (events_tx, events_rx) = if stream {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let started = wire.clone();
        let run = Run {
            service: Arc::downgrade(&self.core),
            data,
            upstreams,
            attempt_timeout: self.attempt_timeout,
            breakers: self.breakers.clone(),
            upstream_model: deployment.model,
            messages,
            chat,
            chat_tool_choice,
            sampling: Sampling {
                temperature,
                top_p,
                max_output_tokens: req.max_output_tokens,
                parallel_tool_calls: req.parallel_tool_calls,
                response_format,
            },
            wire,
            input_items: input,
            conversation,
            store,
            output: Vec::new(),
            usage: None,
            events: events_tx,
            seq: 0,
            cancel: cancel_rx,
            _cancel_tx: cancel_tx,
            deadline: Instant::now() + self.upstream_timeout,
            timeout: self.upstream_timeout,
        };
        let (result_tx, result_rx) = oneshot::channel();
        tokio::spawn(async move {
            let id = run.wire["id"].as_str().unwrap_or_default().to_owned();
            let result = run.execute().await;
            unregister(&id);
            let _ = done_tx.send(true);
            let _ = result_tx.send(result);
        });

        if let Some(rx) = events_rx {
            return Ok(Created::Stream(rx));
        }
        if background {
            return Ok(Created::Done(started));
        }
        result_rx.await.map(Created::Done).map_err(|_| Error::internal("the response task ended without an answer"))
    }

    pub async fn get_response(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let id = id.to_owned();
        data.read(move |view| {
            let r = view.get(Kind::Response, &id).map_err(store_err)?.ok_or_else(|| response_not_found(&id))?;
            Ok(stored_wire(&r))
        })
        .await
    }

    /// Deletes a stored response (its conversation's items stay). A response still running
    /// finishes, but is not stored again.
    pub async fn delete_response(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let rid = id.to_owned();
        data.commit(Box::new(move |view| {
            if view.get(Kind::Response, &rid).map_err(store_err)?.is_none() {
                return Err(response_not_found(&rid));
            }
            Ok(vec![Op::Delete { kind: Kind::Response, id: rid }])
        }))
        .await?;
        Ok(deleted(id, "response"))
    }

    /// Cancels a response in progress: it stops, and is stored with status `cancelled`. A
    /// finished response cannot be cancelled.
    pub async fn cancel_response(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let current = self.get_response(caller, project, id).await?;
        let status = current["status"].as_str().unwrap_or_default().to_owned();
        if !matches!(status.as_str(), "in_progress" | "queued") {
            return Err(Error::invalid(format!(
                "response {id:?} is {status}; only a response in progress can be cancelled"
            )));
        }
        let running = RUNNING.lock().ok().and_then(|r| r.get(id).map(|e| (e.cancel.clone(), e.done.clone())));
        match running {
            Some((cancel, mut done)) => {
                let _ = cancel.send(true);
                let _ = tokio::time::timeout(CANCEL_WAIT, done.wait_for(|d| *d)).await;
            }
            None => {
                // Not running here (the server restarted while it ran): record that it stopped.
                let rid = id.to_owned();
                data.commit(Box::new(move |view| {
                    let r =
                        view.get(Kind::Response, &rid).map_err(store_err)?.ok_or_else(|| response_not_found(&rid))?;
                    let mut body = r.body;
                    if !matches!(body["status"].as_str(), Some("in_progress" | "queued")) {
                        return Ok(Vec::new());
                    }
                    body["status"] = json!("cancelled");
                    Ok(vec![Op::Put { kind: Kind::Response, id: rid, parent: None, body }])
                }))
                .await?;
            }
        }
        self.get_response(caller, project, id).await
    }

    /// The input items of a stored response (`after`, `limit`, `order`; newest first by default).
    pub async fn list_response_input_items(
        &self,
        caller: &Caller,
        project: &str,
        id: &str,
        query: ListQuery,
    ) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let limit = query.limit()?;
        let order = query.order(Order::Desc)?;
        let id = id.to_owned();
        let mut items = data
            .read(move |view| {
                let r = view.get(Kind::Response, &id).map_err(store_err)?.ok_or_else(|| response_not_found(&id))?;
                Ok(r.body["input_items"].as_array().cloned().unwrap_or_default())
            })
            .await?;
        if order == Order::Desc {
            items.reverse();
        }
        let start = match &query.after {
            None => 0,
            Some(after) => match items.iter().position(|i| i["id"].as_str() == Some(after.as_str())) {
                Some(p) => p + 1,
                None => {
                    return Err(Error::invalid(format!(
                        "'after' cursor {after:?} does not name an object in this list"
                    )));
                }
            },
        };
        let rest: Vec<Value> = items.into_iter().skip(start).collect();
        let has_more = rest.len() > limit;
        Ok(List::new(rest.into_iter().take(limit).collect(), has_more))
    }
}

// Execution ---------------------------------------------------------------------------------------

/// Chat-completions sampling options from the request (or the agent).
struct Sampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_output_tokens: Option<u64>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
}

/// How a response ended.
#[derive(Debug)]
enum Outcome {
    Completed,
    Incomplete(&'static str),
    Failed(UpstreamError),
    Cancelled,
}

/// Why a wait was cut short.
enum Stop {
    Deadline,
    Cancelled,
}

/// Runs `fut` unless the response is cancelled or its deadline passes first.
async fn race<F: std::future::Future>(
    cancel: &mut watch::Receiver<bool>,
    deadline: Instant,
    fut: F,
) -> Result<F::Output, Stop> {
    let cancelled = async {
        if cancel.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        () = cancelled => Err(Stop::Cancelled),
        () = tokio::time::sleep_until(deadline) => Err(Stop::Deadline),
        out = fut => Ok(out),
    }
}

/// An output item being streamed: its position in `output` and its id.
#[derive(Clone, Debug)]
struct Open {
    index: usize,
    id: String,
}

/// The items of one model turn that are open (announced, not yet done).
#[derive(Default)]
struct OpenItems {
    message: Option<Open>,
    /// By position in `Turn::tool_calls`; `None` for calls not announced (internal, or unnamed yet).
    calls: Vec<Option<Open>>,
}

struct Run {
    /// Weak, so a running response never keeps a stopped server (and its data-directory lock)
    /// alive.
    service: std::sync::Weak<Service>,
    data: Data,
    /// The deployment's connections, in the order they are tried.
    upstreams: Vec<Upstream>,
    attempt_timeout: Duration,
    breakers: Arc<upstream::Breakers>,
    upstream_model: String,
    messages: Vec<Value>,
    chat: ChatTools,
    chat_tool_choice: Option<Value>,
    sampling: Sampling,
    /// The response object; its output and usage are filled in at the end.
    wire: Value,
    input_items: Vec<Value>,
    conversation: Option<String>,
    store: bool,
    output: Vec<Value>,
    usage: Option<Usage>,
    events: Option<mpsc::UnboundedSender<StreamEvent>>,
    seq: u64,
    cancel: watch::Receiver<bool>,
    /// Keeps the cancel channel open for responses that are not registered.
    _cancel_tx: watch::Sender<bool>,
    deadline: Instant,
    timeout: Duration,
}

impl Run {
    async fn execute(mut self) -> Value {
        let started = self.wire.clone();
        self.emit("response.created", json!({ "response": started }));
        self.emit("response.in_progress", json!({ "response": started }));
        let outcome = self.rounds().await;
        let (status, event) = match &outcome {
            Outcome::Completed => ("completed", "response.completed"),
            Outcome::Incomplete(_) => ("incomplete", "response.incomplete"),
            Outcome::Failed(_) => ("failed", "response.failed"),
            Outcome::Cancelled => ("cancelled", "response.cancelled"),
        };
        match &outcome {
            Outcome::Failed(e) => {
                tracing::warn!(response = %self.wire["id"], code = e.code, error = %e.message, "response failed");
                self.wire["error"] = json!({ "code": e.code, "message": e.message });
            }
            Outcome::Incomplete(reason) => self.wire["incomplete_details"] = json!({ "reason": reason }),
            Outcome::Completed => self.wire["completed_at"] = json!(now_seconds()),
            Outcome::Cancelled => {}
        }
        self.wire["status"] = json!(status);
        self.wire["output"] = json!(self.output);
        self.wire["usage"] = self.usage.map_or(Value::Null, Usage::to_wire);
        let mut event = event;
        if self.store
            && let Err(e) = self.journal_end(matches!(outcome, Outcome::Completed | Outcome::Incomplete(_))).await
        {
            // Never report an end that is not stored: the client is told the response failed.
            tracing::error!(response = %self.wire["id"], error = %e, "could not store the end of a response");
            self.wire["status"] = json!("failed");
            self.wire["error"] = json!({ "code": "server_error", "message": format!("the response could not be stored: {e}") });
            event = "response.failed";
        }
        let done = self.wire.clone();
        self.emit(event, json!({ "response": done }));
        self.wire
    }

    /// The second change: the finished response, and its output in its conversation. Skipped
    /// for what was deleted meanwhile.
    async fn journal_end(&self, append: bool) -> Result<()> {
        let id = self.wire["id"].as_str().unwrap_or_default().to_owned();
        let body = stored_body(&self.wire, &self.input_items);
        let (conversation, output) = (self.conversation.clone(), self.output.clone());
        let result = self
            .data
            .commit(Box::new(move |view| {
                let mut ops = Vec::new();
                // Unless it was deleted meanwhile, or ended already (cancelled after a restart).
                let current = view.get(Kind::Response, &id).map_err(store_err)?;
                if current.is_some_and(|r| r.body["status"] == "in_progress") {
                    ops.push(Op::Put { kind: Kind::Response, id, parent: None, body });
                }
                if append
                    && let Some(cid) = conversation
                    && view.get(Kind::Conversation, &cid).map_err(store_err)?.is_some()
                {
                    let mut output = output;
                    fresh_ids(view, &mut output)?;
                    ops.extend(append_items(&cid, &output));
                }
                Ok(ops)
            }))
            .await;
        result.map(|_| ())
    }

    fn emit(&mut self, kind: &str, mut data: Value) {
        let Some(tx) = &self.events else { return };
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        if tx.send(StreamEvent { event: kind.to_owned(), data }).is_err() {
            // The client left; the response goes on without it.
            self.events = None;
        }
    }

    fn stopped(&self, stop: Stop) -> Outcome {
        match stop {
            Stop::Cancelled => Outcome::Cancelled,
            Stop::Deadline => Outcome::Failed(UpstreamError::server(format!(
                "the upstream model did not finish within the configured timeout of {:?}",
                self.timeout
            ))),
        }
    }

    fn is_internal(&self, call: &ToolCall) -> bool {
        call.name == FILE_SEARCH_FUNCTION && self.chat.file_search.is_some()
    }

    fn request_body(&self, last_round: bool) -> Value {
        let mut body = json!({
            "model": self.upstream_model,
            "messages": self.messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let s = &self.sampling;
        if let Some(t) = s.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = s.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(m) = s.max_output_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(f) = &s.response_format {
            body["response_format"] = f.clone();
        }
        if !self.chat.tools.is_empty() {
            body["tools"] = json!(self.chat.tools);
            if let Some(p) = s.parallel_tool_calls {
                body["parallel_tool_calls"] = json!(p);
            }
            // The last round must answer rather than search again.
            if last_round && self.chat.file_search.is_some() {
                body["tool_choice"] = json!("none");
            } else if let Some(c) = &self.chat_tool_choice {
                body["tool_choice"] = c.clone();
            }
        }
        body
    }

    async fn rounds(&mut self) -> Outcome {
        for round in 0..MAX_ROUNDS {
            let body = self.request_body(round + 1 == MAX_ROUNDS);
            let opened = upstream::open_chat(&self.upstreams, &body, self.attempt_timeout, &self.breakers);
            let mut chat = match race(&mut self.cancel, self.deadline, opened).await {
                Err(stop) => return self.stopped(stop),
                Ok(Err(e)) => return Outcome::Failed(e),
                Ok(Ok((chat, served))) => {
                    if self.upstreams.len() > 1 {
                        // Which of the deployment's connections answered (the last round's).
                        self.wire["holdfast"]["upstream"] = json!(self.upstreams[served].connection);
                    }
                    chat
                }
            };
            let mut turn = Turn::default();
            let mut open = OpenItems::default();
            loop {
                let next = match race(&mut self.cancel, self.deadline, chat.next()).await {
                    Err(stop) => {
                        self.close(&turn, &mut open, "incomplete");
                        return self.stopped(stop);
                    }
                    Ok(next) => next,
                };
                match next {
                    None => break,
                    Some(Err(e)) => {
                        self.close(&turn, &mut open, "incomplete");
                        return Outcome::Failed(e);
                    }
                    Some(Ok(chunk)) => {
                        for delta in turn.apply_chunk(&chunk) {
                            self.on_delta(delta, &mut turn, &mut open);
                        }
                    }
                }
            }
            drop(chat);
            self.close(&turn, &mut open, "completed");
            if let Some(u) = &turn.usage {
                self.usage.get_or_insert_with(Usage::default).add(u);
            }
            match turn.finish_reason.as_deref() {
                Some("length") => return Outcome::Incomplete("max_output_tokens"),
                Some("content_filter") => return Outcome::Incomplete("content_filter"),
                _ => {}
            }
            let internal: Vec<ToolCall> = turn.tool_calls.iter().filter(|c| self.is_internal(c)).cloned().collect();
            let external = turn.tool_calls.iter().any(|c| !self.is_internal(c) && !c.name.is_empty());
            if internal.is_empty() {
                return Outcome::Completed;
            }
            let mut answers = Vec::new();
            for call in &internal {
                match self.search(call).await {
                    Ok(text) => answers.push((call.id.clone(), text)),
                    Err(stop) => return self.stopped(stop),
                }
            }
            if external {
                return Outcome::Completed;
            }
            self.messages.extend(translate::tool_round_messages(&turn.text, &internal, &answers));
        }
        Outcome::Completed
    }

    fn on_delta(&mut self, delta: Delta, turn: &mut Turn, open: &mut OpenItems) {
        match delta {
            Delta::Text(text) => {
                let item = match &open.message {
                    Some(item) => item.clone(),
                    None => {
                        let item = Open { index: self.output.len(), id: new_id("msg_") };
                        let added = json!({ "id": item.id, "type": "message", "role": "assistant", "status": "in_progress", "content": [] });
                        self.output.push(added.clone());
                        self.emit("response.output_item.added", json!({ "output_index": item.index, "item": added }));
                        self.emit(
                            "response.content_part.added",
                            json!({ "item_id": item.id, "output_index": item.index, "content_index": 0, "part": output_text("") }),
                        );
                        open.message = Some(item.clone());
                        item
                    }
                };
                self.emit(
                    "response.output_text.delta",
                    json!({ "item_id": item.id, "output_index": item.index, "content_index": 0, "delta": text, "logprobs": [] }),
                );
            }
            // Refusals are reported whole, in the message item, when the turn ends.
            Delta::Refusal(_) => {}
            Delta::Named { call } => {
                if open.calls.len() <= call {
                    open.calls.resize(call + 1, None);
                }
                if turn.tool_calls[call].id.is_empty() {
                    turn.tool_calls[call].id = new_id("call_");
                }
                if self.is_internal(&turn.tool_calls[call]) {
                    return;
                }
                let item = Open { index: self.output.len(), id: new_id("fc_") };
                let pending = ToolCall { arguments: String::new(), ..turn.tool_calls[call].clone() };
                let added = function_call_item(&item.id, &pending, "in_progress");
                self.output.push(added.clone());
                self.emit("response.output_item.added", json!({ "output_index": item.index, "item": added }));
                let so_far = turn.tool_calls[call].arguments.clone();
                if !so_far.is_empty() {
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({ "item_id": item.id, "output_index": item.index, "delta": so_far }),
                    );
                }
                open.calls[call] = Some(item);
            }
            Delta::Arguments { call, delta } => {
                if let Some(Some(item)) = open.calls.get(call).cloned() {
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({ "item_id": item.id, "output_index": item.index, "delta": delta }),
                    );
                }
            }
        }
    }

    /// Ends the turn's open items with `status`.
    fn close(&mut self, turn: &Turn, open: &mut OpenItems, status: &str) {
        let message = open.message.take().or_else(|| {
            // A refusal with no text still makes a message.
            (!turn.refusal.is_empty()).then(|| {
                let item = Open { index: self.output.len(), id: new_id("msg_") };
                let added = json!({ "id": item.id, "type": "message", "role": "assistant", "status": "in_progress", "content": [] });
                self.output.push(added.clone());
                self.emit("response.output_item.added", json!({ "output_index": item.index, "item": added }));
                item
            })
        });
        if let Some(item) = message {
            if !turn.text.is_empty() {
                self.emit(
                    "response.output_text.done",
                    json!({ "item_id": item.id, "output_index": item.index, "content_index": 0, "text": turn.text, "logprobs": [] }),
                );
                self.emit(
                    "response.content_part.done",
                    json!({ "item_id": item.id, "output_index": item.index, "content_index": 0, "part": output_text(&turn.text) }),
                );
            }
            let done = message_item(&item.id, &turn.text, &turn.refusal, status);
            self.output[item.index] = done.clone();
            self.emit("response.output_item.done", json!({ "output_index": item.index, "item": done }));
        }
        for (call, item) in std::mem::take(&mut open.calls).into_iter().enumerate() {
            let Some(item) = item else { continue };
            let tool_call = &turn.tool_calls[call];
            self.emit(
                "response.function_call_arguments.done",
                json!({ "item_id": item.id, "output_index": item.index, "arguments": tool_call.arguments }),
            );
            let done = function_call_item(&item.id, tool_call, status);
            self.output[item.index] = done.clone();
            self.emit("response.output_item.done", json!({ "output_index": item.index, "item": done }));
        }
    }

    /// Runs one `file_search` call: a `file_search_call` output item with its results, and the
    /// text the model reads back.
    async fn search(&mut self, call: &ToolCall) -> Result<String, Stop> {
        let query = serde_json::from_str::<Value>(&call.arguments)
            .ok()
            .and_then(|a| a.get("query").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| call.arguments.clone());
        let Some(fs) = self.chat.file_search.clone() else { return Ok(String::new()) };
        let item = Open { index: self.output.len(), id: new_id("fs_") };
        let added = json!({ "id": item.id, "type": "file_search_call", "status": "in_progress", "queries": [query], "results": null });
        self.output.push(added.clone());
        self.emit("response.output_item.added", json!({ "output_index": item.index, "item": added }));
        self.emit("response.file_search_call.in_progress", json!({ "item_id": item.id, "output_index": item.index }));
        self.emit("response.file_search_call.searching", json!({ "item_id": item.id, "output_index": item.index }));
        let found = match self.service.upgrade() {
            Some(service) => {
                race(
                    &mut self.cancel,
                    self.deadline,
                    SearchIndex(&service).search_filtered(
                        &self.data,
                        &fs.vector_store_ids,
                        std::slice::from_ref(&query),
                        fs.max_num_results,
                        fs.filters.clone(),
                        fs.score_threshold,
                    ),
                )
                .await
            }
            None => Ok(Err(Error::unavailable("the server is stopping"))),
        };
        let (status, results, text) = match found {
            Err(stop) => {
                let mut failed = added;
                failed["status"] = json!("incomplete");
                self.output[item.index] = failed;
                return Err(stop);
            }
            Ok(Ok(hits)) => {
                let results: Vec<Value> = hits.iter().map(translate::file_search_result).collect();
                let text = translate::file_search_text(&results);
                ("completed", json!(results), text)
            }
            Ok(Err(e)) => {
                tracing::warn!(response = %self.wire["id"], error = %e, "file search failed");
                ("failed", Value::Null, format!("The search failed: {}", e.message))
            }
        };
        if status == "completed" {
            self.emit("response.file_search_call.completed", json!({ "item_id": item.id, "output_index": item.index }));
        }
        let done = json!({ "id": item.id, "type": "file_search_call", "status": status, "queries": [query], "results": results });
        self.output[item.index] = done.clone();
        self.emit("response.output_item.done", json!({ "output_index": item.index, "item": done }));
        Ok(text)
    }
}

/// Responses read per step of a scan.
const SCAN_PAGE: usize = 500;

/// How many times (a second apart) a cut-off background response is tried again while its
/// project does not serve yet.
const RESUME_TRIES: u32 = 60;

/// What a resume's first write says when the response is no longer the one it was to run.
const STALE_RESUME: &str = "the response changed since it was cut off";

/// The request that makes a response again from its record: its model, instructions, tools and
/// options (an agent's already merged in), and its input — the input items, or, for a response
/// in a conversation (whose input the conversation already holds), the conversation itself.
fn request_of(b: &Value) -> ResponseCreate {
    let conversation = b["conversation"]["id"].as_str().map(|c| json!(c));
    let opt_f64 = |field: &str| b[field].as_f64();
    ResponseCreate {
        model: b["model"].as_str().map(str::to_owned),
        input: if conversation.is_some() { None } else { Some(b["input_items"].clone()) },
        instructions: b["instructions"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
        conversation,
        previous_response_id: b["previous_response_id"].as_str().map(str::to_owned),
        tools: Some(b["tools"].clone()),
        tool_choice: Some(b["tool_choice"].clone()),
        temperature: opt_f64("temperature"),
        top_p: opt_f64("top_p"),
        max_output_tokens: b["max_output_tokens"].as_u64(),
        parallel_tool_calls: b["parallel_tool_calls"].as_bool(),
        text: Some(b["text"].clone()),
        metadata: Some(b["metadata"].clone()).filter(|m| !m.is_null()),
        store: Some(true),
        background: Some(true),
        ..ResponseCreate::default()
    }
}

impl Agents {
    /// Runs again the background responses a stop or a failover cut off, as their projects are
    /// opened where they lead them, until the server stops: each under its own id, once per
    /// cut-off (a response cut off again is run again).
    pub fn spawn_resumer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let agents = self.clone();
        tokio::spawn(async move {
            let mut stopping = agents.core.stopping();
            // Responses whose project did not serve yet (a promotion still finishing), with how
            // often they were tried.
            let mut waiting: Vec<(ProjectId, String, u32)> = Vec::new();
            loop {
                let queued = agents.resume.drain();
                let pending: Vec<_> = waiting.drain(..).chain(queued.into_iter().map(|(p, id)| (p, id, 0))).collect();
                for (project, id, tries) in pending {
                    match agents.resume_one(&project, &id).await {
                        Ok(()) => {}
                        Err(e) if e.kind == ErrorKind::Unavailable && tries < RESUME_TRIES => waiting.push((project, id, tries + 1)),
                        Err(e) => agents.give_up(&project, &id, &e).await,
                    }
                }
                tokio::select! {
                    _ = agents.resume.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        })
    }

    async fn resume_one(self: &Arc<Self>, project: &ProjectId, id: &str) -> Result<()> {
        let system = Caller::system();
        let data = self.core.data(&system, project.as_str(), Action::DataWrite).await?;
        let rid = id.to_owned();
        let found = data.read(move |view| view.get(Kind::Response, &rid).map_err(store_err)).await?;
        let Some(record) = found.filter(|r| r.body["status"] == "in_progress" || r.body["status"] == "queued") else {
            return Ok(());
        };
        // Still running here under an earlier service of this process (a library user's, or a
        // test's, that stopped and opened the data directory again): it ends by its deadline
        // (its store is closed, so it journals nothing more); then it runs again — unless it
        // changed meanwhile, which the first write of the new run finds.
        let done = RUNNING.lock().ok().and_then(|r| r.get(id).map(|r| r.done.clone()));
        if let Some(mut done) = done {
            let _ = tokio::time::timeout(self.upstream_timeout + Duration::from_secs(5), done.wait_for(|d| *d)).await;
        }
        tracing::info!(project = %project, response = %id, "running a cut-off background response again");
        let request = request_of(&record.body);
        match self.create_response_as(&system, project.as_str(), request, Some(record)).await {
            Ok(_) => {
                metrics::counter!("holdfast_responses_resumed_total").increment(1);
                Ok(())
            }
            Err(e) if e.message.contains(STALE_RESUME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A cut-off background response that cannot run again (its deployment is gone, a lock
    /// refuses it, its project never served here) is failed, so no client waits on it forever.
    async fn give_up(&self, project: &ProjectId, id: &str, error: &Error) {
        tracing::warn!(project = %project, response = %id, error = %error, "cannot run a cut-off background response again; failing it");
        let Ok(store) = self.core.project_store(project.as_str()).await else { return };
        let (rid, message) = (id.to_owned(), format!("the response was cut off and could not be run again: {}", error.message));
        let plan: holdfast_store::Plan = Box::new(move |view| {
            let running = view.get(Kind::Response, &rid).map_err(store_err)?.filter(|r| r.body["status"] == "in_progress");
            Ok(running
                .map(|_| Op::Patch { kind: Kind::Response, id: rid, patch: json!({ "status": "failed", "error": { "code": "server_error", "message": message } }) })
                .into_iter()
                .collect())
        });
        let _ = self.core.commit_repair(&store, plan).await;
    }
}

impl Agents {
    /// `holdfast resubmit --project P`: runs again, as new background responses, the responses
    /// a failover cut off (failed with `region_failover`), each once: the old response records
    /// the new one's id as `resubmitted_as`. The new response has the old one's model,
    /// instructions, tools and options (an agent's already merged in), and its input: the old
    /// input items, or, for a response in a conversation (whose input the conversation already
    /// holds), the conversation itself.
    ///
    /// At most `limit` are resubmitted per call (the scan reads the responses a page at a time,
    /// so memory stays bounded); call again until it returns fewer.
    pub async fn resubmit(self: &Arc<Self>, caller: &Caller, project: &str, limit: Option<usize>) -> Result<Vec<Value>> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let limit = holdfast_core::PageQuery { after: None, limit }.limit()?;
        let cut_off = data
            .read(move |view| {
                let mut found = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = view
                        .list(Kind::Response, None, after.as_deref(), SCAN_PAGE, holdfast_store::Order::Asc)
                        .map_err(crate::wire::store_err)?;
                    let full = page.len() == SCAN_PAGE;
                    after = page.last().map(|r| r.id.clone());
                    found.extend(page.into_iter().filter(|r| {
                        r.body["error"]["code"] == REGION_FAILOVER && r.body.get("resubmitted_as").is_none_or(Value::is_null)
                    }));
                    if found.len() >= limit || !full {
                        found.truncate(limit);
                        return Ok(found);
                    }
                }
            })
            .await?;
        let mut out = Vec::with_capacity(cut_off.len());
        for old in cut_off {
            let request = request_of(&old.body);
            let created = match self.create_response(caller, project, request).await? {
                Created::Done(v) => v,
                Created::Stream(_) => return Err(Error::internal("a background resubmit answered with a stream")),
            };
            let new_id = created["id"].as_str().unwrap_or_default().to_owned();
            let (id, marker) = (old.id.clone(), json!({ "resubmitted_as": new_id }));
            data.commit(Box::new(move |_| Ok(vec![Op::Patch { kind: Kind::Response, id, patch: marker }]))).await?;
            out.push(json!({ "id": old.id, "resubmitted_as": new_id }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_forms_normalise() {
        let items = input_items(Some(json!("hi"))).expect("string input");
        assert_eq!(items[0]["role"], "user");
        assert_eq!(items[0]["content"], json!([{"type": "input_text", "text": "hi"}]));
        assert!(input_items(None).expect("none").is_empty());
        assert!(input_items(Some(json!(""))).expect("empty").is_empty());
        assert!(input_items(Some(json!(3))).is_err());
        assert!(input_items(Some(json!([{"role": "robot", "content": "x"}]))).is_err());
        let fs = input_items(Some(
            json!([{"type": "file_search_call", "id": "fs_1", "queries": ["q"], "status": "completed"}]),
        ))
        .expect("file search item");
        assert_eq!(fs[0]["id"], "fs_1");
    }

    #[test]
    fn references_parse() {
        assert_eq!(conversation_id(Some(json!("conv_1"))).expect("ok"), Some("conv_1".into()));
        assert_eq!(conversation_id(Some(json!({"id": "conv_2"}))).expect("ok"), Some("conv_2".into()));
        assert!(conversation_id(Some(json!(7))).is_err());
        assert_eq!(
            agent_reference(Some(json!({"type": "agent_reference", "name": "a", "version": "2"}))).expect("ok"),
            Some(("a".into(), Some("2".into())))
        );
        assert_eq!(agent_reference(Some(json!({"name": "a"}))).expect("ok"), Some(("a".into(), None)));
        assert!(agent_reference(Some(json!({"type": "agent_id", "name": "a"}))).is_err());
        assert!(agent_reference(Some(json!({"type": "agent_reference"}))).is_err());
    }

    #[test]
    fn units_are_checked() {
        assert!(check_unit("temperature", Some(2.5), 2.0).is_err());
        assert!(check_unit("temperature", Some(0.0), 2.0).is_ok());
        assert!(check_unit("top_p", None, 1.0).is_ok());
    }
}
