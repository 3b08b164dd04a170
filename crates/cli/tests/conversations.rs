//! Listing a project's conversations (`GET /openai/v1/conversations`): newest first, paged like
//! items, filtered by metadata; bad parameters are refused and change nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use common::cluster::oa;
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn conversations_are_listed_newest_first_paged_and_filtered_by_metadata() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("talk");
    let made: Vec<String> = ["a", "b", "a", "c", "a"]
        .iter()
        .map(|topic| admin.post(&oa("talk", "/conversations"), &json!({"metadata": {"topic": topic}})).ok(200)["id"].as_str().unwrap().to_owned())
        .collect();
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let all = admin.get(&oa("talk", "/conversations")).ok(200);
    assert_eq!((all["object"].as_str(), ids(&all), all["has_more"].as_bool()), (Some("list"), newest_first.clone(), Some(false)));
    assert_eq!(all["first_id"], newest_first[0].as_str());
    assert_eq!(all["data"][0]["object"], "conversation");
    let asc = admin.get(&oa("talk", "/conversations?order=asc&api-version=2025-05-15-preview")).ok(200);
    assert_eq!(ids(&asc), made);

    // Paged: two at a time, following `after`, every conversation once.
    let (mut seen, mut after) = (Vec::new(), None::<String>);
    loop {
        let path = match &after {
            Some(a) => oa("talk", &format!("/conversations?limit=2&after={a}")),
            None => oa("talk", "/conversations?limit=2"),
        };
        let page = admin.get(&path).ok(200);
        seen.extend(ids(&page));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, newest_first);

    // Filtered by metadata, still newest first and paged.
    let topic_a: Vec<String> = newest_first.iter().enumerate().filter(|(i, _)| [0, 2, 4].contains(i)).map(|(_, id)| id.clone()).collect();
    let filtered = admin.get(&oa("talk", "/conversations?metadata%5Btopic%5D=a")).ok(200);
    assert_eq!(ids(&filtered), topic_a);
    let first = admin.get(&oa("talk", "/conversations?metadata%5Btopic%5D=a&limit=1")).ok(200);
    assert_eq!((ids(&first), first["has_more"].as_bool()), (vec![topic_a[0].clone()], Some(true)));
    let none = admin.get(&oa("talk", "/conversations?metadata%5Btopic%5D=z")).ok(200);
    assert_eq!((ids(&none), none["first_id"].clone()), (Vec::<String>::new(), Value::Null));

    // Bad input: a clear 400 in the OpenAI shape.
    for bad in ["/conversations?limit=0", "/conversations?limit=101", "/conversations?order=up", "/conversations?after=conv_nope", "/conversations?colour=red"] {
        let refused = admin.get(&oa("talk", bad));
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
        assert_eq!(refused.json()["error"]["type"], "invalid_request_error", "{bad}: {}", refused.text);
    }
    // Reading needs a data-read role; a key without one is refused.
    let reader = server.api(Some(admin.create_key("talk-reader", "ai_reader")["key"].as_str().unwrap()));
    assert_eq!(ids(&reader.get(&oa("talk", "/conversations")).ok(200)), newest_first);
    let nobody = admin.post("/v1/keys", &json!({"name": "nobody"})).ok(201)["key"].as_str().unwrap().to_owned();
    assert_eq!(server.api(Some(&nobody)).get(&oa("talk", "/conversations")).status, 403);
}
