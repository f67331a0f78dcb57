//! The README runs as pasted (issue 15 #6): every ```sh, ```bash and ```console block of
//! README.md, in order, against a labgate started the way the README's first block starts
//! it (the shipped config/labgate.toml, its demo lab on loopback).
//!
//! How the blocks run, and what stands in for what:
//! - In a copy of the repository (tracked files, no `target/`) in a fresh temp dir, so
//!   the files a block writes (`session.json`, a venv) land there; files persist from
//!   block to block, shell variables do not (each block is one `bash -euo pipefail`,
//!   with a timeout).
//! - In private namespaces (`unshare`: user, network, mount, pid): a loopback of their
//!   own, so the shipped config's fixed ports (8080, 9464, 9181) are free whatever else
//!   runs on this machine, and a private `/tmp` for its admin socket. When the test ends,
//!   every process started in there dies with the namespace.
//! - `cargo` is a shim on PATH: `cargo run [--release] -- ARGS` runs the `labgate` binary
//!   this test was built with (not a second, release build), and `cargo install --path .`
//!   puts that binary on PATH as `labgate`. Anything else is refused.
//! - `python3` is a shim to a Python >= 3.12 when the one on PATH is older
//!   (`LABGATE_README_PYTHON`, else `python3.13`, `python3.12`, `python3`, pyenv's); pip
//!   installs offline (`PIP_NO_INDEX`, `PIP_FIND_LINKS`) from a wheel cache under the
//!   target dir, downloaded once from PyPI with the README's own `pip install` arguments.
//!
//! A block that cannot run here says so with `<!-- readme-test: skip: REASON -->` on the
//! line before it; the test lists those, and requires few and each with a reason.
//! The first block is the server: it runs in the background for the whole test and must
//! exit 0 on SIGTERM at the end (the README says it drains and exits 0).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use nix::fcntl::{Flock, FlockArg};

/// One block, however long it takes to paste (the pip install is the slowest).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// The whole README, with a margin for labgate's start.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(900);
/// Downloading the wheel cache from PyPI (first run only).
const WHEELS_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many blocks may be skipped.
const MAX_SKIPPED: usize = 3;
const SKIP_MARKER: &str = "<!-- readme-test: skip:";

#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The commands, as bash runs them.
    script: String,
    /// Line N of `script` is README line `line + N` (not so for a `console` block).
    same_lines: bool,
    skip: Option<String>,
}

/// The shell blocks of `markdown`, in order. A `console` block's commands are its
/// `$ ` lines (the rest is output).
fn shell_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let lang = lang.trim();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push(lines[i]);
            i += 1;
        }
        i += 1; // the closing fence
        let script = match lang {
            "sh" | "bash" => body.join("\n") + "\n",
            "console" => body
                .iter()
                .filter_map(|l| l.strip_prefix("$ "))
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => continue,
        };
        let skip = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix(SKIP_MARKER))
            .map(|rest| rest.trim_end_matches("-->").trim().to_string());
        blocks.push(Block {
            line: start + 1,
            script,
            same_lines: lang != "console",
            skip,
        });
    }
    blocks
}

#[test]
fn shell_blocks_are_found_with_their_skip_markers() {
    let md = "intro\n```sh\necho a\n```\n<!-- readme-test: skip: needs a lab -->\n\n```bash\nx\n```\n```python\nprint()\n```\n```console\n$ echo b\nb\n```\n";
    let blocks = shell_blocks(md);
    let got: Vec<_> = blocks
        .iter()
        .map(|b| (b.line, b.script.as_str(), b.skip.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "echo a\n", None),
            (7, "x\n", Some("needs a lab")),
            (13, "echo b\n", None),
        ]
    );
}

// ------------------------------------------------------------------ Python and wheels

/// A Python >= 3.12 (neops-remote-lab requires it), as the real path of its executable.
fn python312() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("LABGATE_README_PYTHON") {
        candidates.push(p.into());
    }
    for name in ["python3.13", "python3.12", "python3"] {
        candidates.push(name.into());
    }
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(Ok(dir)) = pyenv.map(|p| std::fs::read_dir(p.join("versions"))) {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path().join("bin/python3")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    for candidate in &candidates {
        let out = Command::new(candidate)
            .args([
                "-c",
                "import sys; print(sys.executable if sys.version_info >= (3, 12) else '')",
            ])
            .output();
        if let Ok(out) = out {
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !exe.is_empty() {
                return exe.into();
            }
        }
    }
    panic!(
        "no Python >= 3.12 found (tried {candidates:?}); the README's neops-remote-lab \
         section needs one: set LABGATE_README_PYTHON"
    )
}

