//! Continuous backup and point-in-time restore with the real binary: a server ships every
//! project's journal to a `file://` archive; restores (online from the journal or the archive,
//! offline from the archive alone into a fresh data directory) rebuild a project as of a time or
//! an LSN. A SIGKILL while archiving loses nothing acknowledged, a failing archive delays the
//! backup but never a write, and a corrupt segment is named and refused unless a partial restore
//! is asked for.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Cli, Opts, Out, Server};
use reqwest::blocking::Client;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long the archiver may take to catch up (it ships every 50-100 ms here, but retries a
/// failing project after a backoff of 2 s or more).
const SETTLE: Duration = Duration::from_secs(30);

/// The brief's test settings: ship every 100 ms, snapshot every 2 s, compact in 1 s and 4 s
/// buckets, so snapshots and compaction happen while a test runs.
const BUSY: &str = "interval_ms = 100\nsnapshot_secs = 2\nlevels_secs = [1, 4]\n";

/// An archive directory, reached as a `file://` URL.
struct Archive {
    dir: TempDir,
}

impl Archive {
    fn new() -> Archive {
        Archive { dir: tempfile::tempdir().expect("archive dir") }
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// A holdfast.toml template (see `Opts::config`) with `[archive]` pointing here.
    fn config(&self, settings: &str) -> String {
        let url = self.url();
        format!(
            "listen = \"127.0.0.1:{{port}}\"\n\n[archive]\nurl = \"{url}\"\n\
             retention_hours = 168\n{settings}"
        )
    }

    fn project_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// The manifest as stored, read directly from the archive directory.
    fn manifest(&self, id: &str) -> Value {
        let path = self.project_dir(id).join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON ({e})", path.display()))
    }

    /// Where a segment the manifest lists is stored.
    fn segment_file(&self, id: &str, segment: &Value) -> PathBuf {
        self.project_dir(id).join("segments").join(segment_key(segment))
    }
}

/// The object name of a manifest segment entry (`{first:020}-{last:020}-e{epoch}.seg.zst`).
fn segment_key(segment: &Value) -> String {
    format!("{:020}-{:020}-e{}.seg.zst", num(&segment["first_lsn"]), num(&segment["last_lsn"]), num(&segment["epoch"]))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned number: {v}"))
}

/// Starts `holdfast serve` on `data` with continuous backup to `archive`.
fn serve(data: &Path, archive: &Archive, settings: &str) -> Server {
    Server::start_with(data, Opts { config: Some(archive.config(settings)), ..Opts::default() })
}

/// [`serve`] with the object store faults `faults` injected (`HOLDFAST_OBJECT_FAULTS`).
fn serve_faulty(data: &Path, archive: &Archive, settings: &str, faults: &str) -> Server {
    let opts = Opts { config: Some(archive.config(settings)), ..Opts::default() };
    Server::start_with(data, opts.env("HOLDFAST_OBJECT_FAULTS", faults))
}

/// Waits until `what` holds, at most [`SETTLE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {SETTLE:?}");
        sleep(Duration::from_millis(10));
    }
}

/// The files under `dir`, recursively (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

/// The CLI pointed at one server through HOLDFAST_ENDPOINT and HOLDFAST_KEY, always with `-o json`.
struct Hf {
    cli: Cli,
    endpoint: String,
}

impl Hf {
    fn new(server: &Server) -> Hf {
        Hf { cli: Cli::new(), endpoint: server.base.clone() }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.cli.run_env(&all, &[("HOLDFAST_ENDPOINT", &self.endpoint), ("HOLDFAST_KEY", ADMIN_KEY)])
    }

    fn json(&self, args: &[&str]) -> Value {
        self.run(args).json()
    }

    /// Creates a project; returns its id.
    fn create(&self, name: &str) -> String {
        self.json(&["project", "create", name])["id"].as_str().expect("project id").to_owned()
    }

    /// Sets a project's description; returns the LSN of that change.
    fn describe(&self, project: &str, description: &str) -> u64 {
        let p = self.json(&["project", "update", project, "--description", description]);
        assert_eq!(p["description"], description, "{p}");
        num(&p["lsn"])
    }

