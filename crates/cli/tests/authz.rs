//! The role × route matrix, driven from the route table (`holdfast_api::authz::ROUTES`): against
//! the real binary, every route is called with no key, a reader's and a contributor's key. A
//! route that needs an action the role lacks answers 403 naming the action and the scope, before
//! any handler runs; one the role has is never 403; no key is 401 everywhere but the public routes.

mod common;

use common::{Api, Server};
use holdfast_api::authz::{Need, ROUTES};
use holdfast_core::role_allows;
use holdfast_types::api::Role;
use reqwest::Method;
use serde_json::json;

/// A concrete path for a template: the test's project, and `x` for every other parameter.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{project}" => "proj",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn call(api: &Api, method: &str, path: &str) -> common::Resp {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
    api.send(method, path, body.as_ref(), &[])
}

#[test]
fn every_route_enforces_its_declared_action_for_every_role() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("proj");
    let anonymous = server.api(None);
    let mut checked = 0;
    let roles = [Role::Reader, Role::AiReader, Role::AiUser, Role::MlUser, Role::MlReader, Role::BackupOperator, Role::Contributor];
    for role in roles {
        let name = role.as_str();
        let key = admin.create_key(name, name)["key"].as_str().expect("key").to_owned();
        let api = server.api(Some(&key));
        for (method, template, need) in ROUTES {
            let path = concrete(template);
            let anon = call(&anonymous, method, &path);
            match need {
                Need::Public => assert_ne!(anon.status, 401, "{method} {template} is public"),
                _ => assert_eq!(anon.status, 401, "{method} {template} without a key: {}", anon.text),
            }
            if *need == Need::Cluster {
                // A user's key is no cluster secret.
                let resp = call(&api, method, &path);
                assert_eq!(resp.status, 401, "{name} on {method} {template}: {}", resp.text);
                continue;
            }
            let Need::Action(action) = need else { continue };
            let resp = call(&api, method, &path);
            if role_allows(&role, *action) {
                assert_ne!(resp.status, 403, "{name} may {} ({method} {template}): {}", action.as_str(), resp.text);
            } else {
                assert_eq!(resp.status, 403, "{name} may not {} ({method} {template}): {}", action.as_str(), resp.text);
                let scope = if template.contains("{project}") { "/projects/proj" } else { "/" };
                assert!(
                    resp.text.contains(action.as_str()) && resp.text.contains(&format!("scope {scope}")),
                    "the refusal names the action and the scope: {}",
                    resp.text
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "the matrix covered {checked} role × route pairs");
    assert_eq!(server.stop().code(), Some(0));
}