/// The arguments of the README's `pip install` (the packages, not the options).
fn pip_requirements(blocks: &[Block]) -> Vec<String> {
    let line = blocks
        .iter()
        .flat_map(|b| b.script.lines())
        .find(|l| l.contains("pip install"))
        .expect("the README installs the neops client with `pip install`");
    let args = line.split("pip install").nth(1).unwrap_or_default();
    args.split_whitespace()
        .take_while(|a| !a.starts_with('#'))
        .filter(|a| !a.starts_with('-'))
        .map(str::to_string)
        .collect()
}

/// A directory of wheels holding `reqs` for `python`, downloaded from PyPI once and
/// reused while the requirements and the interpreter are unchanged.
fn wheel_cache(python: &Path, reqs: &[String]) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).expect("target tmp dir");
    let lock = std::fs::File::create(root.join("readme-wheels.lock")).expect("lock file");
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).expect("flock the wheel cache");
    let dir = root.join("readme-wheels");
    let stamp_path = dir.join(".stamp");
    let stamp = format!("{}\n{}\n", python.display(), reqs.join(" "));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("wheel dir");
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "download", "--disable-pip-version-check", "-q"])
        .args(["--only-binary=:all:", "--timeout", "20", "--retries", "2"])
        .arg("-d")
        .arg(&dir)
        .args(reqs)
        .env_remove("PIP_NO_INDEX");
    let out = run_bounded(&mut cmd, WHEELS_TIMEOUT);
    assert!(
        out.status.success(),
        "could not download {reqs:?} from PyPI for the README's Python section (is \
         https://pypi.org reachable?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&stamp_path, stamp).expect("write wheel stamp");
    dir
}

// ------------------------------------------------------------------ the run

/// Copies the repository's files (not `target/`, not `.git`) into `to`.
fn copy_repo(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read repo dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if from == repo_root() && (name == "target" || name == ".git") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_repo(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The stand-ins on PATH (see the module doc).
fn write_shims(shims: &Path, installed: &Path, python: &Path) {
    let labgate = env!("CARGO_BIN_EXE_labgate");
    write_exec(
        &shims.join("cargo"),
        &format!(
            r#"#!/bin/bash
# readme test: `cargo run ... -- ARGS` is the labgate this test was built with;
# `cargo install --path .` puts it on PATH. Nothing else is cargo's job here.
set -eu
case "${{1:-}}" in
  run)
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
    [ $# -gt 0 ] && shift
    exec '{labgate}' "$@" ;;
  install)
    case " $* " in *" --path . "*) ;; *) echo "readme shim: cargo $*: only --path ." >&2; exit 2 ;; esac
    printf '#!/bin/sh\nexec %s "$@"\n' '{labgate}' > '{installed}/labgate'
    chmod 755 '{installed}/labgate' ;;
  *) echo "readme shim: cargo $* is not supported in the README test" >&2; exit 2 ;;
esac
"#,
            installed = installed.display()
        ),
    );
    write_exec(
        &shims.join("python3"),
        &format!("#!/bin/sh\nexec '{}' \"$@\"\n", python.display()),
    );
}

/// Runs in the namespaces: the first block in the background, then each other block
/// in order; `results/<n>.rc`, `.out`, `.err` per block, stops at the first failure.
const DRIVER: &str = r#"
set -u
PATH=$PATH:/usr/sbin:/sbin
ip link set lo up
mount -t tmpfs -o mode=1777 tmpfs /tmp
cd "$WORK/repo"
setsid bash -euo pipefail "$WORK/blocks/server.sh" >"$WORK/results/server.out" 2>"$WORK/results/server.err" </dev/null &
server=$!
up=""
for _ in $(seq 1 600); do
  if ! kill -0 "$server" 2>/dev/null; then break; fi
  if [ "$(curl -s -o /dev/null -w '%{http_code}' localhost:8080/healthz)" = 204 ]; then up=1; break; fi
  sleep 0.1
done
if [ -z "$up" ]; then echo "the README's first block did not bring labgate up" >"$WORK/results/start.err"; exit 3; fi
for n in $(cat "$WORK/blocks/order"); do
  # The ERR trap notes which line of the block failed (sourced: $LINENO is the block's).
  timeout -k 5 "$BLOCK_TIMEOUT" bash -euo pipefail -c 'trap "echo \$LINENO >\"\$2\"" ERR; . "$1"' \
    block "$WORK/blocks/$n.sh" "$WORK/results/$n.line" </dev/null \
    >"$WORK/results/$n.out" 2>"$WORK/results/$n.err"
  rc=$?
  echo "$rc" >"$WORK/results/$n.rc"
  [ "$rc" = 0 ] || break
done
# SIGTERM to labgate, the block's child (its bash would die of the signal itself and
# hide labgate's exit status); /proc, not procps, which a fresh machine may lack.
for stat in /proc/[0-9]*/stat; do
  read -r pid _ _ ppid _ <"$stat" 2>/dev/null || continue
  [ "$ppid" = "$server" ] && kill -TERM "$pid"
