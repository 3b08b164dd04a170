//! `holdfast check` with the real binary: a fresh project fails its high-severity checks and the
//! command exits 6; running the fix the finding names (and archiving) makes it exit 0. Table
//! and JSON output both carry every finding.

mod common;

use common::{ADMIN_KEY, Cli, Opts, Out, Server};
use serde_json::Value;

/// The findings of one project's review, from `holdfast -o json check` output.
fn findings<'a>(reviews: &'a Value, project: &str) -> &'a Vec<Value> {
    let review = reviews
        .as_array()
        .and_then(|all| all.iter().find(|r| r["project"] == project))
        .unwrap_or_else(|| panic!("no review of {project} in {reviews:#}"));
    review["findings"].as_array().expect("findings")
}

fn finding<'a>(reviews: &'a Value, project: &str, check: &str) -> &'a Value {
    findings(reviews, project)
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding for {project} in {reviews:#}"))
}

/// Stdout as JSON, whatever the exit code.
fn parse(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

#[test]
fn check_gates_on_high_severity_findings_until_they_are_fixed() {
    let (data, archive) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("archive"));
    let config = format!("listen = \"127.0.0.1:{{port}}\"\n\n[archive]\nurl = \"file://{}\"\n", archive.path().display());
    let server = Server::start_with(data.path(), Opts { config: Some(config), ..Opts::default() });
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let hf = |args: &[&str]| cli.run_env(args, &env);
    hf(&["project", "create", "prod"]).success();

    // Not ready: no delete lock. Exit 6, and the JSON still lists every finding.
    let out = hf(&["-o", "json", "check", "--project", "prod"]);
    out.code(6);
    assert!(out.stderr.contains("a high-severity check fails for prod"), "{}", out.stderr);
    let reviews = parse(&out);
    assert_eq!(reviews[0]["ok"], false, "{reviews:#}");
    let lock = finding(&reviews, "prod", "delete_lock");
    assert_eq!((lock["status"].as_str(), lock["severity"].as_str()), (Some("fail"), Some("high")), "{lock}");
    assert_eq!(finding(&reviews, "prod", "replica")["status"], "fail", "a single server has no replica elsewhere");
    let checks: Vec<&str> = findings(&reviews, "prod").iter().filter_map(|f| f["check"].as_str()).collect();
    assert_eq!(
        checks,
        [
            "delete_lock",
            "data_plane_lock",
            "continuous_backup",
            "replica",
            "identity",
            "standing_delete_rights",
            "restore_drill",
            "purge_protection"
        ]
    );

    // The table has one row per finding, with its fix.
    let table = hf(&["-o", "table", "check", "--project", "prod"]);
    table.code(6);
    let fix = lock["fix"].as_str().expect("fix");
    assert!(table.stdout.contains("delete_lock") && table.stdout.contains("holdfast project replicate"), "{}", table.stdout);
    assert!(table.stdout.contains("--kind CanNotDelete"), "the fix is shown: {}", table.stdout);

    // Run the fix exactly as the finding names it, and archive what is there.
    let args: Vec<&str> = fix.strip_prefix("holdfast ").expect("a holdfast command").split(' ').collect();
    hf(&args).success();
    hf(&["backup", "now", "--project", "prod"]).success();
    let out = hf(&["-o", "json", "check", "--project", "prod"]);
    out.success();
    let reviews = parse(&out);
    assert_eq!(reviews[0]["ok"], true, "{reviews:#}");
    for check in ["delete_lock", "data_plane_lock", "continuous_backup"] {
        assert_eq!(finding(&reviews, "prod", check)["status"], "pass", "{check}: {reviews:#}");
    }
    // Lower-severity failures remain and are reported, without failing the gate.
    assert_eq!(finding(&reviews, "prod", "restore_drill")["status"], "fail");

    // Every project by default: a second, unlocked one fails the gate again.
    hf(&["project", "create", "scratch"]).success();
    let out = hf(&["-o", "json", "check"]);
    out.code(6);
    let reviews = parse(&out);
    assert_eq!(reviews.as_array().map(Vec::len), Some(2), "{reviews:#}");
    assert_eq!(finding(&reviews, "scratch", "delete_lock")["status"], "fail");
    assert_eq!(finding(&reviews, "prod", "delete_lock")["status"], "pass");
    hf(&["check", "--project", "nope"]).code(3);
    assert_eq!(server.stop().code(), Some(0));
}
