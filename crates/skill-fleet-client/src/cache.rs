//! The local response cache: one file per URL holding the body and its validators.
//!
//! Files live in one directory (default `~/.skill_fleet/cache/jobs/`, or
//! `$SKILL_FLEET_CACHE_DIR`). A file's name is a hash of the URL in hex, never anything
//! taken from a job id, so no URL can name a path outside the directory. Each file is JSON
//! and repeats its URL, so a hash collision or a foreign file is a miss, never a wrong
//! answer. Writes go to a temporary file in the same directory and are renamed into place,
//! so a reader never sees half an entry; a file that does not parse is ignored and replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "SKILL_FLEET_CACHE_DIR";

/// Version of the entry format; entries of another version are misses.
const FORMAT: u32 = 1;
/// Extension of entry files.
const EXT: &str = "json";
/// Prefix of temporary files being written.
const TMP_PREFIX: &str = ".tmp-";

/// A cached response: the body and the validators to revalidate it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Entry format version.
    format: u32,
    /// The full URL the response belongs to.
    pub url: String,
    /// The response's `ETag`, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// The response's `Last-Modified`, sent back as `If-Modified-Since` when there is no ETag.
    pub last_modified: Option<String>,
    /// When the entry was stored or last revalidated, in seconds since the Unix epoch.
    pub stored_at: u64,
    /// The response body (JSON text).
    pub body: String,
}

impl CacheEntry {
    /// A new entry stored now.
    pub fn new(
        url: impl Into<String>,
        etag: Option<String>,
        last_modified: Option<String>,
        body: impl Into<String>,
    ) -> CacheEntry {
        CacheEntry {
            format: FORMAT,
            url: url.into(),
            etag,
            last_modified,
            stored_at: unix_now(),
            body: body.into(),
        }
    }

