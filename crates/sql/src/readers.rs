//! The read-only SQLite connections of a store (the registry's and the
//! ledger's each keep a few beside their single writer, WAL mode letting
//! them read while it writes).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

/// Locks a connection. A panic while holding one cannot leave a
/// transaction open (rusqlite rolls back on drop), so a poisoned lock is
/// still usable.
pub fn lock_connection(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-only connections to one database file, handed out in turn.
pub struct SqliteReaders {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl SqliteReaders {
    /// Opens `count` (at least one) read-only connections to `path`, each
    /// set up with `pragmas`.
    pub fn open(path: &Path, count: usize, pragmas: &str) -> Result<Self, rusqlite::Error> {
        let mut connections = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.execute_batch(pragmas)?;
            connections.push(Mutex::new(c));
        }
        Ok(SqliteReaders {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on the next connection in turn, waiting for it if busy
    /// (a blocking call: run it on a blocking thread).
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        f(&lock_connection(&self.connections[i]))
    }

    /// Runs `f` on a connection free right now, if any, without waiting:
    /// a point read of tens of microseconds then runs on the caller's
    /// thread, saving the blocking pool's two hand-offs.
    pub fn try_with<T, F: FnOnce(&Connection) -> T>(&self, f: F) -> Result<T, F> {
        let n = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            if let Ok(conn) = self.connections[(start + k) % n].try_lock() {
                return Ok(f(&conn));
            }
        }
        Err(f)
    }
}
