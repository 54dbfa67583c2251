//! Property tests of the CLI's disk cache: file names from any URL stay inside the cache
//! directory, and corrupt, truncated or foreign entry files are misses, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Component;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use skill_fleet_client::{Cache, CacheEntry};

/// Seed of the generated cases.
const SEED: u64 = 0x5eed0005;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        // The same cases every run (`PROPTEST_RNG_SEED` explores others).
        rng_seed: match Config::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..Config::default()
    }
}

/// Keys (URLs) a hostile or confused caller could hand the cache.
fn hostile_key() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,64}",
        "(\\.\\./|/|\\\\|\\x00|%2e%2e%2f|[a-z]){0,40}",
        Just("../".repeat(50)),
        Just("/etc/passwd".to_owned()),
        Just("\0".to_owned()),
        Just(String::new()),
        "[a-z./]{10000,10100}",
        "http://127\\.0\\.0\\.1:8000/api/v1/jobs/[A-Za-z0-9_./%-]{0,80}(\\?[a-z=&./]{0,30})?",
    ]
}

fn cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache").join("jobs"));
    (dir, cache)
}

fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|stem| {
        stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The names in the cache directory, sorted.
fn names(cache: &Cache) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn file_names_from_any_key_stay_inside_the_directory(key in hostile_key()) {
        let cache = Cache::new("/var/cache/skill-fleet/jobs");
        let path = cache.path_for(&key);
        prop_assert_eq!(path.parent(), Some(cache.dir()));
        let relative = path.strip_prefix(cache.dir()).unwrap();
        let components: Vec<_> = relative.components().collect();
        prop_assert_eq!(components.len(), 1);
        prop_assert!(matches!(components[0], Component::Normal(_)));
        let name = relative.to_str().unwrap();
        prop_assert!(is_entry_name(name), "{name}");
        // The same key always names the same file.
        prop_assert_eq!(cache.path_for(&key), path);
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn corrupt_files_are_misses_and_get_replaced(
        key in hostile_key(),
        junk in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            ".{0,200}".prop_map(String::into_bytes),
            Just(b"\xff\xfe\x00".to_vec()),
            Just(br#"{"format":1}"#.to_vec()),
            Just(b"[]".to_vec()),
            Just(b"null".to_vec()),
        ],
    ) {
        let (_dir, cache) = cache();
        fs::create_dir_all(cache.dir()).unwrap();
        fs::write(cache.path_for(&key), &junk).unwrap();
        // Whatever the bytes, a read is a miss unless they are a whole entry for this key.
        if let Some(entry) = cache.get(&key) {
            prop_assert_eq!(&entry.url, &key);
        }
        let _ = cache.stats().unwrap();
        let entry = CacheEntry::new(key.clone(), Some("\"v1\"".into()), None, "{}");
        cache.put(&entry).unwrap();
        prop_assert_eq!(cache.get(&key), Some(entry));
        let path = cache.path_for(&key);
        let name = path.file_name().unwrap().to_str().unwrap();
        prop_assert_eq!(names(&cache), vec![name.to_owned()]);
    }

    #[test]
    fn truncated_or_altered_entries_are_misses(
        key in hostile_key(),
        etag in prop::option::of(".{0,20}"),
        last_modified in prop::option::of(".{0,30}"),
        body in ".{0,200}",
        cut in any::<prop::sample::Index>(),
        format in any::<u32>(),
        other_url in ".{0,20}",
    ) {
        let (_dir, cache) = cache();
        let entry = CacheEntry::new(key.clone(), etag, last_modified, body);
        cache.put(&entry).unwrap();
        prop_assert_eq!(cache.get(&key), Some(entry.clone()));
        let path = cache.path_for(&key);
        let whole = fs::read(&path).unwrap();

        // Cut anywhere short of the end: never a hit (a JSON object is only whole at its `}`).
        let len = cut.index(whole.len());
        fs::write(&path, &whole[..len]).unwrap();
        prop_assert_eq!(cache.get(&key), None, "cut at {}", len);

        // Another entry format or another URL in the file: a miss, not a wrong answer.
        let mut value: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        value["format"] = format.into();
        fs::write(&path, value.to_string()).unwrap();
        let hit = cache.get(&key);
        prop_assert_eq!(hit.is_some(), format == 1);
        value["format"] = 1.into();
        value["url"] = other_url.clone().into();
        fs::write(&path, value.to_string()).unwrap();
        prop_assert_eq!(cache.get(&key).is_some(), other_url == key);
    }

    #[test]
    fn hostile_keys_round_trip_and_leave_no_stray_files(
        keys in prop::collection::vec(hostile_key(), 1..4),
        body in ".{0,100}",
    ) {
        let (dir, cache) = cache();
        for key in &keys {
            cache.put(&CacheEntry::new(key.clone(), None, Some("Sun, 06 Nov 1994 08:49:37 GMT".into()), body.clone())).unwrap();
            prop_assert_eq!(cache.get(key).map(|e| e.body), Some(body.clone()));
        }
        // Every file written is an entry inside the directory; nothing escaped above it.
        prop_assert!(names(&cache).iter().all(|name| is_entry_name(name)));
        let mut outside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        outside.sort();
        prop_assert_eq!(outside, vec![std::ffi::OsString::from("cache")]);
        for key in &keys {
            cache.remove(key).unwrap();
            prop_assert_eq!(cache.get(key), None);
        }
        prop_assert_eq!(cache.stats().unwrap().entries, 0);
    }
}
