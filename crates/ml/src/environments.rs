//! Environments: versioned, immutable descriptions of where a model or job runs — an image
//! reference, or a build spec (a Dockerfile, a conda file, pip requirements) — per project
//! (`{name}:{version}`, numbered from 1). What Azure ML's guide says cannot be backed up is here
//! a journaled resource like any other.

use std::collections::BTreeMap;

use holdfast_core::{Action, Caller, Result};

use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};


use crate::Ml;
use crate::wire::{self, now_ms, parse, store_err, to_body};

/// Most bytes a build spec's text may hold.
const MAX_SPEC_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// A Dockerfile's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// A conda environment file's text (`conda.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conda: Option<String>,
    /// pip requirements, one per line (`requirements.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip: Option<String>,
}

/// A request to create an environment version.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentCreate {
    pub name: String,
    /// An image reference such as `python:3.11-slim` or `registry/img@sha256:…`.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub build: Option<BuildSpec>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// An environment version as stored and answered.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Environment {
    pub name: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub created_by: String,
}

fn env_id(name: &str, version: u64) -> String {
    format!("{name}:{version:010}")
}

fn check(req: &EnvironmentCreate) -> Result<()> {
    let name_ok = (1..=64).contains(&req.name.len())
        && req.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && req.name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(Error::invalid(format!(
            "environment name {:?} must be 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
            req.name
        )));
    }
    let build = req.build.as_ref().filter(|b| **b != BuildSpec::default());
    match (&req.image, build) {
        (None, None) => return Err(Error::invalid("an environment needs an image or a build spec (dockerfile, conda or pip)")),
        (Some(i), _) if i.is_empty() || i.len() > 512 || i.chars().any(char::is_whitespace) => {
            return Err(Error::invalid(format!("image {i:?} must be an image reference of 1 to 512 characters without spaces")));
        }
        _ => {}
    }
    if let Some(b) = build {
        for (what, text) in [("dockerfile", &b.dockerfile), ("conda", &b.conda), ("pip", &b.pip)] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_SPEC_BYTES) {
                return Err(Error::invalid(format!("build.{what} is larger than {MAX_SPEC_BYTES} bytes")));
            }
        }
    }
    if req.description.len() > 4096 || req.tags.len() > 64 {
        return Err(Error::invalid("description is at most 4096 bytes, tags at most 64"));
    }
    for (k, v) in &req.tags {
        wire::check_key("tag", k)?;
        wire::check_value("Tag value for", k, v, wire::MAX_TAG_VALUE_LENGTH)?;
    }
    Ok(())
}

impl Ml {
    /// Creates the next version of an environment (version 1 for a new name).
    pub async fn create_environment(&self, caller: &Caller, project: &str, req: EnvironmentCreate) -> Result<Environment> {
        check(&req)?;
        let by = caller.principal.name.clone();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, env) = data
            .commit_with(move |view| {
                let existing = view.list_by_id_prefix(Kind::MlEnvironment, &format!("{}:", req.name), None, usize::MAX >> 1).map_err(store_err)?;
                let version = existing.last().map(|r| parse::<Environment>(r).map(|e| e.version)).transpose()?.unwrap_or(0) + 1;
                let env = Environment {
                    version,
                    image: req.image,
                    build: req.build.filter(|b| *b != BuildSpec::default()),
                    description: req.description,
                    tags: req.tags,
                    created_at: now_ms(),
                    created_by: by,
                    name: req.name,
                };
                let op = Op::Put { kind: Kind::MlEnvironment, id: env_id(&env.name, version), parent: None, body: to_body(&env)? };
                Ok((vec![op], env))
            })
            .await?;
        Ok(env)
    }

    /// Every environment version, by name then version (`name` narrows it to one).
    pub async fn list_environments(&self, caller: &Caller, project: &str, name: Option<String>) -> Result<Vec<Environment>> {
        self.read(caller, project, move |view| {
            let rows = match &name {
                Some(n) => view.list_by_id_prefix(Kind::MlEnvironment, &format!("{n}:"), None, 100_000).map_err(store_err)?,
                None => view.list_by_id_prefix(Kind::MlEnvironment, "", None, 100_000).map_err(store_err)?,
            };
            rows.iter().map(parse).collect()
        })
        .await
    }

    /// One version of an environment; `version` absent: its latest.
    pub async fn get_environment(&self, caller: &Caller, project: &str, name: &str, version: Option<u64>) -> Result<Environment> {
        let name = name.to_owned();
        self.read(caller, project, move |view| {
            let found = match version {
                Some(v) => view.get(Kind::MlEnvironment, &env_id(&name, v)).map_err(store_err)?,
                None => view.list_by_id_prefix(Kind::MlEnvironment, &format!("{name}:"), None, usize::MAX >> 1).map_err(store_err)?.pop(),
            };
            match found {
                Some(r) => parse(&r),
                None => Err(Error::not_found(format!(
                    "environment {name:?}{} not found",
                    version.map(|v| format!(" version {v}")).unwrap_or_default()
                ))),
            }
        })
        .await
    }
}

