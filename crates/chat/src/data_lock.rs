//! [`DataLock`]: one process at a time per data folder. Opening the store ends the answers another
//! process left `streaming` (crash recovery), so a second process on the same folder (`smollm3
//! serve` beside the desktop app, or two `serve`s) would cut off the first one's live answers and
//! write the same chats from two sides. The chat core takes this lock before it opens anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{ChatError, Result};

/// The lock file's name in the data folder; it holds the owner's process id.
pub const LOCK_FILE: &str = "in-use.lock";

/// An exclusive advisory lock on the data folder's [`LOCK_FILE`], held while this value lives. The
/// operating system releases it when the process ends, however it ends, so a crash leaves no
/// stale lock behind.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Takes the lock on `data_dir` (created if missing); refused with
    /// [`ChatError::DataInUse`] while another process (or another open chat core of this
    /// process) holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataLock> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |error| ChatError::Io {
                action,
                path,
                error,
            }
        };
        std::fs::create_dir_all(data_dir).map_err(io("create the folder", data_dir))?;
        let path = data_dir.join(LOCK_FILE);
        // Not truncated on open: the owner's id must stay readable to the one refused.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(ChatError::DataInUse {
                    dir: data_dir.to_owned(),
                    pid: owner(&mut file),
                })
            }
            Err(TryLockError::Error(error)) => return Err(io("lock", &path)(error)),
        }
        let id = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(id.as_bytes()))
            .map_err(io("write", &path))?;
        Ok(DataLock { _file: file })
    }
}

/// The process id the lock's owner wrote, if it can be read (Windows forbids reading a locked
/// file; an owner may not have written it yet).
fn owner(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
