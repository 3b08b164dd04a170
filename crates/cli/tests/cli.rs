//! The `holdfast` command-line client against a real server: output formats, exit codes,
//! contexts with failover, precedence of flags over environment over context, and the journal.

#![allow(clippy::unwrap_used)]

mod common;

use common::{ADMIN_KEY, Cli, Server};
use serde_json::{Value, json};

/// An endpoint nothing listens on: connecting is refused at once.
const DEAD: &str = "http://127.0.0.1:1";

#[test]
fn project_commands_in_json_and_yaml() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();
    let run = |args: &[&str]| {
        let mut all = vec!["--endpoint", ep, "--key", ADMIN_KEY];
        all.extend_from_slice(args);
        cli.run(&all)
    };

    // create -o json
    let created = run(&[
        "project",
        "create",
        "cli-one",
        "--display-name",
        "CLI One",
        "--description",
        "from the cli",
        "--tag",
        "env=dev",
        "--tag",
        "team=ml",
        "-o",
        "json",
    ])
    .json();
    assert_eq!(created["name"], "cli-one");
    assert_eq!(created["display_name"], "CLI One");
    assert_eq!(created["description"], "from the cli");
    assert_eq!(created["tags"], json!({ "env": "dev", "team": "ml" }));
    assert_eq!(created["lsn"], 1);
    // The server agrees.
    assert_eq!(server.admin().get("/v1/projects/cli-one").ok(200), created);

    // create -o yaml: the same shape in YAML.
    let yaml = run(&["project", "create", "cli-two", "-o", "yaml"]);
    assert!(!yaml.stdout.trim_start().starts_with('{'), "YAML, not JSON: {}", yaml.stdout);
    let two = yaml.yaml();
    assert_eq!(two["name"], "cli-two");
    assert_eq!(two["tags"], json!({}));
    assert_eq!(two, server.admin().get("/v1/projects/cli-two").ok(200));

    // More than one page's worth for `list` with a small --limit, then all pages.
    for i in 3..=5 {
        run(&["project", "create", &format!("cli-{i}"), "-o", "json"]).success();
    }
    let listed = run(&["project", "list", "-o", "json"]).json();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cli-3", "cli-4", "cli-5", "cli-one", "cli-two"]);
    let page = run(&["project", "list", "--limit", "2", "-o", "json"]).json();
    assert_eq!(page.as_array().unwrap().len(), 2, "--limit gives one page");
    let after = run(&["project", "list", "--after", "cli-5", "-o", "json"]).json();
    let names: Vec<&str> = after.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cli-one", "cli-two"]);
    let yaml_list = run(&["project", "list", "-o", "yaml"]).yaml();
    assert_eq!(yaml_list, listed);

    // show, by name and by id, in both formats.
    assert_eq!(run(&["project", "show", "cli-one", "-o", "json"]).json(), created);
    assert_eq!(run(&["project", "show", created["id"].as_str().unwrap(), "-o", "yaml"]).yaml(), created);
    // Without -o and not on a terminal, the output is JSON.
    assert_eq!(run(&["project", "show", "cli-one"]).json(), created);

    // update: fields, a new tag and a removed tag.
    let updated = run(&[
        "project",
        "update",
        "cli-one",
        "--description",
        "changed",
        "--tag",
        "tier=gold",
        "--remove-tag",
        "team",
        "-o",
        "json",
    ])
    .json();
    assert_eq!(updated["description"], "changed");
    assert_eq!(updated["display_name"], "CLI One");
    assert_eq!(updated["tags"], json!({ "env": "dev", "tier": "gold" }));
    assert_eq!(updated["lsn"], 2);
    let updated = run(&["project", "update", "cli-one", "--display-name", "Renamed", "-o", "yaml"]).yaml();
    assert_eq!(updated["display_name"], "Renamed");
    assert_eq!(updated["lsn"], 3);

    // delete in both formats, then show is "not found".
    assert_eq!(run(&["project", "delete", "cli-one", "-o", "json"]).json(), json!({ "deleted": "cli-one" }));
    assert_eq!(run(&["project", "delete", "cli-two", "-o", "yaml"]).yaml(), json!({ "deleted": "cli-two" }));
    run(&["project", "show", "cli-one"]).code(3);
    let names: Vec<String> =
        server.admin().all_projects(100).iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["cli-3", "cli-4", "cli-5"]);

    // The table form prints the names.
    let table = run(&["project", "list", "-o", "table"]);
    table.success();
    for name in ["cli-3", "cli-4", "cli-5"] {
        assert!(table.stdout.contains(name), "{}", table.stdout);
    }
    // `info` through the CLI.
    assert_eq!(run(&["info", "-o", "json"]).json()["region"], "local");
}

