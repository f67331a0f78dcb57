//! Upstream sessions (neops-remote-lab), per-turn tokens and handoff hooks (contract §8).

pub mod machine;
pub mod token;
pub mod neops;
pub mod hooks;
pub mod config;
pub mod metrics;
pub mod persist;
