//! What the server keeps on its own disk, against the real binary (issue 13): the data
//! directory is its owner's alone (directories 0700, files 0600, WAL files too, and what an
//! older version left open is tightened at start), and a stale temporary file never lends its
//! mode to a secret.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::cluster::oa;
use common::{Opts, Server};
use reqwest::Method;
use serde_json::json;

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