#[test]
fn exit_codes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();
    let auth = ["--endpoint", ep, "--key", ADMIN_KEY];
    let with = |args: &[&str]| {
        let mut all = auth.to_vec();
        all.extend_from_slice(args);
        cli.run(&all)
    };

    // 0: success.
    with(&["project", "create", "exists", "-o", "json"]).code(0);
    // 2: usage errors, caught before any request.
    let out = with(&["project", "list", "--no-such-flag"]);
    out.code(2);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    with(&["project", "create"]).code(2); // missing NAME
    with(&["project", "create", "bad-tag", "--tag", "novalue"]).code(2);
    with(&["project", "list", "-o", "xml"]).code(2);
    with(&["no-such-command"]).code(2);
    // Nothing was created by the usage errors.
    with(&["project", "show", "bad-tag"]).code(3);
    // 3: not found.
    let out = with(&["project", "show", "unknown-project"]);
    out.code(3);
    assert!(out.stderr.contains("not found") && out.stderr.contains("404"), "{}", out.stderr);
    with(&["project", "delete", "unknown-project"]).code(3);
    with(&["project", "update", "unknown-project", "--description", "x"]).code(3);
    // 4: conflict.
    let out = with(&["project", "create", "exists"]);
    out.code(4);
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    // 5: unauthorized (wrong key, no key) and forbidden.
    let out = cli.run(&["--endpoint", ep, "--key", "hf_wrong", "project", "list"]);
    out.code(5);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    cli.run(&["--endpoint", ep, "project", "list"]).code(5);
    let reader = server.admin().create_key("reader", "reader");
    cli.run(&["--endpoint", ep, "--key", reader["key"].as_str().unwrap(), "project", "create", "nope"]).code(5);
    // 1: other failures — invalid input (400) and an unreachable endpoint.
    with(&["project", "create", "Bad_Name"]).code(1);
    let out = cli.run(&["--endpoint", DEAD, "--key", ADMIN_KEY, "project", "list"]);
    out.code(1);
    assert!(out.stderr.contains("no endpoint answered"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn contexts_fail_over_and_are_listed_and_switched() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();

    // Add a context whose first endpoint is dead: commands fall over to the second.
    let out = cli.run(&["context", "add", "prod", "--endpoint", DEAD, "--endpoint", ep, "--key", ADMIN_KEY]);
    out.success();
    let file = std::fs::read_to_string(cli.context_file()).expect("context file written");
    assert!(file.contains(DEAD) && file.contains(ep), "{file}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cli.context_file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the context file holds keys");
    }
    cli.run(&["project", "create", "via-context", "-o", "json"]).success();
    let listed = cli.run(&["project", "list", "-o", "json"]).json();
    assert_eq!(listed[0]["name"], "via-context");
    server.admin().get("/v1/projects/via-context").ok(200);

    // A second context with a dead endpoint only and a wrong key; the first stays current.
    cli.run(&["context", "add", "broken", "--endpoint", DEAD, "--key", "hf_wrong"]).success();
    let contexts = cli.run(&["context", "list", "-o", "json"]).json();
    let rows = contexts.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{contexts}");
    let prod = rows.iter().find(|r| r["name"] == "prod").unwrap();
    let broken = rows.iter().find(|r| r["name"] == "broken").unwrap();
    assert_eq!(prod["current"], true);
    assert_eq!(broken["current"], false);
    assert_eq!(prod["endpoints"], format!("{DEAD},{ep}"));
    // The key is shown truncated, never whole.
    let listing = cli.run(&["context", "list", "-o", "json"]);
    assert!(!listing.stdout.contains(ADMIN_KEY), "context list shows a whole key: {}", listing.stdout);
    assert!(prod["key"].as_str().unwrap().starts_with(&ADMIN_KEY[..10]), "{prod}");

    // `context use` switches the current context: now commands fail (unreachable: exit 1).
    cli.run(&["context", "use", "broken"]).success();
    let contexts = cli.run(&["context", "list", "-o", "json"]).json();
    assert_eq!(contexts.as_array().unwrap().iter().find(|r| r["name"] == "broken").unwrap()["current"], true);
    cli.run(&["project", "list"]).code(1);
    // --context picks another one for one command.
    cli.run(&["--context", "prod", "project", "show", "via-context"]).success();
    // Unknown contexts are refused.
    cli.run(&["context", "use", "nope"]).code(3);
    cli.run(&["--context", "nope", "project", "list"]).code(1);
    cli.run(&["context", "use", "prod"]).success();
    cli.run(&["project", "show", "via-context"]).success();

    // Re-adding a context replaces it; --current makes it current.
    cli.run(&["context", "add", "broken", "--endpoint", ep, "--key", ADMIN_KEY, "--current"]).success();
    cli.run(&["project", "show", "via-context"]).success();
    let contexts = cli.run(&["context", "list", "-o", "json"]).json();
    assert_eq!(contexts.as_array().unwrap().len(), 2);
    assert_eq!(contexts.as_array().unwrap().iter().find(|r| r["name"] == "broken").unwrap()["endpoints"], ep);
    // A context needs an endpoint.
    cli.run(&["context", "add", "empty", "--key", ADMIN_KEY]).code(2);
}

