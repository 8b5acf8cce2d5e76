//! One process per run folder: an exclusive advisory lock on `RUN/.lock`.
//!
//! The lock is an operating-system file lock (`flock` on Unix, `LockFileEx` on Windows, through
//! `std::fs::File::try_lock`), held for as long as the [`RunLock`] lives. The OS releases it when
//! the process ends in any way, `kill -9` included, so a lock left by a crashed run is never
//! stale: the next process simply acquires it. The file also holds the owner's process id and
//! start time, which the refusal message quotes.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The held lock of a run folder; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `run` (created if needed) for this process, or fails naming the process that holds
    /// it.
    pub fn acquire(run: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
        let path = run.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = owner.trim();
                bail!(
                    "{} is in use by another mpf-train process ({}); wait for it to finish, or choose another \
                     --output",
                    run.display(),
                    if owner.is_empty() { "owner unknown".to_string() } else { owner.to_string() }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        file.set_len(0).and_then(|_| file.rewind()).with_context(|| format!("cannot write {}", path.display()))?;
        write!(file, "pid {}, locked at unix time {since}", std::process::id())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("in use by another mpf-train process") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert!(first.path().ends_with(".lock"));
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        drop(again);
    }
}
