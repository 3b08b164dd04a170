//! `holdfast serve` configuration: defaults, then `holdfast.toml`, then environment variables,
//! then flags, each overriding the one before. The file format is documented in README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_DATA: &str = "./holdfast-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
pub const DEFAULT_REGION: &str = "local";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 120;

/// `holdfast.toml`. Every field is optional; unknown fields are an error, so a typo is caught.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub upstream: FileUpstream,
    #[serde(default)]
    pub archive: FileArchive,
    /// Peer regions: `[[peers]] region = "b", url = "http://…"`.
    #[serde(default)]
    pub peers: Vec<FilePeer>,
    /// Shared by every region of the cluster; required for replication. Prefer
    /// `cluster_secret_file` (or the environment) to keep it out of the configuration.
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (surrounding whitespace is ignored); give this or
    /// `cluster_secret`, not both.
    pub cluster_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub replication: FileReplication,
    #[serde(default)]
    pub coordinator: FileCoordinator,
}

/// `[coordinator]`: etcd as the witness of automatic failover.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCoordinator {
    /// etcd client URLs, e.g. `["http://etcd-1:2379"]`.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The primary's lease, in seconds (default 5).
    pub lease_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePeer {
    pub region: String,
    pub url: String,
}

/// `[replication]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplication {
    /// How long a write under sync commit waits for its replica before it fails (default 5000).
    pub sync_timeout_ms: Option<u64>,
    /// The region that leads the control plane before any region has replicated it (default:
    /// the first region name in order among this one and its peers).
    pub control_primary: Option<String>,
}

/// `[archive]`: continuous backup to object storage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileArchive {
    /// `file:///dir`, `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
    pub url: Option<String>,
    /// How often the journal is shipped, in milliseconds (default 1000).
    pub interval_ms: Option<u64>,
    /// Most changes per shipped segment (default 10000).
    pub segment_changes: Option<usize>,
    /// How long any point stays restorable, in hours (default 168, a week).
    pub retention_hours: Option<f64>,
    /// Compaction levels: bucket widths in seconds (default [30, 300, 3600]).
    pub levels_secs: Option<Vec<u64>>,
    /// How often a snapshot is taken, in seconds (default 3600).
    pub snapshot_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Seconds a call to an upstream model may take, end to end.
    pub timeout_secs: Option<u64>,
    /// Milliseconds a deployment's connection may take to send its first chunk before the next
    /// of its connections is tried (default 30000).
    pub attempt_timeout_ms: Option<u64>,
    /// Seconds calls skip a connection that failed 3 calls in a row before one probes it again
    /// (default 30).
    pub breaker_open_secs: Option<u64>,
    /// Whether connections may target loopback and private addresses (default true: a local
    /// model server is the common self-hosted case).
    pub allow_private: Option<bool>,
    /// When not empty, the only hosts a connection may target (`*.suffix` for any name under
    /// `suffix`).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_body_bytes: Option<usize>,
    pub max_file_bytes: Option<usize>,
    /// Most projects a principal other than an Owner may hold (default 100; 0: no limit).
    pub max_projects_per_principal: Option<u64>,
    /// Close a project nobody used for this many seconds (default 600; 0: never).
    pub idle_close_secs: Option<u64>,
    /// Largest import file (`POST /v1/projects/{p}/import`), in bytes (default 1 GiB).
    pub max_import_bytes: Option<u64>,
    /// Free space an import leaves on the data directory's filesystem, in bytes (default
    /// 256 MiB): an import that would go below it is refused with 507.
    pub import_min_free_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// A tracing filter such as `info` or `holdfast_store=debug,info`.
    pub level: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The settings `serve` runs with, after layering.
