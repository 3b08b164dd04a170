//! Client contexts: named endpoint lists and keys in `~/.config/holdfast/config.toml`
//! (or `$XDG_CONFIG_HOME/holdfast/config.toml`). A context may list several endpoints, tried in
//! order, so a client keeps working when one region is down.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFile {
    /// The context used when none is named.
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextEntry {
    pub endpoints: Vec<String>,
    pub key: Option<String>,
}

pub fn path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("holdfast").join("config.toml"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; cannot locate the context file")?;
    Ok(PathBuf::from(home).join(".config").join("holdfast").join("config.toml"))
}

impl ContextFile {
    pub fn load() -> Result<Self> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("invalid context file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file atomically with mode 0600: it holds keys.
    pub fn save(&self) -> Result<()> {
        let path = path()?;
        let dir = path.parent().context("context file has no parent directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string_pretty(self)?;
        let mut file = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// The named context, or the current one.
    pub fn selected(&self, name: Option<&str>) -> Result<Option<&ContextEntry>> {
        match name.or(self.current.as_deref()) {
            None => Ok(None),
            Some(n) => match self.contexts.get(n) {
                Some(c) => Ok(Some(c)),
                None => bail!("no context named {n:?} (see 'holdfast context list')"),
            },
        }
    }
}
