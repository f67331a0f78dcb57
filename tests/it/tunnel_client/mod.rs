//! The client side of device tunnels (issue 11): `labgate tunnel --stdio`, `-L`,
//! `labgate ssh-config` and `labgate run -L`.
//!
//! - `fake`: an in-process fake of labgate's tunnel side, from the protocol alone.
//! - `cli`: the commands against the fake, echoing to a loopback device.
//! - `ssh`: the real OpenSSH client and server (`support::Sshd`) through the commands,
//!   on the fake.

mod cli;
mod fake;
mod ssh;
