//! CMD as a child process of `labgate run`: starting it with the session in its
//! environment, passing signals on, and turning its end into an exit code.
//!
//! Owns the only `kill(2)` calls of the client. Must never signal a process it did not
//! start, nor one it has already reaped.

use std::ffi::OsString;
use std::io::{ErrorKind, IsTerminal};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::exit;

pub struct Cmd {
    child: tokio::process::Child,
}

/// Starts `argv` with `env` added to labgate's own environment; stdin, stdout and
/// stderr are shared with labgate. On failure: (exit code as a shell would give, why).
pub fn spawn(argv: &[OsString], env: &[(&str, &str)]) -> Result<Cmd, (u8, String)> {
    let (program, args) = argv
        .split_first()
        .ok_or((exit::USAGE, "no command given".to_string()))?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(env.iter().copied());
    // If labgate itself dies on an error path, CMD must not outlive its session.
    command.kill_on_drop(true);
    match command.spawn() {
        Ok(child) => Ok(Cmd { child }),
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::NotFound => exit::CMD_NOT_FOUND,
                _ => exit::CMD_NOT_EXECUTABLE,
            };
            Err((
                code,
                format!("cannot run {}: {e}", program.to_string_lossy()),
            ))
        }
    }
}

impl Cmd {
    /// Waits for CMD to exit (cancel-safe: usable in `select!`).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `sig` to CMD if it has not been reaped yet.
    pub fn signal(&self, sig: Signal) {
        // `id()` is None once the child has been reaped, so a recycled pid is never hit.
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// CMD's exit code; a CMD killed by a signal gives 128 + the signal, as shells do.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => exit::SOFTWARE,
    }
}

/// Whether a SIGINT most likely came from the terminal (Ctrl-C): labgate and CMD are
/// in the terminal's foreground process group, so CMD got it too, and passing it on
/// would make CMD see a second Ctrl-C it never typed.
pub fn terminal_sent_it(sig: Signal) -> bool {
    if sig != Signal::SIGINT || !std::io::stdin().is_terminal() {
        return false;
    }
    match nix::unistd::tcgetpgrp(std::io::stdin()) {
        Ok(foreground) => foreground == nix::unistd::getpgrp(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        // Killed by SIGTERM (15).
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
