//! The ML workspace: experiments, runs, metrics, artifacts, registered models, traces and
//! environments, served over MLflow's wire protocol by `holdfast-api`'s `mlflow` facade.
//!
//! This room is empty today; the ML workspace issue fills it. Its shape is set: like
//! `holdfast-agents`, it keeps its state as resources of a project, changes them only through
//! the core's door ([`holdfast_core::Service::data`] → [`holdfast_core::Data::commit`]), and so
//! gets replication, backup, export, undelete, locks and audit from the journal without code
//! of its own. What it adds to a project's life (none yet) it tells the core through a
//! [`holdfast_core::Domain`].