done
wait "$server"
echo $? >"$WORK/results/server.rc"
"#;

#[test]
fn readme_shell_blocks_run_as_pasted() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let blocks = shell_blocks(&readme);
    let (server, rest) = blocks.split_first().expect("the README has shell blocks");
    assert!(
        server.skip.is_none() && server.script.contains("serve --config config/labgate.toml"),
        "the README's first block starts labgate with the shipped config: {server:?}"
    );

    let skipped: Vec<&Block> = rest.iter().filter(|b| b.skip.is_some()).collect();
    for b in &skipped {
        eprintln!(
            "skipped: README.md:{} ({})",
            b.line,
            b.skip.as_deref().unwrap_or("")
        );
        assert!(
            b.skip.as_deref().is_some_and(|r| r.len() >= 10),
            "README.md:{}: a skipped block says why",
            b.line
        );
    }
    assert!(
        skipped.len() <= MAX_SKIPPED,
        "{} README blocks are skipped (at most {MAX_SKIPPED}): {:?}",
        skipped.len(),
        skipped.iter().map(|b| b.line).collect::<Vec<_>>()
    );
    let runs: Vec<&Block> = rest.iter().filter(|b| b.skip.is_none()).collect();
    assert!(runs.len() >= 4, "too few runnable blocks: {runs:?}");

    let python = python312();
    let wheels = wheel_cache(&python, &pip_requirements(&blocks));

    let work = tempfile::Builder::new()
        .prefix("readme-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("work dir");
    let w = work.path();
    for d in ["repo", "blocks", "results", "shims", "installed", "home"] {
        std::fs::create_dir_all(w.join(d)).expect("mkdir");
    }
    copy_repo(&root, &w.join("repo"));
    write_shims(&w.join("shims"), &w.join("installed"), &python);
    std::fs::write(w.join("blocks/server.sh"), &server.script).expect("write block");
    let mut order = String::new();
    for b in &runs {
        std::fs::write(w.join(format!("blocks/{}.sh", b.line)), &b.script).expect("write block");
        order += &format!("{}\n", b.line);
    }
    std::fs::write(w.join("blocks/order"), order).expect("write order");
    std::fs::write(w.join("driver.sh"), DRIVER).expect("write driver");

    let path = format!(
        "{}:{}:{}",
        w.join("shims").display(),
        w.join("installed").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--net", "--mount", "--pid"])
        .args(["--fork", "--kill-child", "--mount-proc", "bash"])
        .arg(w.join("driver.sh"))
        // A fresh machine's environment: nothing of this one's leaks in.
        .env_clear()
        .env("PATH", path)
        .env("HOME", w.join("home"))
        .env("LANG", "C.UTF-8")
        .env("TERM", "dumb")
        .env("WORK", w)
        .env("BLOCK_TIMEOUT", BLOCK_TIMEOUT.as_secs().to_string())
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", &wheels)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_bounded(&mut cmd, TOTAL_TIMEOUT);

    let read =
        |name: &str| std::fs::read_to_string(w.join("results").join(name)).unwrap_or_default();
    let server_log = || {
        format!(
            "--- labgate (the README's first block) stderr ---\n{}",
            read("server.err")
        )
    };
    let driver = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        read("start.err").is_empty(),
        "{}\n{}\n--- driver ---\n{driver}",
        read("start.err"),
        server_log()
    );
    for b in &runs {
        let rc = read(&format!("{}.rc", b.line));
        let failed_at = match read(&format!("{}.line", b.line)).trim().parse::<usize>() {
            Ok(n) if b.same_lines => format!(", at README.md:{}", b.line + n),
            Ok(n) => format!(", at line {n} of the block"),
            Err(_) => String::new(),
        };
        assert_eq!(
            rc.trim(),
            "0",
            "README.md:{}: the block failed (exit {}{failed_at}; empty: not run)\n--- block ---\n{}--- stdout ---\n{}\n--- stderr ---\n{}\n{}\n--- driver ---\n{}",
            b.line,
            rc.trim(),
            b.script,
            read(&format!("{}.out", b.line)),
            read(&format!("{}.err", b.line)),
            server_log(),
            driver
        );
        eprintln!(
            "README.md:{} ran:\n{}",
            b.line,
            read(&format!("{}.out", b.line))
        );
    }
    assert_eq!(
        read("server.rc").trim(),
        "0",
        "labgate did not exit 0 on SIGTERM after the README\n{}",
        server_log()
    );
    assert!(
        !read("server.err").contains("panicked"),
        "labgate panicked during the README\n{}",
        server_log()
    );
}
