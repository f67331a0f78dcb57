//! Upstream sessions (neops-remote-lab), per-turn tokens and handoff hooks (contract §8).

pub mod machine;
