//! The admin socket on disk: the directory it lives in, binding it owner-only, telling a
//! stale socket from a live one, and removing it when labgate stops.
//!
//! The socket's mode (0600) keeps other users from connecting; its directory keeps them
//! from taking its place. A directory another user can write to (`/tmp`) lets them
//! squat the path before labgate starts, or bind there while it is down so that
//! `labgate admin` talks to them: such a directory is refused, at start-up and by
//! `labgate check`. Only a missing directory whose parent is private (the user's
//! `$XDG_RUNTIME_DIR`, or `/run` for root) is created, mode 0700, one level and never
//! `mkdir -p`. Must never remove a file that is not the socket this process bound.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// What the directory that will hold the socket needs at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirPlan {
    /// It exists and is private.
    Ready(PathBuf),
    /// It is missing; labgate creates it (mode 0700) in a private parent.
    Create(PathBuf),
}

/// The ownership and mode of one directory, as [`judge`] needs them.
#[derive(Debug, Clone, Copy)]
pub struct DirFacts {
    pub uid: u32,
    pub mode: u32,
}

impl DirFacts {
    fn of(meta: &std::fs::Metadata) -> DirFacts {
        DirFacts {
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Where a directory stands in the path: the one holding the socket, or above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The socket's own directory (or, when that is missing, the parent it is made in):
    /// nobody but labgate's uid and root may write to it, sticky bit or not, because a
    /// sticky directory still lets anyone create the socket's name first.
    Holder,
    /// An ancestor: others may write to it only when it is sticky (`/tmp`), since then
    /// they cannot rename or replace the entries labgate's uid owns there.
    Ancestor,
}

/// `Err(why)` unless a directory with `facts`, in `role`, is safe for a socket of a
/// process running as `euid`. Pure.
pub fn judge(facts: DirFacts, role: Role, euid: u32) -> Result<(), String> {
    if facts.uid != euid && facts.uid != 0 {
        return Err(format!(
            "is owned by uid {}, not by labgate's uid {euid} or root",
            facts.uid
        ));
    }
    let others_write = facts.mode & 0o022 != 0;
    let sticky = facts.mode & 0o1000 != 0;
    match role {
        Role::Holder if others_write => Err(format!(
            "is writable by group or others (mode {:04o}): another user could take the \
             socket's place; use a private directory (mode 0700), e.g. /run/labgate",
            facts.mode
        )),
        Role::Ancestor if others_write && !sticky => Err(format!(
            "is writable by group or others without the sticky bit (mode {:04o}): another \
             user could replace the directory below it",
            facts.mode
        )),
        _ => Ok(()),
    }
}

/// The effective uid of this process.
fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// One line naming the socket and the directory at fault.
fn refuse(socket: &Path, dir: &Path, why: &str) -> String {
    format!(
        "[admin] socket {}: directory {} {why}",
        socket.display(),
        dir.display()
    )
}

/// Checks every directory from `dir` up to `/` (already canonical), `dir` as
/// [`Role::Holder`].
fn check_chain(socket: &Path, dir: &Path, euid: u32) -> Result<(), String> {
    let mut role = Role::Holder;
    for at in dir.ancestors() {
        let meta = std::fs::metadata(at)
            .map_err(|e| refuse(socket, at, &format!("cannot be inspected: {e}")))?;
        judge(DirFacts::of(&meta), role, euid).map_err(|why| refuse(socket, at, &why))?;
        role = Role::Ancestor;
    }
    Ok(())
}

/// What the socket's directory needs, without changing anything (for `labgate check`
/// and start-up). `Err` is one line: the directory is unsafe, missing under a parent
/// labgate may not create it in, or something that is not a socket sits at the path.
pub fn plan(socket: &Path) -> Result<DirPlan, String> {
    let euid = euid();
    let (dir, name) = match (socket.parent(), socket.file_name()) {
        (Some(d), Some(n)) if d.is_absolute() => (d, n),
        _ => {
            return Err(format!(
                "[admin] socket {}: not an absolute path to a file",
                socket.display()
            ))
        }
    };
    match std::fs::canonicalize(dir) {
        Ok(real) => {
            if !real.is_dir() {
                return Err(refuse(socket, dir, "is not a directory"));
            }
            check_chain(socket, &real, euid)?;
            let at = real.join(name);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if !m.file_type().is_socket() => Err(format!(
                    "[admin] socket {}: {} exists and is not a socket",
                    socket.display(),
                    at.display()
                )),
                _ => Ok(DirPlan::Ready(real)),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let (Some(parent), Some(leaf)) = (dir.parent(), dir.file_name()) else {
                return Err(refuse(socket, dir, "does not exist"));
            };
            let real_parent = std::fs::canonicalize(parent).map_err(|_| {
                refuse(
                    socket,
                    dir,
                    "does not exist, nor does its parent; create it (owned by labgate's \
                     user, mode 0700), e.g. with systemd's RuntimeDirectory=",
                )
            })?;
            check_chain(socket, &real_parent, euid).map_err(|why| {
                format!(
                    "{why} (labgate would create {} there, and creates the directory only \
                     in a private parent)",
                    dir.display()
                )
            })?;
            let owner = std::fs::metadata(&real_parent)
                .map(|m| m.uid())
                .unwrap_or(0);
            if euid != 0 && owner != euid {
                return Err(refuse(
                    socket,
                    dir,
                    &format!(
                        "does not exist and labgate (uid {euid}) cannot create it in {}; \
                         set [admin] socket to a path in a directory of yours (or set \
                         XDG_RUNTIME_DIR for the default), or create it (mode 0700)",
                        real_parent.display()
                    ),
                ));
            }
            Ok(DirPlan::Create(real_parent.join(leaf)))
        }
        Err(e) => Err(refuse(socket, dir, &format!("cannot be inspected: {e}"))),
    }
}

/// The admin socket file this process bound; dropping it removes the file, unless it
/// was replaced meanwhile (another labgate's socket is not ours to remove).
///
/// Held by `server::run` for the process's whole run, so every way out of it (a clean
/// stop on SIGTERM or SIGINT, a start-up failure after the bind, an unwinding panic)
/// removes the file. The admin service's own task cannot promise that: pingora may stop
/// its runtime before the task runs again after the shutdown signal.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// An `O_PATH` descriptor of our socket file: while it is open, the inode cannot be
    /// freed, so no successor's socket can have its device and inode numbers.
    pin: std::fs::File,
}

/// Opens `path` itself (no symlink followed) for `fstat` only: `O_PATH` opens a socket
/// file, which an ordinary open cannot.
fn pin(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

impl SocketFile {
    /// The path bound (its directory canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = self.pin.metadata();
        match (std::fs::symlink_metadata(&self.path), ours) {
            (Ok(m), Ok(ours)) if same_file(&m, &ours) => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the admin socket");
                }
            }
            _ => {}
        }
    }
}

