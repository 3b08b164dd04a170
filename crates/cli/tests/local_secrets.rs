//! What the server keeps on its own disk, against the real binary (issue 13): the data
//! directory is its owner's alone (directories 0700, files 0600, WAL files too, and what an
//! older version left open is tightened at start), a stale temporary file never lends its mode
//! to a secret, API keys are stored peppered (a legacy sha256 row still works and is upgraded
//! when used), and the cluster secret can come from a file, kept out of `ps`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::cluster::{oa, status, wait_applied};
use common::{ADMIN_KEY, Cli, Opts, Server, free_port};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Everything under `dir` (not `dir` itself), links not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().expect("file type").is_dir();
        out.push(path.clone());
        if is_dir {
            out.extend(walk(&path));
        }
    }
    out
}

/// Asserts the data directory and every directory in it are 0700 and every file 0600; returns
/// the files.
fn assert_owner_only(data: &Path) -> Vec<PathBuf> {
    assert_eq!(mode(data), 0o700, "the data directory");
    let all = walk(data);
    let mut files = Vec::new();
    for path in &all {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        if meta.is_dir() {
            assert_eq!(mode(path), 0o700, "directory {} is {:o}", path.display(), mode(path));
        } else {
            assert_eq!(mode(path), 0o600, "file {} is {:o}", path.display(), mode(path));
            files.push(path.clone());
        }
    }
    files
}

fn name_ends(files: &[PathBuf], suffix: &str) -> usize {
    files.iter().filter(|p| p.to_string_lossy().ends_with(suffix)).count()
}

fn write_conversation(admin: &common::Api, project: &str) {
    admin.post(&oa(project, "/conversations"), &json!({"items": [{"role": "user", "content": "hello"}]})).ok(200);
}