    fn show(&self, project: &str) -> Value {
        self.json(&["project", "show", project])
    }

    fn status(&self, project: &str) -> Value {
        let all = self.json(&["backup", "status", "--project", project]);
        assert_eq!(all.as_array().map(Vec::len), Some(1), "one status for one project: {all}");
        all[0].clone()
    }

    /// Polls `backup status` until `done` holds, at most [`SETTLE`]; returns that status.
    fn wait_status(&self, project: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let status = self.status(project);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "no {what} within {SETTLE:?}; last status: {status:#}");
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every committed change is archived and the archiver reports no error.
    fn wait_caught_up(&self, project: &str) -> Value {
        self.wait_status(project, "caught-up archive", caught_up)
    }

    fn verify_ok(&self, project: &str) -> Value {
        let report = self.json(&["backup", "verify", "--project", project]);
        assert_eq!(report["ok"], true, "{report}");
        report
    }

    /// `holdfast restore --project P --into Q <more>`.
    fn restore(&self, project: &str, into: &str, more: &[&str]) -> Out {
        let mut args = vec!["restore", "--project", project, "--into", into];
        args.extend_from_slice(more);
        self.run(&args)
    }
}

fn caught_up(status: &Value) -> bool {
    status["archived_lsn"] == status["journal_lsn"] && status["last_error"].is_null()
}

/// Now, as RFC 3339 UTC with microseconds (the precision the journal records).
fn rfc3339_now() -> String {
    jiff::Timestamp::from_microsecond(common::now_us()).expect("a valid time").to_string()
}

fn http() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client")
}

fn files_url(server: &Server, project: &str, rest: &str) -> String {
    format!("{}/api/projects/{project}/openai/v1/files{rest}", server.base)
}

/// Uploads a file through the OpenAI-compatible route; returns its JSON object.
fn upload(server: &Server, project: &str, name: &str, bytes: &[u8]) -> Value {
    let part = Part::bytes(bytes.to_vec()).file_name(name.to_owned()).mime_str("text/plain").expect("mime");
    let form = Form::new().text("purpose", "assistants").part("file", part);
    let r = http().post(files_url(server, project, "")).bearer_auth(ADMIN_KEY).multipart(form).send().expect("upload");
    let status = r.status().as_u16();
    let text = r.text().expect("upload body");
    assert!((200..300).contains(&status), "upload: HTTP {status} {text}");
    serde_json::from_str(&text).expect("upload answer is JSON")
}

/// A file's content, byte for byte.
fn download(server: &Server, project: &str, file: &str) -> Vec<u8> {
    let url = files_url(server, project, &format!("/{file}/content"));
    let r = http().get(url).bearer_auth(ADMIN_KEY).send().expect("GET");
    assert_eq!(r.status().as_u16(), 200, "file content of {file} in {project}");
    r.bytes().expect("content").to_vec()
}

fn get_json(url: &str) -> Value {
    let r = http().get(url).bearer_auth(ADMIN_KEY).send().expect("GET");
    assert_eq!(r.status().as_u16(), 200, "GET {url}");
    r.json().expect("JSON")
}