/// Binds the admin socket at `socket`, owner-only: prepares its directory ([`plan`],
/// creating it 0700 if that is the plan), clears a stale socket, refuses a live one.
///
/// Binding has no window of looser permissions and no temporary name: the socket is
/// bound in place, restricted to 0600, and only then listens. Until `listen`, a
/// `connect` is refused whatever the mode bind gave the file, so nobody can connect
/// while it is looser; and in a private directory nobody else can reach the name at all
/// (that, not the mode, is the real protection).
pub fn bind(socket: &Path) -> anyhow::Result<(StdUnixListener, SocketFile)> {
    let dir = match plan(socket).map_err(anyhow::Error::msg)? {
        DirPlan::Ready(dir) => dir,
        DirPlan::Create(dir) => {
            create_private_dir(&dir).map_err(|e| {
                anyhow::anyhow!(refuse(socket, &dir, &format!("cannot be created: {e}")))
            })?;
            dir
        }
    };
    let name = socket
        .file_name()
        .context("the admin socket has no file name")?;
    let path = dir.join(name);
    clear_stale(socket, &path)?;
    let listener = bind_owner_only(&path)
        .with_context(|| format!("cannot create the admin socket {}", socket.display()))?;
    let pinned = pin(&path);
    let pinned = match pinned {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e)
                .with_context(|| format!("cannot open the admin socket {}", path.display()));
        }
    };
    let file = SocketFile { path, pin: pinned };
    listener.set_nonblocking(true)?;
    Ok((listener, file))
}

/// Creates `dir` with mode 0700 (one level), or accepts it when it appeared meanwhile
/// and is private.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("it is not a directory"));
    }
    judge(DirFacts::of(&meta), Role::Holder, euid()).map_err(std::io::Error::other)
}

