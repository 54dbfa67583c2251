//! Temporary databases: each test its own directory, removed when the test ends.

use std::path::{Path, PathBuf};

/// The file name of a test database inside its temporary directory.
pub const DATABASE_FILE: &str = "skill-fleet.db";

/// A fresh temporary directory and the database path inside it (the file does not exist
/// yet). Keep the directory alive as long as the database is used.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("cannot create a temp dir: {err}"));
    let path = dir.path().join(DATABASE_FILE);
    (dir, path)
}

/// A temporary directory with a database path and a cache directory in it, for tests that
/// run a server and a client side by side; removed on drop.
#[derive(Debug)]
pub struct TempDatabase {
    /// The directory holding everything.
    pub dir: tempfile::TempDir,
}

impl TempDatabase {
    /// A fresh directory.
    pub fn new() -> TempDatabase {
        TempDatabase {
            dir: tempfile::tempdir()
                .unwrap_or_else(|err| panic!("cannot create a temp dir: {err}")),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join(DATABASE_FILE)
    }

    /// A client cache directory beside the database.
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

impl Default for TempDatabase {
    fn default() -> TempDatabase {
        TempDatabase::new()
    }
}
