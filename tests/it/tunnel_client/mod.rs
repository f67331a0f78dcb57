//! The client side of device tunnels (issue 11): `labgate tunnel --stdio`, `-L`,
//! `labgate ssh-config` and `labgate run -L`.
//!
//! - `fake`: an in-process fake of labgate's tunnel side, from the protocol alone.
//! - `cli`: the commands against the fake, echoing to a loopback device.
//! - `ssh`: the real OpenSSH client and server (`support::Sshd`) through the commands,
//!   on the fake.
//! - `e2e`: the same with a real labgate: ssh through `--stdio`, `-L`, `ssh-config` and
//!   `labgate run -L`; a kick ends a live ssh session (measured) and the next holder
//!   gets in.
//! - `netconf`: NETCONF over ssh through a real labgate: the real `ssh -s netconf` and
//!   ncclient with the ssh config's ProxyCommand (docs/operations.md's recipe).
//! - `scrapli`: scrapli's GenericDriver (`system` transport: the real `ssh`) with the
//!   same ssh config, running a shell command; refused with labgate's reason while the
//!   session waits, the device never reached.

mod cli;
mod e2e;
mod fake;
mod netconf;
mod scrapli;
mod ssh;