#[derive(Debug)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub region: String,
    pub max_body_bytes: usize,
    pub max_file_bytes: usize,
    pub max_projects_per_principal: Option<u64>,
    pub idle_close: Option<std::time::Duration>,
    pub max_import_bytes: u64,
    pub import_min_free_bytes: u64,
    pub upstream_timeout_secs: u64,
    pub attempt_timeout: std::time::Duration,
    pub breaker_open: std::time::Duration,
    pub egress: holdfast_agents::egress::EgressConfig,
    pub log: String,
    pub archive: Option<holdfast_recovery::backup::ArchiveConfig>,
    pub cluster: holdfast_geo::replication::ClusterConfig,
    pub coordinator: Option<holdfast_geo::coordinator::CoordinatorConfig>,
    /// Said at start, once logging is on (a secret on the command line, a secret file others
    /// can read).
    pub warnings: Vec<String>,
}

/// Where a value clap read came from: its flag or its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Given {
    Flag,
    Env,
}

/// The shortest cluster secret accepted.
pub const MIN_CLUSTER_SECRET: usize = 16;

/// Values from flags or environment (clap reads both; flags win).
pub struct Overrides {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub region: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_file_bytes: Option<usize>,
    pub max_import_bytes: Option<u64>,
    pub import_min_free_bytes: Option<u64>,
    pub upstream_timeout_secs: Option<u64>,
    pub log: Option<String>,
    pub archive: Option<String>,
    /// `--peer REGION=URL`, added to (and overriding) the file's peers.
    pub peers: Vec<String>,
    /// `--control-primary` / `HOLDFAST_CONTROL_PRIMARY`.
    pub control_primary: Option<String>,
    /// `--cluster-secret` / `HOLDFAST_CLUSTER_SECRET`.
    pub cluster_secret: Option<(String, Given)>,
    /// `--cluster-secret-file` / `HOLDFAST_CLUSTER_SECRET_FILE`.
    pub cluster_secret_file: Option<(PathBuf, Given)>,
    /// `--etcd URL`, replacing the file's list when given.
    pub etcd: Vec<String>,
}