#[test]
fn flags_override_env_which_overrides_the_context() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();
    server.admin().create_project("precedence");
    let show = ["project", "show", "precedence", "-o", "json"];
    let with = |pre: &[&str], env: &[(&str, &str)]| {
        let mut all = pre.to_vec();
        all.extend_from_slice(&show);
        cli.run_env(&all, env)
    };

    // The current context points at a dead endpoint with a wrong key.
    cli.run(&["context", "add", "ctx", "--endpoint", DEAD, "--key", "hf_wrong"]).success();
    with(&[], &[]).code(1);

    // Endpoint: env beats the context (now the wrong key from the context is used: 5) ...
    with(&[], &[("HOLDFAST_ENDPOINT", ep)]).code(5);
    // ... and the key from env beats the context's.
    with(&[], &[("HOLDFAST_ENDPOINT", ep), ("HOLDFAST_KEY", ADMIN_KEY)]).success();
    // HOLDFAST_ENDPOINT takes a comma-separated list, tried in order.
    with(&[], &[("HOLDFAST_ENDPOINT", &format!("{DEAD},{ep}")), ("HOLDFAST_KEY", ADMIN_KEY)]).success();
    // Flags beat env: a dead --endpoint flag over a good env endpoint fails ...
    with(&["--endpoint", DEAD], &[("HOLDFAST_ENDPOINT", ep), ("HOLDFAST_KEY", ADMIN_KEY)]).code(1);
    // ... a good --endpoint flag over a dead env endpoint works ...
    with(&["--endpoint", ep], &[("HOLDFAST_ENDPOINT", DEAD), ("HOLDFAST_KEY", ADMIN_KEY)]).success();
    // ... and a wrong --key flag over a good env key is refused, a good one over a bad one works.
    with(&["--key", "hf_wrong"], &[("HOLDFAST_ENDPOINT", ep), ("HOLDFAST_KEY", ADMIN_KEY)]).code(5);
    with(&["--key", ADMIN_KEY], &[("HOLDFAST_ENDPOINT", ep), ("HOLDFAST_KEY", "hf_wrong")]).success();
    // Flags alone beat the context.
    let shown = with(&["--endpoint", ep, "--key", ADMIN_KEY], &[]).json();
    assert_eq!(shown["name"], "precedence");
    // A context key still applies when only the endpoint is overridden by a flag.
    cli.run(&["context", "add", "ctx", "--endpoint", DEAD, "--key", ADMIN_KEY]).success();
    with(&["--endpoint", ep], &[]).success();
    // The context file is read from XDG_CONFIG_HOME: with another one, there is no context.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = with(&["--endpoint", ep], &[("XDG_CONFIG_HOME", elsewhere.path().to_str().unwrap())]);
    out.code(5); // no key at all
}

