//! Integration tests against the real local control plane (see `support`).

mod agent;
mod api;
mod chaos;
mod chart;
mod execution;
mod ladder;
mod pool;
mod scheduler;
mod supervisor;
mod support;