/// A socket left at `path`: removed when nothing listens (a crash left it), refused when
/// something does (a labgate already running there). Anything else there is refused.
fn clear_stale(socket: &Path, path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!("{} exists and is not a socket", socket.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "the admin socket {} is in use: a labgate is already running there (stop it, or \
             give this one another [admin] socket)",
            socket.display()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "removing a stale admin socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", socket.display()))
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot tell whether the admin socket {} is in use",
                socket.display()
            )
        }),
    }
}

/// socket, bind, chmod 0600, listen (see [`bind`] for why in that order). socket2
/// rather than `UnixListener::bind`, which binds and listens in one call.
fn bind_owner_only(path: &Path) -> std::io::Result<StdUnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.bind(&SockAddr::unix(path)?)?;
    let restricted = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| sock.listen(128));
    if let Err(e) = restricted {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    fn dir(uid: u32, mode: u32) -> DirFacts {
        DirFacts { uid, mode }
    }

    #[test]
    fn the_socket_directory_must_be_private_and_ours_or_roots() {
        assert!(judge(dir(ME, 0o700), Role::Holder, ME).is_ok());
        assert!(judge(dir(0, 0o755), Role::Holder, ME).is_ok());
        assert!(judge(dir(ME, 0o750), Role::Holder, ME).is_ok());
        // /tmp: world-writable, sticky or not, is refused for the socket's own directory.
        let e = judge(dir(0, 0o1777), Role::Holder, ME).unwrap_err();
        assert!(
            e.contains("writable by group or others") && e.contains("1777"),
            "{e}"
        );
        assert!(judge(dir(ME, 0o770), Role::Holder, ME).is_err());
        let e = judge(dir(1001, 0o700), Role::Holder, ME).unwrap_err();
        assert!(e.contains("uid 1001"), "{e}");
    }

    #[test]
    fn an_ancestor_may_be_shared_only_when_sticky() {
        assert!(judge(dir(0, 0o1777), Role::Ancestor, ME).is_ok());
        assert!(judge(dir(0, 0o755), Role::Ancestor, ME).is_ok());
        let e = judge(dir(0, 0o777), Role::Ancestor, ME).unwrap_err();
        assert!(e.contains("sticky"), "{e}");
        assert!(judge(dir(1001, 0o755), Role::Ancestor, ME).is_err());
    }

    fn private_tempdir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn socket_is_owner_only_and_replaces_a_stale_one() {
        let dir = private_tempdir();
        let path = dir.path().join("admin.sock");
        let (first, file) = bind(&path).unwrap();
        drop(first);
        // The file stays behind, as after a crash; binding again replaces it.
        std::mem::forget(file);
        let (_second, _file) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }

    #[test]
    fn a_live_socket_is_refused_and_left_alone() {
        let dir = private_tempdir();
        let path = dir.path().join("admin.sock");
        let (_live, _file) = bind(&path).unwrap();
        let e = bind(&path).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn dropping_the_socket_file_removes_only_our_socket() {
        let dir = private_tempdir();
        let path = dir.path().join("admin.sock");
        let (l, file) = bind(&path).unwrap();
        drop(l);
        drop(file);
        assert!(!path.exists(), "the socket outlived its guard");
        // Replaced meanwhile (another labgate's socket): left in place.
        let (l, file) = bind(&path).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists(), "removed a socket that was not ours");
        drop(other);
    }

    #[test]
    fn a_shared_directory_is_refused_and_a_missing_private_one_created() {
        let dir = private_tempdir();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = bind(&shared.join("admin.sock")).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!shared.join("admin.sock").exists());
        // Missing, in a private parent: created 0700. In the shared one: refused.
        let fresh = dir.path().join("run").join("admin.sock");
        assert!(matches!(plan(&fresh), Ok(DirPlan::Create(_))));
        let (_l, _f) = bind(&fresh).unwrap();
        let mode = std::fs::metadata(dir.path().join("run")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        let e = plan(&shared.join("sub").join("admin.sock")).unwrap_err();
        assert!(e.contains("only in a private parent"), "{e}");
        assert!(!shared.join("sub").exists());
        let e = plan(&dir.path().join("a").join("b").join("admin.sock")).unwrap_err();
        assert!(e.contains("nor does its parent"), "{e}");
    }
}
