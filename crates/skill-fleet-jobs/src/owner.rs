//! Ownership of an SQLite database: one process at a time holds an exclusive lock on
//! `<database>.lock`, the file beside the database, and writes who it is into it.
//!
//! The lock is the operating system's (`flock` on Unix), taken without blocking and held for
//! the life of a [`DatabaseOwner`]; it goes away with the process, however the process ends,
//! so a lock file left by a killed server never blocks the next one. The lock file itself is
//! never deleted: its lock, not its existence, marks ownership. In-memory databases are never
//! shared and take no lock.
//!
//! A PostgreSQL database takes no lock either: several servers share it by design (claims,
//! leases and the rescue sweep are safe across servers, see [`crate::lease`]), so
//! [`DatabaseOwner::acquire`] always succeeds and [`owner_of`] says [`Ownership::Free`].

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Who holds a database: what the holder wrote into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The holding program, e.g. `skill-fleet-server`.
    pub program: String,
    /// Its process id.
    pub pid: u32,
    /// Where it serves, once it has bound its listener (`http://127.0.0.1:8000`).
    #[serde(default)]
    pub address: Option<String>,
    /// When it took the lock, RFC 3339 in UTC (`2026-12-01T08:40:00Z`).
    pub since: String,
}

impl std::fmt::Display for OwnerRecord {
    /// `skill-fleet-server (pid 4242, http://127.0.0.1:8000, since 2026-12-01T08:40:00Z)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}", self.program, self.pid)?;
        if let Some(address) = &self.address {
            write!(f, ", {address}")?;
        }
        write!(f, ", since {})", self.since)
    }
}

/// Who holds a database's lock right now, as [`owner_of`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody: the lock is free (or the database is in memory and cannot be shared, or it is
    /// a PostgreSQL database, which servers share and nobody owns).
    Free,
    /// A process holds the lock; `record` is what it wrote, `None` when the lock file is
    /// empty or cannot be read as a record (the holder is still writing it, or it is not
    /// ours).
    Held {
        /// The lock file.
        lock_path: PathBuf,
        /// What the holder wrote.
        record: Option<OwnerRecord>,
    },
}

/// The exclusive right to a database for the life of this value: dropping it releases the
/// lock. One process at a time can hold it; see the module docs. For a PostgreSQL url it
/// holds nothing: any number of servers share that database.
#[derive(Debug)]
pub struct DatabaseOwner {
    /// `None` for in-memory and PostgreSQL databases, which take no lock.
    held: Option<HeldLock>,
}

#[derive(Debug)]
struct HeldLock {
    /// The open, locked lock file; the lock lives as long as this handle.
    file: File,
    path: PathBuf,
    record: OwnerRecord,
}

/// How often [`DatabaseOwner::acquire`] tries again when the lock is taken, in case the
/// holder is only [`owner_of`] reading it for a moment.
const ACQUIRE_TRIES: u32 = 5;

impl DatabaseOwner {
    /// Takes the database's lock for `program` (e.g. `skill-fleet-server`) without blocking,
    /// and writes this process into the lock file. Fails with [`StoreError::InUse`], naming
    /// the holder where it can, when another process holds it.
    pub fn acquire(database: &str, program: &str) -> Result<DatabaseOwner> {
        let Some(path) = lock_path(database)? else {
            return Ok(DatabaseOwner { held: None });
        };
        let lock_error = |source| StoreError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries + 1 < ACQUIRE_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::InUse {
                        database: database.to_owned(),
                        lock_path: path.clone(),
                        owner: read_record(&file).map(Box::new),
                    });
                }
                Err(TryLockError::Error(source)) => return Err(lock_error(source)),
            }
        }
        let record = OwnerRecord {
            program: program.to_owned(),
            pid: std::process::id(),
            address: None,
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut held = HeldLock { file, path, record };
        held.write_record()?;
        Ok(DatabaseOwner { held: Some(held) })
    }

    /// Records where the holder serves (after it bound its listener), for the message a
    /// second server gets and for `db status`.
    pub fn set_address(&mut self, address: &str) -> Result<()> {
        match &mut self.held {
            Some(held) => {
                held.record.address = Some(address.to_owned());
                held.write_record()
            }
            None => Ok(()),
        }
    }

    /// The lock file held, `None` for an in-memory database.
    pub fn lock_path(&self) -> Option<&Path> {
        self.held.as_ref().map(|held| held.path.as_path())
    }

    /// What this owner wrote into the lock file, `None` for an in-memory database.
    pub fn record(&self) -> Option<&OwnerRecord> {
        self.held.as_ref().map(|held| &held.record)
    }
}

