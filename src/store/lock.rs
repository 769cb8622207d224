//! One data dir, one process. Two collectors writing one data dir would each
//! replay the other's live write-ahead log and store its spans twice, so the
//! process that writes a data dir holds an exclusive lock on it.
//!
//! The lock is an OS advisory lock (`flock`) on `<data_dir>/.lock`, not the
//! file's existence: the kernel drops it when the process exits however it
//! exits (SIGKILL, OOM kill, power loss), so a stale lock never blocks a
//! restart. The file holds the holder's pid as text only so that a refused
//! process can name it. It is left in place at exit: removing it would let a
//! process that opened it just before the removal lock an unlinked file while
//! a third one locks a new file of the same name.
//!
//! Readers (embedded `llmtrace query`, `report`, `alerts check`) take no lock:
//! files are renamed into place whole, so they read a running server's dir.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = ".lock";

/// How long a refused process waits for the holder to write its pid: the
/// holder locks first and writes second, so a reader can fall in between.
const PID_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {} is in use by another llmtrace process ({}): one data dir takes one process; stop that one or give this one another --data-dir", dir.display(), holder(*pid))]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock data dir {} ({}): {source}", dir.display(), path.display())]
    Io {
        dir: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// The exclusive lock on a data dir, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// Keeps the lock: closing the last descriptor of the file releases it.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `data_dir` (which must exist) for this process, or says which
    /// process holds it. Never waits for the holder.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            dir: data_dir.to_owned(),
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must survive for the
        // message of whoever is refused.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Held {
                        dir: data_dir.to_owned(),
                        pid: read_pid(&mut file),
                    })
                }
                Err(errno) => return Err(io_error(errno.into())),
            }
        }
        // Only informs the message of a refused process: a disk too full to
        // hold a few bytes must not keep the collector from starting (and
        // from recovering what its log holds).
        if let Err(error) = write_pid(&mut file) {
            tracing::warn!(%error, file = %path.display(), "cannot write this process's pid into the data dir lock file; a second process will not be able to name it");
        }
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
}

/// The pid the holder wrote, waiting briefly if it has not written it yet.
fn read_pid(file: &mut File) -> Option<u32> {
    let deadline = std::time::Instant::now() + PID_WAIT;
    loop {
        let mut text = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() || std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_dir_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(held.path(), dir.path().join(LOCK_FILE));
        let text = std::fs::read_to_string(held.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock locks belong to the open file, so a second open in this very
        // process is refused like another process would be.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            LockError::Held { dir: d, pid } => {
                assert_eq!(d, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("{other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(held);
        let again = DataDirLock::acquire(dir.path()).expect("released on drop");
        drop(again);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed holder leaves: the file with its pid, no lock.
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = DataDirLock::acquire(dir.path()).expect("no process holds it");
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()), "pid replaced");
    }

    #[test]
    fn an_unknown_holder_is_said_to_be_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        std::fs::write(held.path(), "").unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("pid unknown"), "{err}");
    }

    #[test]
    fn a_missing_data_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = DataDirLock::acquire(&missing).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }
}