fn valid_region(region: &str) -> bool {
    !region.is_empty() && region.len() <= 63 && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ServeConfig {
    pub fn resolve(file: FileConfig, over: Overrides) -> Result<Self> {
        let listen = over.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("invalid listen address {listen:?}: expected IP:PORT such as {DEFAULT_LISTEN}"))?;
        let region = over.region.or(file.region).unwrap_or_else(|| DEFAULT_REGION.to_owned());
        anyhow::ensure!(valid_region(&region), "invalid region {region:?}: use 1 to 63 lowercase letters, digits and '-'");
        let mut peers = std::collections::BTreeMap::new();
        let flag_peers = over.peers.iter().map(|p| {
            p.split_once('=')
                .map(|(r, u)| (r.to_owned(), u.to_owned()))
                .with_context(|| format!("invalid --peer {p:?}: expected REGION=URL"))
        });
        let file_peers = file.peers.iter().map(|p| Ok((p.region.clone(), p.url.clone())));
        for peer in file_peers.chain(flag_peers) {
            let (peer_region, url) = peer?;
            anyhow::ensure!(valid_region(&peer_region), "invalid peer region {peer_region:?}");
            anyhow::ensure!(peer_region != region, "peer {peer_region:?} is this server's own region");
            let parsed = reqwest::Url::parse(&url).with_context(|| format!("invalid URL {url:?} for peer {peer_region}"))?;
            anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "peer {peer_region}: URL must be http(s), got {url:?}");
            peers.insert(peer_region, url);
        }
        let mut warnings = Vec::new();
        let secret = cluster_secret(
            (over.cluster_secret, over.cluster_secret_file),
            (file.cluster_secret, file.cluster_secret_file),
            &mut warnings,
        )?;
        let sync_timeout_ms = file.replication.sync_timeout_ms.unwrap_or(5000);
        anyhow::ensure!((10..=600_000).contains(&sync_timeout_ms), "replication sync_timeout_ms must be 10 to 600000");
        let etcd = if over.etcd.is_empty() { file.coordinator.etcd.clone() } else { over.etcd.clone() };
        let coordinator = if etcd.is_empty() {
            None
        } else {
            for url in &etcd {
                let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid etcd URL {url:?}"))?;
                anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "etcd URL must be http(s), got {url:?}");
            }
            let ttl = file.coordinator.lease_ttl_secs.unwrap_or(5);
            anyhow::ensure!((2..=60).contains(&ttl), "coordinator lease_ttl_secs must be 2 to 60");
            anyhow::ensure!(secret.is_some(), "[coordinator] needs the cluster secret: failover is between regions");
            Some(holdfast_geo::coordinator::CoordinatorConfig { endpoints: etcd, lease_ttl: std::time::Duration::from_secs(ttl) })
        };
        let control_primary = over.control_primary.or(file.replication.control_primary);
        if let Some(p) = &control_primary {
            anyhow::ensure!(*p == region || peers.contains_key(p), "control_primary {p:?} is neither this region nor a peer");
        }
        let cluster = holdfast_geo::replication::ClusterConfig {
            control_primary,
            peers,
            secret,
            sync_timeout: std::time::Duration::from_millis(sync_timeout_ms),
        };
        let max_body_bytes = over.max_body_bytes.or(file.limits.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES);
        anyhow::ensure!(max_body_bytes >= 1024, "max_body_bytes must be at least 1024");
        let max_file_bytes = over
            .max_file_bytes
            .or(file.limits.max_file_bytes)
            .unwrap_or(holdfast_core::DEFAULT_MAX_FILE_BYTES);
        anyhow::ensure!(max_file_bytes >= 1, "max_file_bytes must be at least 1");
        let max_import_bytes = over
            .max_import_bytes
            .or(file.limits.max_import_bytes)
            .unwrap_or(holdfast_recovery::DEFAULT_MAX_IMPORT_BYTES);
        anyhow::ensure!(max_import_bytes >= 1024, "max_import_bytes must be at least 1024");
        let import_min_free_bytes = over
            .import_min_free_bytes
            .or(file.limits.import_min_free_bytes)
            .unwrap_or(holdfast_recovery::DEFAULT_IMPORT_MIN_FREE_BYTES);
        let upstream_timeout_secs =
            over.upstream_timeout_secs.or(file.upstream.timeout_secs).unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_SECS);
        anyhow::ensure!(
            (1..=86_400).contains(&upstream_timeout_secs),
            "upstream timeout_secs must be 1 to 86400 (a day)"
        );
        let attempt_ms = file.upstream.attempt_timeout_ms.unwrap_or(30_000);
        anyhow::ensure!((10..=3_600_000).contains(&attempt_ms), "upstream attempt_timeout_ms must be 10 to 3600000");
        let attempt_timeout = std::time::Duration::from_millis(attempt_ms);
        let breaker_secs = file.upstream.breaker_open_secs.unwrap_or(30);
        anyhow::ensure!((1..=86_400).contains(&breaker_secs), "upstream breaker_open_secs must be 1 to 86400");
        let breaker_open = std::time::Duration::from_secs(breaker_secs);
        for host in &file.upstream.allow_hosts {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            anyhow::ensure!(
                !bare.is_empty() && !bare.contains(['/', ':', '@', '#', '?', '*']) || bare.parse::<std::net::IpAddr>().is_ok(),
                "upstream allow_hosts entry {host:?} must be a host name, an IP address or *.suffix (no scheme, port or path)"
            );
        }
        let max_projects_per_principal = match file.limits.max_projects_per_principal {
            None => Some(holdfast_core::DEFAULT_MAX_PROJECTS_PER_PRINCIPAL),
            Some(0) => None,
            Some(n) => Some(n),
        };
        let idle_close = match file.limits.idle_close_secs {
            None => Some(holdfast_core::DEFAULT_IDLE_CLOSE),
            Some(0) => None,
            Some(secs) => Some(std::time::Duration::from_secs(secs)),
        };
        let egress = holdfast_agents::egress::EgressConfig {
            allow_private: file.upstream.allow_private.unwrap_or(true),
            allow_hosts: file.upstream.allow_hosts.clone(),
            listen: Some(listen),
        };
        let archive = match over.archive.or(file.archive.url.clone()) {
            None => None,
            Some(url) => Some(archive_config(url, &file.archive)?),
        };
        Ok(Self {
            coordinator,
            cluster,
            archive,
            data: over.data.or(file.data).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)),
            listen,
            region,
            max_body_bytes,
            max_file_bytes,
            max_projects_per_principal,
            idle_close,
            max_import_bytes,
            import_min_free_bytes,
            upstream_timeout_secs,
            attempt_timeout,
            breaker_open,
            egress,
            log: over.log.or(file.log.level).unwrap_or_else(|| "info".to_owned()),
            warnings,
        })
    }
}

