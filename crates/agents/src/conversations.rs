//! Conversations and their items.

use holdfast_store::{Order, Resource};
use holdfast_types::{Error, Kind, Op};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::items::{MAX_ITEMS_PER_REQUEST, normalize};
use crate::wire::{List, ListQuery, deleted, filtered_page, metadata, must_get, new_id, page, store_err, unix_seconds};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConversationCreate {
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConversationUpdate {
    pub metadata: Option<Value>,
}

/// `GET /conversations`: a list page, and `metadata[KEY]=VALUE` filters (every one must match).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConversationListQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
    /// Every other query parameter: only `metadata[KEY]` is known.
    #[serde(flatten)]
    pub rest: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ItemsCreate {
    pub items: Vec<Value>,
}

pub(crate) fn conversation_wire(r: &Resource) -> Value {
    json!({
        "id": r.id,
        "object": "conversation",
        "created_at": unix_seconds(r.created_us),
        "metadata": r.body.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub(crate) fn item_wire(r: &Resource) -> Value {
    r.body.clone()
}

/// Ops that append normalised items to a conversation, in order.
pub(crate) fn append_items(conversation: &str, items: &[Value]) -> Vec<Op> {
    items
        .iter()
        .map(|item| Op::Put {
            kind: Kind::Item,
            id: item["id"].as_str().unwrap_or_default().to_owned(),
            parent: Some(conversation.to_owned()),
            body: item.clone(),
        })
        .collect()
}

fn normalize_all(items: &[Value]) -> Result<Vec<Value>> {
    if items.len() > MAX_ITEMS_PER_REQUEST {
        return Err(Error::invalid(format!("at most {MAX_ITEMS_PER_REQUEST} items per request")));
    }
    let items = items.iter().map(normalize).collect::<Result<Vec<_>>>()?;
    let mut ids: Vec<_> = items.iter().map(|i| i["id"].as_str().unwrap_or_default()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid("item ids must be unique"));
    }
    Ok(items)
}

/// Refuses items whose ids already exist in the project.
fn ensure_new(view: &holdfast_store::StateView<'_>, items: &[Value]) -> Result<()> {
    for item in items {
        let id = item["id"].as_str().unwrap_or_default();
        if view.get(Kind::Item, id).map_err(crate::wire::store_err)?.is_some() {
            return Err(Error::conflict(format!("an item with id {id:?} exists already")));
        }
    }
    Ok(())
}

impl Agents {
    pub async fn create_conversation(&self, caller: &Caller, project: &str, req: ConversationCreate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let metadata = metadata(req.metadata)?;
        let items = normalize_all(req.items.as_deref().unwrap_or_default())?;
        let id = new_id("conv_");
        let plan_id = id.clone();
        data.commit(Box::new(move |view| {
            ensure_new(view, &items)?;
            let mut ops = vec![Op::Put {
                kind: Kind::Conversation,
                id: plan_id.clone(),
                parent: None,
                body: json!({ "metadata": metadata }),
            }];
            ops.extend(append_items(&plan_id, &items));
            Ok(ops)
        }))
        .await?;
        self.get_conversation(caller, project, &id).await
    }

    /// Lists the project's conversations, newest first unless `order=asc`, paged like items, and
    /// keeps those whose metadata has every `metadata[KEY]=VALUE` asked for.
    pub async fn list_conversations(&self, caller: &Caller, project: &str, query: ConversationListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let mut wanted = Vec::new();
        for (name, value) in query.rest {
            // Azure's SDKs add it to every request; any value is accepted.
            if name == "api-version" {
                continue;
            }
            let key = name
                .strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .filter(|k| !k.is_empty())
                .ok_or_else(|| Error::invalid(format!("unknown query parameter {name:?}; filter with metadata[KEY]=VALUE")))?;
            wanted.push((key.to_owned(), value));
        }
        let list = ListQuery { after: query.after, before: None, limit: query.limit, order: query.order };
        let (limit, order) = (list.limit()?, list.order(Order::Desc)?);
        data.read(move |view| {
            if let Some(after) = &list.after
                && view.get(Kind::Conversation, after).map_err(store_err)?.is_none()
            {
                return Err(Error::invalid(format!("'after' cursor {after:?} does not name a conversation")));
            }
            let (rows, has_more) = filtered_page(view, Kind::Conversation, None, list.after.clone(), limit, order, |r| {
                wanted.iter().all(|(k, v)| r.body["metadata"][k.as_str()].as_str() == Some(v.as_str()))
            })?;
            Ok(List::new(rows.iter().map(conversation_wire).collect(), has_more))
        })
        .await
    }

    pub async fn get_conversation(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let id = id.to_owned();
        data.read(move |view| Ok(conversation_wire(&must_get(view, Kind::Conversation, &id, "conversation", &id)?)))
            .await
    }

    pub async fn update_conversation(&self, caller: &Caller, project: &str, id: &str, req: ConversationUpdate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let metadata = metadata(req.metadata)?;
        let cid = id.to_owned();
        data.commit(Box::new(move |view| {
            let current = must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            if current.body.get("metadata") == Some(&json!(metadata)) {
                return Ok(Vec::new());
            }
            // Metadata is replaced whole, as the OpenAI API does.
            Ok(vec![Op::Put { kind: Kind::Conversation, id: cid, parent: None, body: json!({ "metadata": metadata }) }])
        }))
        .await?;
        self.get_conversation(caller, project, id).await
    }

    /// Deletes a conversation with its items.
    pub async fn delete_conversation(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let cid = id.to_owned();
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            Ok(vec![Op::Delete { kind: Kind::Conversation, id: cid }])
        }))
        .await?;
        Ok(deleted(id, "conversation.deleted"))
    }

    pub async fn create_items(&self, caller: &Caller, project: &str, conversation: &str, req: ItemsCreate) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        if req.items.is_empty() {
            return Err(Error::invalid("items must not be empty"));
        }
        let items = normalize_all(&req.items)?;
        let (cid, out) = (conversation.to_owned(), items.clone());
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            ensure_new(view, &items)?;
            Ok(append_items(&cid, &items))
        }))
        .await?;
        Ok(List::new(out, false))
    }

    pub async fn list_items(&self, caller: &Caller, project: &str, conversation: &str, query: ListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let cid = conversation.to_owned();
        data.read(move |view| {
            must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            let (rows, has_more) = page(view, Kind::Item, Some(&cid), &query, Order::Desc)?;
            Ok(List::new(rows.iter().map(item_wire).collect(), has_more))
        })
        .await
    }

    pub async fn get_item(&self, caller: &Caller, project: &str, conversation: &str, item: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (cid, iid) = (conversation.to_owned(), item.to_owned());
        data.read(move |view| {
            must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            let r = must_get(view, Kind::Item, &iid, "item", &iid)?;
            if r.parent.as_deref() != Some(cid.as_str()) {
                return Err(Error::not_found(format!("item {iid:?} not found in conversation {cid:?}")));
            }
            Ok(item_wire(&r))
        })
        .await
    }

    /// Deletes an item; answers with the conversation, as the OpenAI API does.
    pub async fn delete_item(&self, caller: &Caller, project: &str, conversation: &str, item: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let (cid, iid) = (conversation.to_owned(), item.to_owned());
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Conversation, &cid, "conversation", &cid)?;
            let r = must_get(view, Kind::Item, &iid, "item", &iid)?;
            if r.parent.as_deref() != Some(cid.as_str()) {
                return Err(Error::not_found(format!("item {iid:?} not found in conversation {cid:?}")));
            }
            Ok(vec![Op::Delete { kind: Kind::Item, id: iid }])
        }))
        .await?;
        self.get_conversation(caller, project, conversation).await
    }
}
