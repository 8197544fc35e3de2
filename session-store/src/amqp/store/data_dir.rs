//! The data directory: one subdirectory per vhost, each holding that vhost's log, and a
//! `LOCK` file that one process at a time holds an exclusive `flock` on. Two brokers
//! appending to the same segments would interleave their records and each compact the
//! other's away; the lock turns that into a clear error at start. The kernel drops the
//! lock when the process ends, however it ends, so a crash never leaves it stale.
//!
//! A vhost's subdirectory is its name percent-encoded: every byte but ASCII letters,
//! digits, `-` and `_` becomes `%XX` (`/` is `%2F`, `.` is `%2E`, so no name can climb
//! out or hide). Two names cannot share a directory, and none can be the lock file: the
//! empty name is `%`, which no other name encodes to, and a name that would spell `LOCK`
//! in any case has its first letter encoded.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

use super::StoreError;

/// The lock file's name.
const LOCK: &str = "LOCK";

/// A data directory this process holds the lock of, for as long as the value lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    /// Creates `path` if missing and takes its lock; fails at once if another process
    /// holds it.
    pub fn lock(path: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(path).map_err(|e| StoreError::io(path, e))?;
        let lock_path = path.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Locked {
                    dir: path.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(StoreError::io(&lock_path, errno.into())),
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.path
    }

    /// Whether `vhost`'s subdirectory name fits a file name (255 bytes on Linux).
    pub fn fits(&self, vhost: &str) -> bool {
        encode(vhost).len() <= 255
    }

    /// Where the log of `vhost` lives.
    pub fn vhost(&self, vhost: &str) -> PathBuf {
        self.path.join(encode(vhost))
    }

    /// Warns about subdirectories of vhosts that are not among `vhosts` (removed from the
    /// definitions since they were written). They are left alone: defining the vhost
    /// again brings its durable state back; deleting the directory drops it.
    pub fn warn_unknown(&self, vhosts: &[String]) -> Result<(), StoreError> {
        let known: Vec<String> = vhosts.iter().map(|v| encode(v)).collect();
        let entries = fs::read_dir(&self.path).map_err(|e| StoreError::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !known.contains(&name) {
                warn!(
                    "amqp store: {} holds the durable state of a vhost that is not defined; it is not loaded (define the vhost again to get it back, or delete the directory)",
                    entry.path().display()
                );
            }
        }
        Ok(())
    }
}

/// The directory name of `vhost` (see the module's documentation).
fn encode(vhost: &str) -> String {
    if vhost.is_empty() {
        return "%".to_string();
    }
    let clashes = vhost.eq_ignore_ascii_case(LOCK);
    let mut out = String::with_capacity(vhost.len());
    for (i, b) in vhost.bytes().enumerate() {
        if (b.is_ascii_alphanumeric() || b == b'-' || b == b'_') && !(clashes && i == 0) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_names_become_distinct_safe_directory_names() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("orders-eu_1"), "orders-eu_1");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode(""), "%");
        assert_eq!(encode("LOCK"), "%4COCK");
        assert_eq!(encode("lock"), "%6Cock");
        assert_eq!(encode("%2F"), "%252F", "a literal % is encoded too");
    }

    #[test]
    fn a_second_lock_on_the_same_directory_fails_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let first = DataDir::lock(&dir).expect("first lock");
        assert_eq!(first.vhost("/"), dir.join("%2F"));
        let err = DataDir::lock(&dir).expect_err("second lock");
        assert!(matches!(&err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        drop(first);
        DataDir::lock(&dir).expect("free again");
    }
}