/// The cluster secret, from the first layer that gives one — flags, then environment, then the
/// file — inline or as a file to read; a layer that gives both is refused. An empty inline
/// value counts as not given.
type Layer<T> = Option<(T, Given)>;

fn cluster_secret(
    (over_inline, over_path): (Layer<String>, Layer<PathBuf>),
    (file_inline, file_path): (Option<String>, Option<PathBuf>),
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let inline = |given| over_inline.clone().filter(|(s, g)| *g == given && !s.is_empty()).map(|(s, _)| s);
    let path = |given| over_path.clone().filter(|(_, g)| *g == given).map(|(p, _)| p);
    let layers = [
        ("--cluster-secret", "--cluster-secret-file", inline(Given::Flag), path(Given::Flag)),
        ("HOLDFAST_CLUSTER_SECRET", "HOLDFAST_CLUSTER_SECRET_FILE", inline(Given::Env), path(Given::Env)),
        ("cluster_secret", "cluster_secret_file", file_inline.filter(|s| !s.is_empty()), file_path),
    ];
    for (inline_name, file_name, inline, path) in layers {
        let secret = match (inline, path) {
            (None, None) => continue,
            (Some(_), Some(_)) => anyhow::bail!("{inline_name} and {file_name} are both given: give one"),
            (Some(secret), None) => {
                if inline_name == "--cluster-secret" {
                    warnings.push(
                        "the cluster secret was given with --cluster-secret, where other local users can read it \
                         (ps, /proc/<pid>/cmdline): use --cluster-secret-file or HOLDFAST_CLUSTER_SECRET_FILE"
                            .to_owned(),
                    );
                }
                secret
            }
            (None, Some(path)) => read_secret_file(&path, file_name, warnings)?,
        };
        anyhow::ensure!(
            secret.len() >= MIN_CLUSTER_SECRET,
            "the cluster secret ({inline_name}) must be at least {MIN_CLUSTER_SECRET} characters"
        );
        return Ok(Some(secret));
    }
    Ok(None)
}

