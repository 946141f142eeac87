//! Background processes of the local backend (etcd, kube-apiserver,
//! webhook-server) that cannot outlive `cargo xtask e2e`, however it ends.
//!
//! Each program runs under a small `sh` supervisor in a process group of its
//! own. The supervisor holds a pipe from xtask on a spare descriptor; when the
//! pipe closes — because [`Service`] was dropped, or because xtask panicked,
//! was interrupted or was killed outright — it sends the program SIGTERM,
//! then SIGKILL after [`GRACE_SECONDS`]. Dropping a [`Service`] closes the
//! pipe, waits for the supervisor, and then sends SIGKILL to the whole group
//! as a backstop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Seconds a program gets between SIGTERM and SIGKILL.
pub const GRACE_SECONDS: u32 = 10;

/// The supervisor: runs "$@", and stops it when descriptor 3 reaches EOF.
/// (Asynchronous lists get /dev/null as stdin, hence the explicit fd 3.)
const SUPERVISOR: &str = r#"
exec 3<&0
"$@" </dev/null &
child=$!
{
  while read -r _ <&3; do :; done
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt "$GRACE_TENTHS" ]; then kill -KILL "$child" 2>/dev/null; break; fi
    sleep 0.1
  done
} &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A supervised background program.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` under the supervisor, its output appended to `log`.
    pub fn start(name: &str, cmd: &Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(SUPERVISOR).arg("portcullis-e2e-supervisor").arg(cmd.get_program()).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => sh.env(key, v),
                None => sh.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            sh.current_dir(dir);
        }
        sh.env("GRACE_TENTHS", (GRACE_SECONDS * 10).to_string());
        std::os::unix::process::CommandExt::process_group(&mut sh, 0);
        let mut child = sh
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let lifeline = child.stdin.take();
        eprintln!("e2e: started {name} (pid {}), log {}", child.id(), log.display());
        Ok(Self { name: name.to_owned(), child, lifeline, log: log.to_path_buf() })
    }

    /// The exit status, if the program has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the log's tail if the program has ended.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited ({status}); its log ends with:\n{}", self.name, self.log_tail(40)),
        }
    }

    /// The last `lines` lines of the program's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Name given at start.
    /// Prints whether it still runs and the last `lines` of its log (after a failure).
    pub fn print_tail(&mut self, lines: usize) {
        let state = self.exited().map_or_else(|| "running".to_owned(), |s| format!("exited ({s})"));
        eprintln!("--- {} ({state}), last lines of {}:\n{}", self.name, self.log.display(), self.log_tail(lines));
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Closing the lifeline tells the supervisor to stop the program.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(u64::from(GRACE_SECONDS) + 5);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Backstop: nothing of the group survives, even a stuck supervisor.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -KILL -- -{} 2>/dev/null", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        eprintln!("e2e: stopped {}", self.name);
    }
}