/// The manifest's segments are contiguous from LSN 1, or from just after its oldest snapshot,
/// to `archived_lsn`, and every one of them is stored with the size the manifest records.
fn assert_contiguous(archive: &Archive, id: &str, manifest: &Value) {
    let segments = manifest["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "{manifest:#}");
    let base = manifest["snapshots"].as_array().and_then(|s| s.first()).map_or(0, |s| num(&s["lsn"]));
    let first = num(&segments[0]["first_lsn"]);
    assert!(first == 1 || first <= base + 1, "segments start at LSN {first}, the oldest snapshot is at {base}");
    let mut next = first;
    for segment in segments {
        assert_eq!(num(&segment["first_lsn"]), next, "gap or overlap before {segment}; manifest: {manifest:#}");
        assert_eq!(num(&segment["count"]), num(&segment["last_lsn"]) - next + 1, "{segment}");
        next = num(&segment["last_lsn"]) + 1;
        let file = archive.segment_file(id, segment);
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(meta.len(), num(&segment["bytes"]), "size of {}", file.display());
    }
    assert_eq!(next - 1, num(&manifest["archived_lsn"]), "segments end at the archived LSN: {manifest:#}");
}

#[test]
fn archive_and_restore_to_a_time_between_two_writes() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let server = serve(data.path(), &archive, BUSY);
    let hf = Hf::new(&server);
    hf.create("pitr");
    let one = hf.describe("pitr", "one");
    sleep(Duration::from_millis(50));
    let between = rfc3339_now();
    sleep(Duration::from_millis(50));
    let two = hf.describe("pitr", "two");
    assert_eq!((one, two), (2, 3));
    let status = hf.wait_caught_up("pitr");
    assert_eq!(num(&status["archived_lsn"]), two, "{status}");
    assert_eq!(status["lag_changes"], 0);
    assert_eq!(status["earliest"]["lsn"], 1, "{status}");
    assert_eq!(status["latest"]["lsn"], two, "{status}");

    // From the live journal, as of a time between the two writes.
    let summary = hf.restore("pitr", "pitr-at", &["--at", &between]).json();
    assert_eq!(summary["source"], "journal", "{summary}");
    assert_eq!(summary["restored_lsn"], one, "{summary}");
    assert_eq!(summary["partial"], Value::Null);
    assert_eq!(summary["project"]["name"], "pitr-at");
    let restored = hf.show("pitr-at");
    assert_eq!(restored["description"], "one", "{restored}");
    // A new project: its own id, and its own record journaled after the source's changes.
    assert_ne!(restored["id"], hf.show("pitr")["id"]);
    assert_eq!(restored["lsn"], one + 1, "{restored}");

    // The same time, read from the archive.
    let summary = hf.restore("pitr", "pitr-at-archive", &["--at", &between, "--from-archive"]).json();
    assert_eq!((summary["source"].as_str(), num(&summary["restored_lsn"])), (Some("archive"), one), "{summary}");
    assert_eq!(hf.show("pitr-at-archive")["description"], "one");

    // From the archive, right after the second write.
    let summary = hf.restore("pitr", "pitr-lsn", &["--lsn", &two.to_string(), "--from-archive"]).json();
    assert_eq!(summary["source"], "archive", "{summary}");
    assert_eq!(summary["restored_lsn"], two, "{summary}");
    assert_eq!(hf.show("pitr-lsn")["description"], "two");

    // Beyond the end, from either source: a usage error naming the window, and no project.
    for more in [&["--lsn", "9999"][..], &["--lsn", "9999", "--from-archive"]] {
        let out = hf.restore("pitr", "pitr-never", more);
        out.code(2);
        assert!(out.stderr.contains("outside the window"), "{more:?}: {}", out.stderr);
        assert_eq!(hf.run(&["project", "show", "pitr-never"]).code, 3, "{more:?}: a failed restore leaves no project");
    }
    assert_eq!(hf.show("pitr")["description"], "two", "the source is untouched");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn deleted_project_restores_from_the_archive_offline() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let work = tempfile::tempdir().expect("work");
    let server = serve(data.path(), &archive, BUSY);
    let hf = Hf::new(&server);
    let id = hf.create("gone");
    for n in 1..=3 {
        hf.describe("gone", &format!("draft {n}"));
    }
    let content = b"Holdfast keeps project state safe across regions.\n".repeat(20);
    let file = upload(&server, "gone", "notes.txt", &content);
    let file_id = file["id"].as_str().expect("file id").to_owned();
    let last = hf.describe("gone", "final");
    let file = get_json(&files_url(&server, "gone", &format!("/{file_id}")));

    let status = hf.json(&["backup", "now", "--project", "gone"]);
    assert_eq!(status["archived_lsn"], last, "{status}");
    assert!(num(&status["snapshots"]) >= 1, "{status}");
    let report = hf.verify_ok("gone");
    assert_eq!(report["lsn"], last, "{report}");
    // A soft delete (its mark is change last + 1), then the purge (the deletion, last + 2).
    hf.run(&["project", "delete", "gone"]).success();
    hf.run(&["project", "purge", "gone"]).success();
    assert_eq!(hf.run(&["project", "show", "gone"]).code, 3);
    // The deletion itself is archived, and the window ends just before it.
    let manifest = archive.manifest(&id);
    assert_eq!((manifest["deleted"].as_bool(), num(&manifest["archived_lsn"])), (Some(true), last + 2), "{manifest:#}");
    // Online, a deleted project's name finds it in the archive.
    let summary = hf.restore("gone", "gone-online", &[]).json();
    assert_eq!((summary["source"].as_str(), num(&summary["restored_lsn"])), (Some("archive"), last + 1), "{summary}");
    assert_eq!(download(&server, "gone-online", &file_id), content);
    assert_eq!(server.stop().code(), Some(0));

    // No server: the archive alone rebuilds the project, under its own name, in a new directory.
    let restored_dir = work.path().join("restored");
    let (url, restored_path) = (archive.url(), restored_dir.to_str().expect("path"));
    let offline = ["-o", "json", "restore", "--archive", &url, "--project", "gone", "--data", restored_path];
    let out = Cli::new().run_env(&offline, &[("HOLDFAST_ADMIN_KEY", ADMIN_KEY)]);
    let summary = out.json();
    assert_eq!(summary["source"], "archive", "{summary}");
    assert_eq!(summary["source_project_id"], id.as_str());
    assert_eq!(summary["project"]["name"], "gone");
    assert_eq!(summary["project"]["description"], "final");
    assert_eq!(summary["project"]["deleted_at"], Value::Null, "a restored project is live");
    assert_eq!(summary["restored_lsn"], last + 1);
    assert_eq!(summary["blobs"], 1);
    assert_eq!(summary["partial"], Value::Null);
    let index = restored_dir.join("projects").join(summary["project"]["id"].as_str().expect("id")).join("index");
    assert!(!files_under(&index).is_empty(), "the search index is rebuilt by the restore: {}", index.display());
    let index = restored_dir.join("projects").join(summary["project"]["id"].as_str().expect("id")).join("index");
    assert!(!files_under(&index).is_empty(), "the search index is rebuilt by the restore: {}", index.display());

    let server = Server::start(&restored_dir);
    let hf = Hf::new(&server);
    let project = hf.show("gone");
    assert_eq!(project["description"], "final", "{project}");
    assert_ne!(project["id"], id.as_str(), "a restore makes a new project");
    assert_eq!(get_json(&files_url(&server, "gone", &format!("/{file_id}"))), file);
    assert_eq!(download(&server, "gone", &file_id), content, "the file's bytes survive");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn kill_9_while_archiving_loses_nothing_acknowledged() {
    /// An upper bound only; the server is killed long before.
    const MAX_WRITES: usize = 5_000;
    const KILL_AFTER: usize = 100;
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let settings = "interval_ms = 50\nsnapshot_secs = 1\nlevels_secs = [1, 4]\n";
    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    let id = hf.create("crashy");

    // Writes run until the server dies under them; each acknowledged one is remembered with
    // the LSN the server gave it.
    let acked_count = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (url, acked_count) = (format!("{}/v1/projects/crashy", server.base), acked_count.clone());
        std::thread::spawn(move || -> Result<Vec<(u64, String)>, String> {
            let http = Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut acked = Vec::new();
            for i in 0..MAX_WRITES {
                let description = format!("write {i}");
                let r = http.patch(&url).bearer_auth(ADMIN_KEY).json(&json!({ "description": description })).send();
                let Ok(r) = r else { break }; // the server is gone
                if r.status().as_u16() != 200 {
                    return Err(format!("write {i}: HTTP {} {}", r.status(), r.text().unwrap_or_default()));
                }
                let Ok(body) = r.json::<Value>() else { break }; // killed while answering
                acked.push((num(&body["lsn"]), description));
                acked_count.store(acked.len(), Ordering::Relaxed);
            }
            Ok(acked)
        })
    };
    // Kill only once the archiver has shipped, compacted and taken a second snapshot, so every
    // kind of archive write is under way when the kill lands.
    let deadline = Instant::now() + SETTLE;
    while acked_count.load(Ordering::Relaxed) < KILL_AFTER || !archiving_everything(&archive, &id) {
        assert!(!writer.is_finished(), "the writer stopped before the kill: {:?}", writer.join());
        assert!(Instant::now() < deadline, "no compaction and second snapshot within {SETTLE:?}");
        sleep(Duration::from_millis(5));
    }
    assert_eq!(server.kill9().code(), None, "killed by a signal");
    let acked = writer.join().expect("writer thread").expect("every write before the kill succeeded");
    assert!(acked.len() >= KILL_AFTER && acked.len() < MAX_WRITES, "{} writes acknowledged", acked.len());
    let &(last_lsn, ref last_description) = acked.last().expect("acknowledged writes");

    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    let journal_lsn = num(&hf.show("crashy")["lsn"]);
    assert!(journal_lsn >= last_lsn, "the journal ends at {journal_lsn}, before the acknowledged {last_lsn}");
    let status = hf.wait_caught_up("crashy");
    assert_eq!(num(&status["archived_lsn"]), journal_lsn, "{status}");
    assert_eq!(status["earliest"]["lsn"], 1, "{status}");
    hf.verify_ok("crashy");

    // The archive reproduces the last acknowledged write exactly.
    let summary = hf.restore("crashy", "crashy-copy", &["--lsn", &last_lsn.to_string(), "--from-archive"]).json();
    assert_eq!(summary["restored_lsn"], last_lsn, "{summary}");
    assert_eq!(hf.show("crashy-copy")["description"], last_description.as_str());

    // Stopped, so no compaction swaps objects while they are checked.
    assert_eq!(server.stop().code(), Some(0));
    let manifest = archive.manifest(&id);
    assert_eq!(num(&manifest["archived_lsn"]), journal_lsn, "{manifest:#}");
    assert_contiguous(&archive, &id, &manifest);
}

/// Whether the stored manifest shows a compacted segment and at least two snapshots.
fn archiving_everything(archive: &Archive, id: &str) -> bool {
    let path = archive.project_dir(id).join("manifest.json");
    let Some(manifest) = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
        return false; // not shipped yet
    };
    let compacted = manifest["segments"].as_array().is_some_and(|s| s.iter().any(|s| num(&s["level"]) > 0));
    compacted && manifest["snapshots"].as_array().is_some_and(|s| s.len() >= 2)
}