    /// True when the entry carries a validator, so it can be revalidated with a 304.
    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// How much the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Number of entry files.
    pub entries: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// A directory of cached responses. Cheap to clone; nothing is created until the first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The default directory: `$SKILL_FLEET_CACHE_DIR` if set and not empty, else
    /// `~/.skill_fleet/cache/jobs/`; `None` when neither can be found.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|dir| !dir.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        std::env::home_dir()
            .filter(|home| !home.as_os_str().is_empty())
            .map(|home| home.join(".skill_fleet").join("cache").join("jobs"))
    }

    /// The cache in [`Cache::default_dir`], if there is one.
    pub fn from_env() -> Option<Cache> {
        Cache::default_dir().map(Cache::new)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an URL's entry lives in: a hash of the URL in hex, inside [`Cache::dir`].
    pub fn path_for(&self, url: &str) -> PathBuf {
        self.dir.join(format!("{}.{EXT}", url_hash_hex(url)))
    }

    /// The entry for `url`, if there is a readable one. A missing, unreadable, corrupt or
    /// foreign file is a miss.
    pub fn get(&self, url: &str) -> Option<CacheEntry> {
        let text = fs::read_to_string(self.path_for(url)).ok()?;
        let entry: CacheEntry = serde_json::from_str(&text).ok()?;
        (entry.format == FORMAT && entry.url == url).then_some(entry)
    }

    /// Stores `entry` under its URL, atomically (temporary file in the same directory, then
    /// rename). Replaces whatever was there, corrupt or not.
    pub fn put(&self, entry: &CacheEntry) -> Result<(), ClientError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientError::Cache { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let target = self.path_for(&entry.url);
        let text = serde_json::to_string(entry).map_err(|err| ClientError::Cache {
            path: target.clone(),
            source: std::io::Error::other(err),
        })?;
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{}",
            std::process::id(),
            unique_suffix(),
            url_hash_hex(&entry.url)
        ));
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &target)
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(ClientError::Cache {
                path: target,
                source,
            });
        }
        Ok(())
    }

    /// Marks `url`'s entry as just revalidated (rewrites its `stored_at`).
    pub fn touch(&self, url: &str) -> Result<(), ClientError> {
        match self.get(url) {
            Some(mut entry) => {
                entry.stored_at = unix_now();
                self.put(&entry)
            }
            None => Ok(()),
        }
    }

    /// Removes `url`'s entry, if any.
    pub fn remove(&self, url: &str) -> Result<(), ClientError> {
        let path = self.path_for(url);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ClientError::Cache { path, source }),
        }
    }

    /// Counts the entry files and their bytes. A missing directory is an empty cache.
    pub fn stats(&self) -> Result<CacheStats, ClientError> {
        let mut stats = CacheStats::default();
        for (_, metadata) in self.entry_files()? {
            stats.entries += 1;
            stats.bytes += metadata.len();
        }
        Ok(stats)
    }

    /// Removes every entry (and leftover temporary files); files this cache did not write
    /// are left alone. Returns what was removed.
    pub fn clear(&self) -> Result<CacheStats, ClientError> {
        self.remove_where(|_| true)
    }

    /// Removes entries not stored or revalidated within `older_than` (by file modification
    /// time). Returns what was removed.
    pub fn prune(&self, older_than: Duration) -> Result<CacheStats, ClientError> {
        let now = SystemTime::now();
        self.remove_where(|metadata| {
            metadata
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age >= older_than)
        })
    }

    fn remove_where(
        &self,
        mut matches: impl FnMut(&fs::Metadata) -> bool,
    ) -> Result<CacheStats, ClientError> {
        let mut removed = CacheStats::default();
        for (path, metadata) in self.entry_files()? {
            if !matches(&metadata) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed.entries += 1;
                    removed.bytes += metadata.len();
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ClientError::Cache { path, source }),
            }
        }
        // Temporary files left by a writer that died; older than a minute so a concurrent
        // writer's file is not pulled from under it.
        for path in self.files_where(|name| name.starts_with(TMP_PREFIX))? {
            let stale = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if stale {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(removed)
    }

    /// The entry files (names this cache writes) with their metadata.
    fn entry_files(&self) -> Result<Vec<(PathBuf, fs::Metadata)>, ClientError> {
        let mut files = Vec::new();
        for path in self.files_where(is_entry_name)? {
            if let Ok(metadata) = fs::symlink_metadata(&path)
                && metadata.is_file()
            {
                files.push((path, metadata));
            }
        }
        Ok(files)
    }

    fn files_where(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, ClientError> {
        let read = match fs::read_dir(&self.dir) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ClientError::Cache {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths = Vec::new();
        for item in read {
            let item = item.map_err(|source| ClientError::Cache {
                path: self.dir.clone(),
                source,
            })?;
            if item.file_name().to_str().is_some_and(&keep) {
                paths.push(item.path());
            }
        }
        Ok(paths)
    }
}

/// True for names this cache gives its entries: 32 lowercase hex digits + `.json`.
fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|stem| {
        stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// 128-bit FNV-1a of the URL, as 32 hex digits: stable across builds and Rust versions, and
/// made only of `[0-9a-f]`, so it is always a plain file name.
pub(crate) fn url_hash_hex(url: &str) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut hash = OFFSET;
    for byte in url.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{hash:032x}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("jobs"));
        (dir, cache)
    }

    #[test]
    fn put_then_get_round_trips_and_leaves_no_temp_files() {
        let (_dir, cache) = cache();
        let url = "http://127.0.0.1:8000/api/v1/jobs/a";
        assert_eq!(cache.get(url), None);
        let entry = CacheEntry::new(url, Some("\"v1\"".into()), None, r#"{"id":"a"}"#);
        cache.put(&entry).unwrap();
        assert_eq!(cache.get(url), Some(entry.clone()));
        let names: Vec<_> = fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("{}.json", url_hash_hex(url))]);
        // A second write replaces the first.
        let newer = CacheEntry::new(url, Some("\"v2\"".into()), None, r#"{"id":"a","v":2}"#);
        cache.put(&newer).unwrap();
        assert_eq!(cache.get(url).unwrap().etag.as_deref(), Some("\"v2\""));
        assert_eq!(cache.stats().unwrap().entries, 1);
    }

    #[test]
    fn corrupt_or_foreign_files_are_misses_and_get_replaced() {
        let (_dir, cache) = cache();
        let url = "http://127.0.0.1:8000/api/v1/jobs/b";
        fs::create_dir_all(cache.dir()).unwrap();
        let path = cache.path_for(url);
        for junk in [
            &b"{not json"[..],
            &b"\xff\xfe\x00garbage"[..],
            br#"{"format":1,"url":"http://elsewhere/","etag":null,"last_modified":null,"stored_at":0,"body":"{}"}"#,
            br#"{"format":99,"url":"http://127.0.0.1:8000/api/v1/jobs/b","etag":null,"last_modified":null,"stored_at":0,"body":"{}"}"#,
        ] {
            fs::write(&path, junk).unwrap();
            assert_eq!(cache.get(url), None);
        }
        let entry = CacheEntry::new(url, Some("\"e\"".into()), None, "{}");
        cache.put(&entry).unwrap();
        assert_eq!(cache.get(url), Some(entry));
    }

    #[test]
    fn file_names_are_safe_for_hostile_urls() {
        let (_dir, cache) = cache();
        for url in [
            "http://h/api/v1/jobs/../../../../etc/passwd",
            "http://h/api/v1/jobs/a%2F..%2F..%2Fx",
            "/absolute/path",
            "",
            "C:\\windows\\system32",
            "http://h/\0nul",
            "http://h/jobs?status=queued&cursor=../../x",
        ] {
            let path = cache.path_for(url);
            assert_eq!(path.parent(), Some(cache.dir()), "{url}");
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(is_entry_name(name), "{name}");
        }
        assert_ne!(url_hash_hex("http://h/a"), url_hash_hex("http://h/b"));
        // Stable across versions: a known value.
        assert_eq!(url_hash_hex(""), "6c62272e07bb014262b821756295c58d");
    }

    #[test]
    fn stats_clear_and_prune_only_touch_entries() {
        let (_dir, cache) = cache();
        assert_eq!(cache.stats().unwrap(), CacheStats::default());
        for id in ["a", "b", "c"] {
            let url = format!("http://h/api/v1/jobs/{id}");
            cache
                .put(&CacheEntry::new(url, Some("\"x\"".into()), None, "{}"))
                .unwrap();
        }
        let foreign = cache.dir().join("notes.txt");
        fs::write(&foreign, "mine").unwrap();
        let stats = cache.stats().unwrap();
        assert_eq!(stats.entries, 3);
        assert!(stats.bytes > 0);
        assert_eq!(cache.prune(Duration::from_secs(3600)).unwrap().entries, 0);
        assert_eq!(cache.prune(Duration::ZERO).unwrap().entries, 3);
        assert_eq!(cache.stats().unwrap().entries, 0);
        cache
            .put(&CacheEntry::new(
                "http://h/x",
                Some("\"x\"".into()),
                None,
                "{}",
            ))
            .unwrap();
        assert_eq!(cache.clear().unwrap().entries, 1);
        assert!(foreign.exists(), "clear must leave foreign files alone");
    }
}
