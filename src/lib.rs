//! Triad: Scheduler–Agent–Supervisor for reliable background work on Kubernetes.
//!
//! `api` holds the resource types; `cli` the subcommands; `serve` and `metrics` the
//! endpoints every process exposes.

pub mod agent;
pub mod api;
pub mod cli;
pub mod core;
pub mod error;
pub mod k8s;
pub mod metrics;
pub mod pool;
pub mod runner;
pub mod scheduler;
pub mod serve;
pub mod supervisor;

pub use error::{Error, Result};