#[test]
fn journal_tail_prints_one_change_per_line_in_order() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();
    let api = server.admin();
    api.create_project("tailed");
    for i in 0..5 {
        api.patch("/v1/projects/tailed", &json!({ "tags": { "n": i.to_string() } })).ok(200);
    }
    let out = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "journal", "tail", "--project", "tailed", "-o", "json"]);
    out.success();
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}")))
        .collect();
    assert_eq!(lines.len(), 6, "{}", out.stdout);
    for (i, change) in lines.iter().enumerate() {
        assert_eq!(change["lsn"].as_u64(), Some(i as u64 + 1));
    }
    assert_eq!(lines, api.journal("tailed"), "the CLI prints the journal as the API returns it");
    // --after skips the first changes.
    let out = cli.run(&[
        "--endpoint",
        ep,
        "--key",
        ADMIN_KEY,
        "journal",
        "tail",
        "--project",
        "tailed",
        "--after",
        "4",
        "-o",
        "json",
    ]);
    let lsns: Vec<u64> =
        out.stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, [5, 6]);
    // A contributor may not read journals: exit 5; an unknown project: exit 3.
    let contributor = api.create_key("c", "contributor");
    cli.run(&[
        "--endpoint",
        ep,
        "--key",
        contributor["key"].as_str().unwrap(),
        "journal",
        "tail",
        "--project",
        "tailed",
    ])
    .code(5);
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "journal", "tail", "--project", "ghost"]).code(3);
}

#[test]
fn names_cannot_redirect_a_command_to_another_route() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();
    let admin = server.admin();
    let victim = admin.create_key("victim", "reader");
    let victim_key = victim["key"].as_str().unwrap();
    let key_id = victim["key_id"].as_str().unwrap();
    admin.create_project("real");

    // A project "name" that would climb out of /v1/projects/ is sent as one segment: the
    // project is not found, and the key it points at is not revoked.
    let sneaky = format!("x/../../keys/{key_id}");
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "project", "delete", &sneaky]).code(3);
    server.api(Some(victim_key)).get("/v1/projects").ok(200);
    let out = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "project", "show", "real?x=1"]);
    out.code(3);
    assert!(out.stderr.contains("real?x=1"), "{}", out.stderr);
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "project", "show", "real/"]).code(3);
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "journal", "tail", "--project", "real/../../keys"]).code(3);
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "revoke", &format!("../keys/{key_id}")]).code(3);
    server.api(Some(victim_key)).get("/v1/projects").ok(200);
    // --after is a query value, not more query.
    let page = cli
        .run(&["--endpoint", ep, "--key", ADMIN_KEY, "project", "list", "--after", "a&limit=0", "-o", "json"])
        .json();
    assert_eq!(page[0]["name"], "real");
    admin.get("/v1/projects/real").ok(200);
}
