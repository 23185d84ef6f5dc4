//! Integration tests against the real local control plane (see `support`).

mod agent;
mod api;
mod chart;
mod execution;
mod ladder;
mod pool;
mod scheduler;
mod supervisor;
mod support;