#[test]
fn the_data_directory_is_the_owners_alone_and_what_was_left_open_is_tightened_at_start() {
    let parent = tempfile::tempdir().expect("tempdir");
    let data = parent.path().join("data");
    // A generated admin key and master key, a project with a conversation and a file.
    let server = Server::start_with(&data, Opts::without_admin_key());
    server.admin().create_project("modes");
    write_conversation(&server.admin(), "modes");
    let upload = server.admin().send_raw(
        Method::POST,
        &oa("modes", "/files"),
        Some(&format!("multipart/form-data; boundary={}", common::cluster::BOUNDARY)),
        common::cluster::multipart("notes.txt", b"bytes kept as a blob"),
    );
    upload.ok(200);
    // While it runs (WAL files present), everything it made is 0600 / 0700.
    let files = assert_owner_only(&data);
    for name in ["state.db", "state.db-wal", "control.db", "control.db-wal", "admin.key", "master.key", "holdfast.lock"] {
        assert!(name_ends(&files, &format!("/{name}")) >= 1, "no {name} among {files:?}");
    }
    assert!(files.iter().any(|p| p.starts_with(data.join("blobs"))), "a blob: {files:?}");
    let key = server.admin_key.clone().expect("generated key");
    assert_eq!(server.stop().code(), Some(0));

    // As an older version (or a copy with umask 022) left it: directories 0755, files 0644.
    chmod(&data, 0o755);
    for path in walk(&data) {
        chmod(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    assert_eq!(mode(&data.join("control.db")), 0o644);
    // A link inside is neither followed nor changed.
    let outside = parent.path().join("outside.txt");
    std::fs::write(&outside, "not holdfast's").expect("write");
    chmod(&outside, 0o644);
    std::os::unix::fs::symlink(&outside, data.join("link")).expect("symlink");

    let server = Server::start_with(&data, Opts::without_admin_key());
    assert_eq!(mode(&outside), 0o644, "the link's target is left alone");
    std::fs::remove_file(data.join("link")).expect("remove the link");
    let stderr = server.stderr();
    assert!(stderr.contains("took group and other permissions away") && stderr.contains("tightened="), "{stderr}");
    // The earlier files, and the WAL files of a new write, are the owner's alone.
    let admin = server.api(Some(&key));
    admin.get("/v1/projects/modes").ok(200);
    write_conversation(&admin, "modes");
    let files = assert_owner_only(&data);
    assert!(name_ends(&files, "/state.db-wal") >= 1 && name_ends(&files, "/control.db-wal") == 1, "{files:?}");
}

#[test]
fn a_stale_temporary_file_does_not_lend_its_mode_to_the_admin_key() {
    let data = tempfile::tempdir().expect("tempdir");
    chmod(data.path(), 0o755);
    // What a crash (or another local user, when the directory was open) may leave: a
    // temporary file readable by everyone, where the key is written before it is renamed.
    for tmp in ["admin.tmp", "master.tmp"] {
        let path = data.path().join(tmp);
        std::fs::write(&path, "stale").expect("write");
        chmod(&path, 0o644);
    }
    let server = Server::start_with(data.path(), Opts::without_admin_key());
    let key = server.generated_key().expect("a generated key");
    let path = data.path().join("admin.key");
    assert_eq!(std::fs::read_to_string(&path).expect("admin.key").trim(), key);
    assert_eq!(mode(&path), 0o600, "admin.key");
    assert_eq!(mode(&data.path().join("master.key")), 0o600, "master.key");
    assert!(!data.path().join("admin.tmp").exists() && !data.path().join("master.tmp").exists());
    server.api(Some(&key)).get("/v1/keys").ok(200);
}

fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `(id, hash, source, revoked)` of every key in `control.db`.
fn stored_keys(data: &Path) -> Vec<(String, String, String, bool)> {
    let db = rusqlite::Connection::open_with_flags(data.join("control.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open control.db");
    let mut stmt = db.prepare("SELECT id, hash, source, revoked_us IS NOT NULL FROM api_keys ORDER BY created_us, id").expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn hash_of(data: &Path, id: &str) -> String {
    stored_keys(data).into_iter().find(|k| k.0 == id).unwrap_or_else(|| panic!("no key {id}")).1
}

/// Puts a key's hash back as an older version stored it (offline: the server is stopped).
fn store_legacy_hash(data: &Path, id: &str, key: &str) {
    let db = rusqlite::Connection::open(data.join("control.db")).expect("open control.db");
    let changed = db.execute("UPDATE api_keys SET hash = ?2 WHERE id = ?1", [id, &sha256_hex(key)]).expect("update");
    assert_eq!(changed, 1);
}

/// Takes the control journal away (offline), leaving `control.db`'s tables as a release before
/// the control journal kept them: the next start upgrades in place.
fn drop_control_journal(data: &Path) {
    let db = rusqlite::Connection::open(data.join("control.db")).expect("open control.db");
    let id: String = db.query_row("SELECT id FROM projects WHERE name = 'holdfast-control'", [], |r| r.get(0)).expect("control journal");
    db.execute("DELETE FROM projects WHERE id = ?1", [&id]).expect("delete");
    std::fs::remove_dir_all(data.join("projects").join(&id)).expect("remove the control journal");
}

/// Waits (bounded) until key `id`'s stored hash satisfies `ok`.
fn wait_for_hash(data: &Path, id: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let hash = hash_of(data, id);
        if ok(&hash) {
            return hash;
        }
        assert!(std::time::Instant::now() < deadline, "key {id} is still stored as {hash}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn key_hashes_are_peppered_and_a_legacy_sha256_row_still_works_and_is_upgraded() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path());
    let admin = server.admin();
    let reader = admin.create_key("reader", "reader");
    let (reader_key, reader_id) = (reader["key"].as_str().expect("key").to_owned(), reader["key_id"].as_str().expect("id").to_owned());
    let revoked = admin.create_key("gone", "reader");
    let (revoked_key, revoked_id) = (revoked["key"].as_str().expect("key").to_owned(), revoked["key_id"].as_str().expect("id").to_owned());
    admin.delete(&format!("/v1/keys/{revoked_id}")).ok(204);
    admin.post("/v1/identities", &json!({"name": "runner"})).ok(201);
    let identity = admin.post("/v1/identities/runner/keys", &json!({})).ok(201);
    let (identity_key, identity_id) = (identity["key"].as_str().expect("key").to_owned(), identity["key_id"].as_str().expect("id").to_owned());

    // Nothing in control.db is a plain sha256 of a key: the admin key (HOLDFAST_ADMIN_KEY, 31
    // characters — guessable offline from sha256 at some effort), API and identity keys.
    let keys = stored_keys(data.path());
    assert_eq!(keys.len(), 4, "{keys:?}");
    for (id, hash, _, _) in &keys {
        assert!(hash.starts_with("v2:") && hash.len() == 3 + 64, "key {id}: {hash}");
    }
    for key in [ADMIN_KEY, &reader_key, &revoked_key, &identity_key] {
        assert!(!keys.iter().any(|k| k.1.contains(&sha256_hex(key))), "sha256 of a key is stored: {keys:?}");
    }
    let admin_row = keys.iter().find(|k| k.2 == "env").expect("the env admin key").clone();
    assert_eq!(server.stop().code(), Some(0));

    // As an older version stored them, before the control journal: plain sha256 rows in
    // control.db and nothing else. The next start upgrades in place.
    store_legacy_hash(data.path(), &admin_row.0, ADMIN_KEY);
    store_legacy_hash(data.path(), &reader_id, &reader_key);
    store_legacy_hash(data.path(), &revoked_id, &revoked_key);
    store_legacy_hash(data.path(), &identity_id, &identity_key);
    drop_control_journal(data.path());
    let server = Server::start(data.path());
    // The environment's admin key is stored peppered at start, the same key under its id (not
    // revoked and made again).
    let keys = stored_keys(data.path());
    assert_eq!(keys.len(), 4, "every key came through the upgrade: {keys:?}");
    let env_rows: Vec<_> = keys.iter().filter(|k| k.2 == "env").collect();
    assert_eq!(env_rows.len(), 1, "{keys:?}");
    assert_eq!((&env_rows[0].0, env_rows[0].3), (&admin_row.0, false));
    assert!(env_rows[0].1.starts_with("v2:") && env_rows[0].1 != sha256_hex(ADMIN_KEY), "{keys:?}");
    // The legacy reader key works, and is stored peppered once it has.
    assert_eq!(hash_of(data.path(), &reader_id), sha256_hex(&reader_key));
    let api = server.api(Some(&reader_key));
    api.get("/v1/projects").ok(200);
    let upgraded = wait_for_hash(data.path(), &reader_id, |h| h.starts_with("v2:"));
    assert_ne!(upgraded, sha256_hex(&reader_key));
    api.get("/v1/projects").ok(200);
    assert_eq!(hash_of(data.path(), &reader_id), upgraded, "stable once upgraded");
    // A revoked key stays revoked whatever its hash.
    server.api(Some(&revoked_key)).get("/v1/projects").err(401, "unauthenticated");
    assert_eq!(hash_of(data.path(), &revoked_id), sha256_hex(&revoked_key));
    assert_eq!(server.stop().code(), Some(0));

    // After a restart the upgraded key is found by its peppered hash.
    let server = Server::start(data.path());
    server.api(Some(&reader_key)).get("/v1/projects").ok(200);
    let identity = server.api(Some(&identity_key)).get("/v1/projects");
    assert_ne!(identity.status, 401, "the identity's key authenticates: {}", identity.text);
}

/// Options of region `region` on `port` knowing `peer` on `peer_port`, with the shared master
/// key and no cluster secret (the test gives it).
fn region_opts(region: &str, port: u16, peer: &str, peer_port: u16) -> Opts {
    common::cluster::region_opts_without_secret(region, port, peer, &format!("http://127.0.0.1:{peer_port}"))
}

const FILE_SECRET: &str = "file-cluster-secret-0123456789";

#[test]
fn regions_replicate_with_the_cluster_secret_from_a_file_and_refuse_a_wrong_one_of_any_length() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret_file = secrets.path().join("cluster.secret");
    // Written by an editor or `echo`: surrounding whitespace and a newline are not the secret.
    std::fs::write(&secret_file, format!("  {FILE_SECRET}\n")).expect("write");
    chmod(&secret_file, 0o600);
    let (da, db) = (tempfile::tempdir().expect("data a"), tempfile::tempdir().expect("data b"));
    let (pa, pb) = (free_port(), free_port());
    let path = secret_file.display().to_string();
    // Region a by the flag, region b by the environment variable.
    let a = Server::start_with(da.path(), region_opts("a", pa, "b", pb).arg("--cluster-secret-file").arg(&path));
    let b = Server::start_with(db.path(), region_opts("b", pb, "a", pa).env("HOLDFAST_CLUSTER_SECRET_FILE", &path));
    for server in [&a, &b] {
        assert!(!server.stderr().contains("other local users"), "no warning for a secret file: {}", server.stderr());
    }
    let (api_a, api_b) = (a.admin(), b.admin());
    let id = api_a.create_project("filed")["id"].as_str().expect("id").to_owned();
    write_conversation(&api_a, "filed");
    api_a.post("/v1/projects/filed/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    let lsn = status(&api_a, "filed")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "filed", lsn);
    assert_eq!(api_b.journal("filed"), api_a.journal("filed"));

    // A peer proves the secret itself: shorter, longer, or of the same length but wrong, it is
    // refused.
    let pull = format!("/internal/v1/projects/{id}/journal?after=0&region=b");
    let same_length_wrong = format!("{}X", &FILE_SECRET[..FILE_SECRET.len() - 1]);
    let longer = format!("{FILE_SECRET}-and-more");
    for wrong in ["short", &FILE_SECRET[..20], &same_length_wrong, &longer] {
        let refused = api_a.send(Method::GET, &pull, None, &[("x-holdfast-cluster-secret", wrong)]);
        assert_eq!(refused.status, 401, "{wrong:?}: {}", refused.text);
    }
    let admitted = api_a.send(Method::GET, &pull, None, &[("x-holdfast-cluster-secret", FILE_SECRET)]);
    assert_eq!(admitted.status, 200, "{}", admitted.text);
}

#[test]
fn a_cluster_secret_on_the_command_line_is_warned_about_and_bad_secret_files_are_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let flagged = Server::start_with(data.path(), Opts::default().arg("--cluster-secret").arg("flag-cluster-secret-0123456789"));
    let stderr = flagged.stderr();
    assert!(stderr.contains("WARN") && stderr.contains("--cluster-secret-file"), "{stderr}");
    assert_eq!(flagged.stop().code(), Some(0));
    // Through the environment: no warning.
    let env = Server::start_with(data.path(), Opts::default().env("HOLDFAST_CLUSTER_SECRET", "env-cluster-secret-0123456789"));
    assert!(!env.stderr().contains("--cluster-secret-file"), "{}", env.stderr());
    assert_eq!(env.stop().code(), Some(0));

    let dir = tempfile::tempdir().expect("tempdir");
    let cli = Cli::new();
    let serve = |file: &Path| {
        let (d, f) = (data.path().display().to_string(), file.display().to_string());
        cli.run(&["serve", "--data", &d, "--listen", "127.0.0.1:0", "--cluster-secret-file", &f])
    };
    for (name, text, says) in [("empty", "\n \n", "is empty"), ("short", "fifteen-chars!!\n", "at least 16")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        chmod(&path, 0o600);
        let out = serve(&path);
        assert_ne!(out.code, 0, "{name}: {out:?}");
        assert!(out.stderr.contains(says), "{name}: {}", out.stderr);
    }
    let out = serve(&dir.path().join("missing"));
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("cannot read --cluster-secret-file"), "{}", out.stderr);
}