#[test]
fn a_failing_archive_delays_backup_but_never_writes() {
    const WRITES: u64 = 20;
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let server = serve(data.path(), &archive, "interval_ms = 100\n");
    let hf = Hf::new(&server);
    let id = hf.create("flaky");
    let first = hf.wait_status("flaky", "first shipment", |s| caught_up(s) && num(&s["segments"]) >= 1);

    // A regular file where the segments directory was: every segment put fails from now on.
    let segments = archive.project_dir(&id).join("segments");
    let away = archive.project_dir(&id).join("segments.away");
    std::fs::rename(&segments, &away).expect("move the segments directory away");
    std::fs::write(&segments, b"not a directory").expect("block the segments path");

    let api = server.admin();
    let started = Instant::now();
    for n in 0..WRITES {
        let p = api.patch("/v1/projects/flaky", &json!({ "description": format!("during outage {n}") })).ok(200);
        assert_eq!(num(&p["lsn"]), num(&first["journal_lsn"]) + n + 1);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "writes waited on the archive: {:?}", started.elapsed());
    let failing =
        hf.wait_status("flaky", "archive failure", |s| num(&s["lag_changes"]) > 0 && !s["last_error"].is_null());
    assert_eq!(failing["archived_lsn"], first["archived_lsn"], "{failing}");
    assert!(failing["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{failing}");

    // Repaired: the archiver catches up on its own, after its backoff.
    std::fs::remove_file(&segments).expect("remove the blocking file");
    std::fs::rename(&away, &segments).expect("move the segments directory back");
    let status = hf.wait_status("flaky", "recovery", |s| s["lag_changes"] == 0 && s["last_error"].is_null());
    assert_eq!(num(&status["archived_lsn"]), num(&first["journal_lsn"]) + WRITES, "{status}");
    hf.verify_ok("flaky");
    let summary = hf.restore("flaky", "flaky-copy", &["--from-archive"]).json();
    assert_eq!(hf.show("flaky-copy")["description"], format!("during outage {}", WRITES - 1), "{summary}");
    assert_eq!(server.stop().code(), Some(0));
    assert_contiguous(&archive, &id, &archive.manifest(&id));
}

#[test]
fn a_corrupt_segment_is_named_and_refused() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    // One snapshot only (the first shipment takes it: none exists yet), and no compaction, so
    // the segments written later stay as shipped and a restore must read them.
    let settings = "interval_ms = 100\nsnapshot_secs = 86400\nlevels_secs = []\n";
    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    let id = hf.create("rotten");
    let mut lsn_of = vec![(hf.describe("rotten", "before the snapshot"), "before the snapshot".to_owned())];
    hf.wait_status("rotten", "first shipment and snapshot", |s| caught_up(s) && num(&s["snapshots"]) == 1);
    for batch in 0..2 {
        for n in 0..3 {
            let description = format!("batch {batch} write {n}");
            lsn_of.push((hf.describe("rotten", &description), description));
        }
        hf.wait_caught_up("rotten");
    }
    assert_eq!(server.stop().code(), Some(0));

    let manifest = archive.manifest(&id);
    let segments = manifest["segments"].as_array().expect("segments");
    let snapshots = manifest["snapshots"].as_array().expect("snapshots");
    assert!(segments.len() >= 2, "{manifest:#}");
    assert_eq!(snapshots.len(), 1, "{manifest:#}");
    let last = segments.last().expect("a last segment");
    let (bad_first, archived) = (num(&last["first_lsn"]), num(&manifest["archived_lsn"]));
    assert!(bad_first > num(&snapshots[0]["lsn"]), "the snapshot must not cover the last segment: {manifest:#}");
    let file = archive.segment_file(&id, last);
    let mut bytes = std::fs::read(&file).expect("read the last segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&file, bytes).expect("write the corrupted segment");

    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    let key = segment_key(last);
    let to = archived.to_string();
    let refused = hf.restore("rotten", "rotten-full", &["--from-archive", "--lsn", &to]);
    assert_ne!(refused.code, 0, "a restore through a corrupt segment succeeded: {}", refused.stdout);
    let names_it = refused.stderr.contains(&key) && refused.stderr.contains("corrupt");
    assert!(names_it, "names the object: {}", refused.stderr);
    assert_eq!(hf.run(&["project", "show", "rotten-full"]).code, 3, "a failed restore leaves no project");
    let verify = hf.run(&["backup", "verify", "--project", "rotten"]);
    assert_ne!(verify.code, 0, "verify passed a corrupt archive: {}", verify.stdout);
    assert!(verify.stderr.contains(".seg.zst"), "{}", verify.stderr);

    let summary = hf.restore("rotten", "rotten-part", &["--from-archive", "--lsn", &to, "--allow-partial"]).json();
    let partial = summary["partial"].as_str().unwrap_or_else(|| panic!("not marked partial: {summary}"));
    assert!(partial.contains(&key), "{partial}");
    let restored = num(&summary["restored_lsn"]);
    assert_eq!(restored, bad_first - 1, "stops at the last change before the corrupt segment: {summary}");
    let expected = lsn_of.iter().rfind(|(lsn, _)| *lsn <= restored).map(|(_, d)| d.as_str());
    assert_eq!(hf.show("rotten-part")["description"].as_str(), expected);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn kill_9_during_a_snapshot_upload_leaves_a_usable_archive() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let settings = "interval_ms = 100\nsnapshot_secs = 86400\nlevels_secs = []\n";
    // Every snapshot is stored and then its put hangs, so the kill lands after the object is
    // written and before the manifest names it.
    let server = serve_faulty(data.path(), &archive, settings, "put:snapshots/=delay:60000");
    let hf = Hf::new(&server);
    let id = hf.create("snappy");
    let mut last = 0;
    for n in 0..5 {
        last = hf.describe("snappy", &format!("write {n}"));
    }
    let snapshots = archive.project_dir(&id).join("snapshots");
    wait_until("snapshot object", || !files_under(&snapshots).is_empty());
    let scratch = data.path().join("tmp");
    assert_eq!(server.kill9().code(), None, "killed by a signal");
    let manifest = archive.manifest(&id);
    assert_eq!(manifest["snapshots"].as_array().map(Vec::len), Some(0), "the manifest never named it: {manifest:#}");

    let left = files_under(&scratch);
    assert!(!left.is_empty(), "the killed snapshot left its scratch copy");

    let server = serve(data.path(), &archive, settings);
    assert!(left.iter().all(|f| !f.exists()), "start-up clears the scratch copies: {left:?}");
    let hf = Hf::new(&server);
    let status = hf.json(&["backup", "now", "--project", "snappy"]);
    assert_eq!((num(&status["archived_lsn"]), num(&status["snapshots"])), (last, 1), "{status}");
    hf.verify_ok("snappy");
    let summary = hf.restore("snappy", "snappy-copy", &["--from-archive"]).json();
    assert_eq!(summary["restored_lsn"], last, "{summary}");
    assert_eq!(hf.show("snappy-copy")["description"], "write 4");
    assert_eq!(server.stop().code(), Some(0));
    let manifest = archive.manifest(&id);
    assert_contiguous(&archive, &id, &manifest);
    let named: Vec<u64> = manifest["snapshots"].as_array().expect("snapshots").iter().map(|s| num(&s["lsn"])).collect();
    assert_eq!(named, vec![last], "{manifest:#}");
    assert_eq!(files_under(&snapshots).len(), 1, "one snapshot object: {:?}", files_under(&snapshots));
}

#[test]
fn kill_9_during_a_restore_leaves_no_half_restored_project() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let settings = "interval_ms = 100\nsnapshot_secs = 86400\nlevels_secs = []\n";
    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    hf.create("source");
    let mut last = 0;
    for n in 0..10 {
        last = hf.describe("source", &format!("write {n}"));
        hf.wait_caught_up("source"); // several segments, so a restore reads more than one
    }
    assert_eq!(server.stop().code(), Some(0));

    // Reading a segment hangs: the restore is under way (its target `creating`) when the kill lands.
    let server = serve_faulty(data.path(), &archive, settings, "get:segments/=delay:60000");
    let api = server.admin();
    let body = json!({ "into": "half", "from_archive": true });
    let op = api.post("/v1/projects/source/restore", &body).ok(202);
    let op_id = op["id"].as_str().expect("operation id").to_owned();
    sleep(Duration::from_millis(300));
    let running = api.get(&format!("/v1/operations/{op_id}")).ok(200);
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(Hf::new(&server).run(&["project", "show", "half"]).code, 3, "invisible while restoring");
    assert_eq!(server.kill9().code(), None, "killed by a signal");

    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    assert_eq!(hf.run(&["project", "show", "half"]).code, 3, "the half-restored project is rolled back");
    let names: Vec<Value> = server.admin().all_projects(100).iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, vec![json!("source")], "only the source is listed");
    let summary = hf.restore("source", "half", &["--from-archive"]).json();
    assert_eq!(summary["restored_lsn"], last, "the restore can be run again: {summary}");
    assert_eq!(hf.show("half")["description"], "write 9");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn kill_9_during_an_import_then_a_rerun_completes_it() {
    let work = tempfile::tempdir().expect("work");
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let hf = Hf::new(&server);
    hf.create("origin");
    let content = b"the bytes an import must store before it journals anything\n".repeat(100);
    let file_id = upload(&server, "origin", "notes.txt", &content)["id"].as_str().expect("file id").to_owned();
    hf.describe("origin", "exported");
    let file = work.path().join("origin.hfx");
    let file = file.to_str().expect("path");
    hf.run(&["export", "--project", "origin", "--out", file]).success();
    assert_eq!(server.stop().code(), Some(0));

    // Storing the blob hangs once the bytes are down: the kill lands between the blob and the
    // changes that reference it.
    let server = Server::start_with(data.path(), Opts::default().env("HOLDFAST_OBJECT_FAULTS", "put:sha256/=delay:60000"));
    let importer = {
        let (endpoint, file) = (server.base.clone(), file.to_owned());
        std::thread::spawn(move || {
            let env = [("HOLDFAST_ENDPOINT", endpoint.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
            Cli::new().run_env(&["-o", "json", "import", "--in", &file, "--project", "copy"], &env)
        })
    };
    let api = server.admin();
    wait_until("import to create its project", || api.get("/v1/projects/copy").status == 200);
    sleep(Duration::from_millis(300));
    assert_eq!(server.kill9().code(), None, "killed by a signal");
    let out = importer.join().expect("importer thread");
    assert_ne!(out.code, 0, "the interrupted import failed: {}", out.stdout);

    let server = Server::start(data.path());
    let hf = Hf::new(&server);
    let summary = hf.json(&["import", "--in", file, "--project", "copy"]);
    assert!(num(&summary["lsn_after"]) > num(&summary["lsn_before"]), "the re-run wrote the rest: {summary}");
    assert_eq!(download(&server, "copy", &file_id), content);
    assert_eq!(hf.show("copy")["description"], "exported");
    let again = hf.json(&["import", "--in", file, "--project", "copy"]);
    assert_eq!(again["lsn_after"], again["lsn_before"], "a third import changes nothing: {again}");
    // Exports of both match resource for resource (ids, bodies and times).
    let copy = work.path().join("copy.hfx");
    hf.run(&["export", "--project", "copy", "--out", copy.to_str().expect("path")]).success();
    assert_eq!(resources_of(Path::new(file)), resources_of(&copy));
    assert_eq!(server.stop().code(), Some(0));
}

/// The resource lines of an export file but the project's own record (its name differs).
fn resources_of(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("read export");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["type"] == "resource" && v["kind"] != "project")
        .collect()
}

#[test]
fn kill_9_between_a_delete_and_its_archive_flush_ships_the_tail_at_restart() {
    let (data, archive) = (tempfile::tempdir().expect("data"), Archive::new());
    let settings = "interval_ms = 100\nsnapshot_secs = 86400\nlevels_secs = []\n";
    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    let id = hf.create("doomed");
    let last = hf.describe("doomed", "the last word");
    hf.wait_caught_up("doomed");
    // Soft-deleted (change last + 1); the purge below journals the deletion (last + 2).
    hf.run(&["project", "delete", "doomed"]).success();
    assert_eq!(server.stop().code(), Some(0));

    // Segment puts now land and then hang, so the delete's flush never reaches its manifest. The
    // archiver's own passes are a minute apart: only the delete ships the deletion.
    let quiet = "interval_ms = 60000\nsnapshot_secs = 86400\nlevels_secs = []\n";
    let server = serve_faulty(data.path(), &archive, quiet, "put:segments/=delay:60000");
    let deleting = {
        let url = format!("{}/v1/deleted-projects/doomed", server.base);
        std::thread::spawn(move || {
            let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
            http.delete(&url).bearer_auth(common::ADMIN_KEY).send().map(|r| r.status().as_u16())
        })
    };
    // The deletion commits at once; the flush hangs on the segment put.
    wait_until("the deletion's segment object", || {
        files_under(&archive.project_dir(&id).join("segments")).iter().any(|f| {
            f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(&format!("-{:020}-", last + 2)))
        })
    });
    assert_eq!(server.kill9().code(), None, "killed by a signal");
    let _ = deleting.join();
    assert_eq!(archive.manifest(&id)["deleted"], false, "the crash kept the deletion from the manifest");

    // At restart the interrupted delete is finished, and its tail shipped first.
    let server = serve(data.path(), &archive, settings);
    let hf = Hf::new(&server);
    wait_until("the archived deletion", || {
        std::fs::read(archive.project_dir(&id).join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|m| m["deleted"] == true)
    });
    assert_eq!(hf.run(&["project", "show", "doomed"]).code, 3, "the delete is finished");
    let manifest = archive.manifest(&id);
    assert_eq!(num(&manifest["archived_lsn"]), last + 2, "{manifest:#}");
    let summary = hf.restore("doomed", "doomed-again", &[]).json();
    assert_eq!(summary["restored_lsn"], last + 1, "{summary}");
    assert_eq!(hf.show("doomed-again")["description"], "the last word");
    assert_eq!(server.stop().code(), Some(0));
}