/// Reads a secret from `path`, trimmed of surrounding whitespace (a trailing newline most of
/// all); refuses an empty one.
fn read_secret_file(path: &Path, name: &str, warnings: &mut Vec<String>) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name} {}", path.display()))?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{name} {} is empty", path.display());
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warnings.push(format!(
            "{name} {} is open to other local users (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(secret.to_owned())
}

fn archive_config(url: String, file: &FileArchive) -> Result<holdfast_recovery::backup::ArchiveConfig> {
    use std::time::Duration;
    let mut c = holdfast_recovery::backup::ArchiveConfig::new(&url);
    if let Some(ms) = file.interval_ms {
        anyhow::ensure!((10..=3_600_000).contains(&ms), "archive interval_ms must be 10 to 3600000");
        c.interval = Duration::from_millis(ms);
    }
    if let Some(n) = file.segment_changes {
        anyhow::ensure!((1..=1_000_000).contains(&n), "archive segment_changes must be 1 to 1000000");
        c.segment_changes = n;
    }
    if let Some(h) = file.retention_hours {
        anyhow::ensure!(h > 0.0 && h <= 24.0 * 3650.0, "archive retention_hours must be above 0 and at most ten years");
        c.retention = Duration::from_secs_f64(h * 3600.0);
    }
    if let Some(levels) = &file.levels_secs {
        anyhow::ensure!(
            levels.len() <= 8 && levels.iter().all(|l| *l >= 1) && levels.windows(2).all(|w| w[0] < w[1]),
            "archive levels_secs must be at most 8 increasing widths of at least 1 second"
        );
        c.levels = levels.iter().map(|s| Duration::from_secs(*s)).collect();
    }
    if let Some(secs) = file.snapshot_secs {
        anyhow::ensure!(secs >= 1, "archive snapshot_secs must be at least 1");
        c.snapshot_interval = Duration::from_secs(secs);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Overrides {
        Overrides {
            control_primary: None,
            data: None,
            listen: None,
            region: None,
            max_body_bytes: None,
            max_file_bytes: None,
            max_import_bytes: None,
            import_min_free_bytes: None,
            upstream_timeout_secs: None,
            log: None,
            archive: None,
            peers: Vec::new(),
            cluster_secret: None,
            cluster_secret_file: None,
            etcd: Vec::new(),
        }
    }

    #[test]
    fn layers_in_order() {
        let file: FileConfig = toml::from_str("region = \"west\"\nlisten = \"127.0.0.1:9000\"\n[limits]\nmax_body_bytes = 4096\n")
            .expect("parse");
        let c = ServeConfig::resolve(file, Overrides { region: Some("east".into()), ..none() }).expect("resolve");
        assert_eq!(c.region, "east");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_body_bytes, 4096);
        assert_eq!(c.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(c.max_import_bytes, holdfast_recovery::DEFAULT_MAX_IMPORT_BYTES);
        let file: FileConfig =
            toml::from_str("[limits]\nmax_import_bytes = 65536\nimport_min_free_bytes = 0\n").expect("parse");
        let c = ServeConfig::resolve(file, none()).expect("resolve");
        assert_eq!((c.max_import_bytes, c.import_min_free_bytes), (65536, 0));
        let c = ServeConfig::resolve(FileConfig::default(), Overrides { max_import_bytes: Some(4096), ..none() }).expect("resolve");
        assert_eq!(c.max_import_bytes, 4096);
        assert!(ServeConfig::resolve(FileConfig::default(), Overrides { max_import_bytes: Some(10), ..none() }).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("lsten = \"x\"").is_err());
        assert!(ServeConfig::resolve(FileConfig::default(), Overrides { listen: Some("nope".into()), ..none() }).is_err());
        assert!(ServeConfig::resolve(FileConfig::default(), Overrides { region: Some("Bad Region".into()), ..none() }).is_err());
        let peer = |p: &str| Overrides { peers: vec![p.into()], ..none() };
        assert!(ServeConfig::resolve(FileConfig::default(), peer("b")).is_err(), "no URL");
        assert!(ServeConfig::resolve(FileConfig::default(), peer("local=http://x")).is_err(), "own region");
        assert!(ServeConfig::resolve(FileConfig::default(), peer("b=ftp://x")).is_err(), "scheme");
        let short = Overrides { cluster_secret: Some(("short".into(), Given::Env)), ..none() };
        assert!(ServeConfig::resolve(FileConfig::default(), short).is_err(), "short secret");
        let file: FileConfig = toml::from_str("[[peers]]\nregion = \"b\"\nurl = \"http://127.0.0.1:1\"\n").expect("parse");
        let c = ServeConfig::resolve(file, peer("c=http://127.0.0.1:2")).expect("resolve");
        assert_eq!(c.cluster.peers.keys().collect::<Vec<_>>(), ["b", "c"]);
        let hosts = |h: &str| toml::from_str::<FileConfig>(&format!("[upstream]\nallow_hosts = [{h:?}]\n")).expect("parse");
        assert!(ServeConfig::resolve(hosts("http://models.local"), none()).is_err(), "a URL is not a host");
        let c = ServeConfig::resolve(hosts("*.openai.azure.com"), none()).expect("wildcard host");
        assert!(c.egress.allow_private && c.egress.allow_hosts == ["*.openai.azure.com"]);
    }

    #[test]
    fn the_cluster_secret_comes_from_one_layer_inline_or_from_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let good = write("good", "  file-secret-0123456789\n", 0o600);
        let secret = |file: FileConfig, over: Overrides| ServeConfig::resolve(file, over).map(|c| (c.cluster.secret, c.warnings));
        let from_file = |path: &Path| Overrides { cluster_secret_file: Some((path.to_owned(), Given::Flag)), ..none() };

        // A file's secret, trimmed; no warning.
        assert_eq!(secret(FileConfig::default(), from_file(&good)).expect("file"), (Some("file-secret-0123456789".into()), vec![]));
        // The config file's key, and the layering: flags over environment over file.
        let config: FileConfig = toml::from_str(&format!("cluster_secret_file = {:?}\n", good.display().to_string())).expect("parse");
        assert_eq!(secret(config, none()).expect("config").0.as_deref(), Some("file-secret-0123456789"));
        let config: FileConfig = toml::from_str("cluster_secret = \"config-secret-0123456789\"\n").expect("parse");
        let env = Overrides { cluster_secret_file: Some((good.clone(), Given::Env)), ..none() };
        assert_eq!(secret(config, env).expect("env over file").0.as_deref(), Some("file-secret-0123456789"));
        let both = Overrides {
            cluster_secret: Some(("env-secret-0123456789".into(), Given::Env)),
            cluster_secret_file: Some((good.clone(), Given::Flag)),
            ..none()
        };
        assert_eq!(secret(FileConfig::default(), both).expect("flag over env").0.as_deref(), Some("file-secret-0123456789"));
        // The inline flag works and is warned about; the environment is not.
        let (s, warnings) = secret(FileConfig::default(), Overrides { cluster_secret: Some(("flag-secret-0123456789".into(), Given::Flag)), ..none() })
            .expect("flag");
        assert_eq!(s.as_deref(), Some("flag-secret-0123456789"));
        assert!(warnings.len() == 1 && warnings[0].contains("--cluster-secret-file"), "{warnings:?}");
        let (_, warnings) = secret(FileConfig::default(), Overrides { cluster_secret: Some(("env-secret-0123456789".into(), Given::Env)), ..none() })
            .expect("env");
        assert!(warnings.is_empty(), "{warnings:?}");
        // A file others can read is warned about.
        let open = write("open", "open-secret-0123456789", 0o644);
        let (_, warnings) = secret(FileConfig::default(), from_file(&open)).expect("open file");
        assert!(warnings.len() == 1 && warnings[0].contains("chmod 600"), "{warnings:?}");

        // Refused: an empty or short file, a missing one, both forms in one layer.
        for (name, text) in [("empty", " \n"), ("short", "short-secret\n")] {
            let path = write(name, text, 0o600);
            let e = secret(FileConfig::default(), from_file(&path)).expect_err(name);
            assert!(e.to_string().contains(if name == "empty" { "is empty" } else { "at least 16" }), "{e:#}");
        }
        assert!(secret(FileConfig::default(), from_file(&dir.path().join("missing"))).is_err());
        let both = Overrides {
            cluster_secret: Some(("env-secret-0123456789".into(), Given::Env)),
            cluster_secret_file: Some((good.clone(), Given::Env)),
            ..none()
        };
        let e = secret(FileConfig::default(), both).expect_err("both in one layer");
        assert!(e.to_string().contains("give one"), "{e:#}");
        let config: FileConfig =
            toml::from_str(&format!("cluster_secret = \"x\"\ncluster_secret_file = {:?}\n", good.display().to_string())).expect("parse");
        assert!(secret(config, none()).is_err(), "both in the file");
    }
}
