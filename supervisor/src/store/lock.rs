//! A store is held by one process at a time: `flota.lock` in its directory is flock()ed and
//! names the holder's pid; readers that must not see a run's writes share it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::access::LOCK_FILE;
use super::error::StoreError;

/// Shares the store's lock with other readers, so no run writes it meanwhile; changes nothing
/// (a store without a lock file is read without one).
pub fn lock_shared(path: &Path) -> Result<Option<Flock<File>>, StoreError> {
    let Ok(file) = File::open(path.join(LOCK_FILE)) else { return Ok(None) };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(locked) => Ok(Some(locked)),
        Err((file, _)) => Err(StoreError::Locked { path: path.to_owned(), holder: holder(file) }),
    }
}

/// Who holds a lock file: "pid N" as it says, or "another process".
fn holder(mut file: File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!("pid {pid}"),
        None => "another process".to_owned(),
    }
}

/// Takes the store's lock file, recording our pid in it; names the holder if it is taken.
pub fn lock(path: &Path) -> Result<Flock<File>, StoreError> {
    let io = |source| StoreError::Io { path: path.to_owned(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK_FILE))
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            locked.set_len(0).map_err(io)?;
            locked.rewind().map_err(io)?;
            writeln!(locked, "{}", std::process::id()).map_err(io)?;
            Ok(locked)
        }
        Err((file, _)) => Err(StoreError::Locked { path: path.to_owned(), holder: holder(file) }),
    }
}