impl HeldLock {
    /// Replaces the lock file's content in place (the lock belongs to this file, so it is
    /// never replaced by another one).
    fn write_record(&mut self) -> Result<()> {
        let mut text = serde_json::to_string(&self.record)
            .map_err(|err| StoreError::InvalidInput(format!("owner record: {err}")))?;
        text.push('\n');
        let lock_error = |source| StoreError::Lock {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(&lock_error)?;
        self.file.seek(SeekFrom::Start(0)).map_err(&lock_error)?;
        // One write, so a reader sees all of it or (rarely) none.
        self.file.write_all(text.as_bytes()).map_err(&lock_error)?;
        self.file.flush().map_err(lock_error)
    }
}

/// Who holds the database's lock, found without blocking and without taking it for longer
/// than a moment. A missing, empty or garbled lock file is not an error.
pub fn owner_of(database: &str) -> Result<Ownership> {
    let Some(path) = lock_path(database)? else {
        return Ok(Ownership::Free);
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Ownership::Free),
        Err(source) => return Err(StoreError::Lock { path, source }),
    };
    // A shared lock is granted unless someone holds the exclusive one.
    match file.try_lock_shared() {
        Ok(()) => Ok(Ownership::Free),
        Err(TryLockError::WouldBlock) => Ok(Ownership::Held {
            record: read_record(&file),
            lock_path: path,
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::Lock { path, source }),
    }
}

/// The record in a lock file, `None` when it is empty or not a record.
fn read_record(mut file: &File) -> Option<OwnerRecord> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    // Bounded: a lock file that is not ours may be anything.
    file.take(4096).read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Names the holder in a message: `skill-fleet-server (pid 4242, …)`, or `process` when it
/// left no readable record.
pub(crate) fn describe(owner: &Option<Box<OwnerRecord>>) -> String {
    match owner {
        Some(record) => record.to_string(),
        None => "process (it left no readable record in the lock file)".to_owned(),
    }
}

/// The lock file of a database url: `<path>.lock` beside the database file, `None` for an
/// in-memory database and for PostgreSQL (shared, no lock). Accepts what
/// [`crate::JobStore::open`] accepts: a plain path, `sqlite://path`, `sqlite:path` and
/// `file:path?query` URIs, `postgres://` and `postgresql://` urls.
pub fn lock_path(database: &str) -> Result<Option<PathBuf>> {
    if crate::backend::Kind::of(database) == crate::backend::Kind::Postgres {
        return Ok(None);
    }
    let path = crate::backend::sqlite::database_path(database)?;
    let Some(file) = database_file(path) else {
        return Ok(None);
    };
    let mut lock = file.into_os_string();
    lock.push(".lock");
    Ok(Some(PathBuf::from(lock)))
}

/// The file SQLite opens for `path` (a plain path or a `file:` URI), `None` in memory.
fn database_file(path: &str) -> Option<PathBuf> {
    if path == ":memory:" || path.is_empty() {
        return None;
    }
    let Some(uri) = path.strip_prefix("file:") else {
        return Some(PathBuf::from(path));
    };
    let (file, query) = uri.split_once('?').unwrap_or((uri, ""));
    let file = file.split_once('#').map_or(file, |(file, _)| file);
    let in_memory = query
        .split('&')
        .any(|pair| pair.eq_ignore_ascii_case("mode=memory"));
    if in_memory || file == ":memory:" || file.is_empty() {
        return None;
    }
    // `file:///abs` and `file://localhost/abs` name `/abs`; `file:rel` a relative path.
    let file = match file.strip_prefix("//") {
        Some(rest) => rest.strip_prefix("localhost").unwrap_or(rest),
        None => file,
    };
    Some(PathBuf::from(percent_decode(file)))
}

/// Decodes `%XX` escapes, as SQLite does in a URI's path; a malformed escape stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_of(database: &str) -> Option<PathBuf> {
        lock_path(database).expect("a valid url")
    }

    #[test]
    fn every_url_form_locks_beside_its_file() {
        let beside = Some(PathBuf::from("/var/lib/sf/jobs.db.lock"));
        assert_eq!(lock_of("/var/lib/sf/jobs.db"), beside);
        assert_eq!(lock_of("sqlite:///var/lib/sf/jobs.db"), beside);
        assert_eq!(lock_of("sqlite:/var/lib/sf/jobs.db"), beside);
        assert_eq!(lock_of("file:/var/lib/sf/jobs.db?mode=rwc"), beside);
        assert_eq!(lock_of("file:///var/lib/sf/jobs.db"), beside);
        assert_eq!(
            lock_of("file://localhost/var/lib/sf/jobs.db?cache=shared"),
            beside
        );
        assert_eq!(lock_of("sqlite://file:/var/lib/sf/jobs.db"), beside);
        assert_eq!(
            lock_of("file:/var/lib/my%20jobs.db"),
            Some(PathBuf::from("/var/lib/my jobs.db.lock"))
        );
        assert_eq!(lock_of("./jobs.db"), Some(PathBuf::from("./jobs.db.lock")));
        assert_eq!(lock_of("jobs.db"), Some(PathBuf::from("jobs.db.lock")));
        assert_eq!(lock_of("file:jobs.db"), Some(PathBuf::from("jobs.db.lock")));
        assert!(lock_path("sqlite://").is_err());
    }

    #[test]
    fn in_memory_databases_take_no_lock() {
        for database in [
            ":memory:",
            "sqlite://:memory:",
            "file::memory:",
            "file::memory:?cache=shared",
            "file:shared?mode=memory&cache=shared",
            "file:x.db?cache=shared&MODE=MEMORY",
        ] {
            assert_eq!(lock_of(database), None, "{database}");
            let owner = DatabaseOwner::acquire(database, "test").expect("no lock to take");
            assert_eq!(owner.lock_path(), None);
            assert_eq!(owner_of(database).expect("in memory"), Ownership::Free);
        }
    }

    #[test]
    fn one_owner_at_a_time_and_dropping_releases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("jobs.db").display().to_string();
        assert_eq!(owner_of(&database).expect("no lock file"), Ownership::Free);

        let mut owner = DatabaseOwner::acquire(&database, "first").expect("free");
        owner.set_address("http://127.0.0.1:8000").expect("write");
        let record = owner.record().expect("a file database").clone();
        assert_eq!(record.pid, std::process::id());
        assert_eq!(record.address.as_deref(), Some("http://127.0.0.1:8000"));
        match owner_of(&database).expect("readable") {
            Ownership::Held { record: seen, .. } => assert_eq!(seen, Some(record.clone())),
            Ownership::Free => panic!("the lock is held"),
        }
        // Another handle is refused, even in this process (the lock is per open file).
        let sqlite_url = format!("sqlite://{database}");
        match DatabaseOwner::acquire(&sqlite_url, "second") {
            Err(StoreError::InUse { owner, .. }) => assert_eq!(owner.as_deref(), Some(&record)),
            other => panic!("expected in use, got {other:?}"),
        }
        drop(owner);
        assert_eq!(owner_of(&database).expect("readable"), Ownership::Free);
        let again = DatabaseOwner::acquire(&database, "second").expect("released");
        assert_eq!(again.record().map(|r| r.program.as_str()), Some("second"));
    }

    #[test]
    fn an_empty_or_garbled_lock_file_is_read_as_no_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = dir.path().join("jobs.db").display().to_string();
        let path = lock_of(&database).expect("a file database");
        for garbage in [&b""[..], b"{\"pid\": 12", b"\xff\xfe not json", b"pid=12\n"] {
            std::fs::write(&path, garbage).expect("write");
            // A stale file nobody holds does not block.
            assert_eq!(owner_of(&database).expect("garbage"), Ownership::Free);
            let held = File::open(&path).expect("open");
            held.try_lock().expect("free");
            match owner_of(&database).expect("garbage") {
                Ownership::Held { record, lock_path } => {
                    assert_eq!(record, None);
                    assert_eq!(lock_path, path);
                }
                Ownership::Free => panic!("the lock is held"),
            }
            match DatabaseOwner::acquire(&database, "second") {
                Err(err @ StoreError::InUse { owner: None, .. }) => {
                    assert!(err.to_string().contains(&database), "{err}");
                    assert!(err.to_string().contains("no readable record"), "{err}");
                }
                other => panic!("expected in use, got {other:?}"),
            }
            drop(held);
        }
        // Taking it over rewrites the stale content.
        let owner = DatabaseOwner::acquire(&database, "third").expect("free");
        let text = std::fs::read_to_string(&path).expect("read");
        let record: OwnerRecord = serde_json::from_str(text.trim()).expect("a record");
        assert_eq!(Some(&record), owner.record());
    }
}
