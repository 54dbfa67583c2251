//! Property tests of the server's two parsers of outside input: the executor's stdout
//! protocol (any line, any bytes, any JSON is a message, a log line or an invalid message,
//! never a panic) and the configuration (any TOML file, any value for a known key, any
//! flags give a clear error or a configuration the server can run with).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use serde_json::{Map, Value, json};
use skill_fleet_server::executor::{Line, parse_line};
use skill_fleet_server::{Cli, Config, ServerError};
use skill_fleet_types::{ProgressUpdate, validate_job_type};

/// Seed of the generated cases.
const SEED: u64 = 0x5eed0003;

fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        // The same cases every run (`PROPTEST_RNG_SEED` explores others).
        rng_seed: match ProptestConfig::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// The executor protocol.

const PROGRESS_FIELDS: [&str; 6] = [
    "step",
    "progress",
    "cost_usd",
    "metric",
    "message",
    "checkpoint",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-2.0..2.0f64).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object with mostly protocol keys.
fn protocol_object() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        6 => prop::sample::select(vec![
            "step", "progress", "cost_usd", "metric", "message", "checkpoint", "result",
            "result_path", "artifact", "name", "content_type",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{0,10}",
    ];
    prop::collection::btree_map(key, json_value(), 0..6).prop_map(|map| map.into_iter().collect())
}

/// Checks what a parsed line may be, whatever the input.
fn check_line(input: &str, parsed: &Line) -> Result<(), TestCaseError> {
    match parsed {
        Line::Log(text) => prop_assert_eq!(text, input),
        Line::Invalid { line, reason } => {
            prop_assert_eq!(line, input);
            prop_assert!(!reason.is_empty());
            prop_assert!(input.trim_start().starts_with('{'), "{input}");
        }
        Line::Message { update, result } => {
            prop_assert!(update.is_some() || result.is_some());
            if let Some(update) = update {
                // Only valid numbers are ever applied.
                prop_assert_eq!(update.validate(), Ok(()));
                prop_assert!(!update.is_empty());
            }
            prop_assert!(input.trim_start().starts_with('{'), "{input}");
        }
        Line::Artifact(artifact) => {
            prop_assert!(input.trim_start().starts_with('{'), "{input}");
            prop_assert!(input.contains("\"artifact\""), "{input}");
            prop_assert!(!artifact.path.is_empty() || input.contains("\"artifact\":\"\""));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_text_is_a_message_a_log_line_or_invalid(line in prop_oneof![
        ".{0,200}",
        "[ \t]*\\{.{0,100}",
        "\\{\"(progress|step|result|cost_usd)\": ?.{0,30}\\}",
    ]) {
        let parsed = parse_line(&line);
        check_line(&line, &parsed)?;
        if !line.trim().starts_with('{') {
            prop_assert_eq!(parsed, Line::Log(line.clone()));
        }
    }

    #[test]
    fn any_bytes_read_lossily_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        // The child reader decodes each line lossily before parsing it.
        let line = String::from_utf8_lossy(&bytes).into_owned();
        check_line(&line, &parse_line(&line))?;
    }

    #[test]
    fn json_that_is_not_an_object_is_a_log_line(value in json_value(), pad in "[ \t]{0,3}") {
        let line = format!("{pad}{value}{pad}");
        let parsed = parse_line(&line);
        check_line(&line, &parsed)?;
        if !value.is_object() {
            prop_assert_eq!(parsed, Line::Log(line));
        }
    }

    #[test]
    fn protocol_objects_are_applied_only_when_valid(object in protocol_object(), cut in any::<prop::sample::Index>()) {
        let line = Value::Object(object).to_string();
        let parsed = parse_line(&line);
        check_line(&line, &parsed)?;
        // Numbers as JSON text reads them back (the last digit of a long float may differ).
        let Value::Object(object) = serde_json::from_str::<Value>(&line).unwrap() else {
            unreachable!("an object prints as an object");
        };
        let known = |key: &str| object.get(key).is_some_and(|v| !v.is_null());
        let has_progress = PROGRESS_FIELDS.iter().any(|field| known(field));
        let has_result = object.contains_key("result") || object.contains_key("result_path");
        // An `artifact` key makes the line an artifact line (its other fields are not read).
        let artifact = object.get("artifact");
        let text_or_absent =
            |key: &str| object.get(key).is_none_or(|v| v.is_null() || v.is_string());
        let well_formed = artifact.is_some_and(Value::is_string)
            && text_or_absent("name")
            && text_or_absent("content_type");
        match (&parsed, artifact) {
            (Line::Artifact(line), Some(Value::String(path))) => {
                prop_assert!(well_formed);
                prop_assert_eq!(&line.path, path);
                prop_assert_eq!(line.name.as_deref(), object.get("name").and_then(Value::as_str));
            }
            (Line::Invalid { .. }, Some(_)) => prop_assert!(!well_formed),
            (other, Some(value)) => prop_assert!(false, "{value} gave {other:?}"),
            (_, None) => {}
        }
        if artifact.is_some() {
            return Ok(());
        }
        match &parsed {
            Line::Log(_) => prop_assert!(!has_progress && !has_result, "{line}"),
            Line::Message { update, result } => {
                prop_assert_eq!(update.is_some(), has_progress);
                prop_assert_eq!(result.is_some(), has_result);
                if let Some(update) = update {
                    // What was applied is what the line said.
                    let number = |key: &str| object.get(key).and_then(Value::as_f64);
                    prop_assert_eq!(update.progress, number("progress"));
                    prop_assert_eq!(update.cost_usd, number("cost_usd"));
                    prop_assert_eq!(update.metric, number("metric"));
                    prop_assert_eq!(update.message.as_deref(), object.get("message").and_then(Value::as_str));
                }
                if let Some(result) = result {
                    prop_assert_eq!(result.result_path.as_deref(), object.get("result_path").and_then(Value::as_str));
                }
            }
            Line::Invalid { .. } => prop_assert!(has_progress || has_result),
            Line::Artifact(_) => prop_assert!(false, "no `artifact` key: {line}"),
        }
        // The same line cut short is never applied.
        let end = cut.index(line.len());
        if line.is_char_boundary(end) && end < line.len() {
            let short = &line[..end];
            let parsed = parse_line(short);
            check_line(short, &parsed)?;
            prop_assert_eq!(parsed, Line::Log(short.to_owned()));
        }
    }

    #[test]
    fn valid_progress_lines_are_applied_as_sent(
        step in prop::option::of(prop_oneof![
            "[a-z_]{1,20}".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
        ]),
        progress in prop::option::of(0.0..=1.0f64),
        cost_usd in prop::option::of(0.0..1e12f64),
        metric in prop::option::of(-1e12..1e12f64),
        message in prop::option::of(".{0,40}"),
        checkpoint in prop::option::of(json_value().prop_filter("not null", |v| !v.is_null())),
        extra in prop::collection::btree_map("x_[a-z]{1,6}", json_value(), 0..3),
    ) {
        let mut object = Map::new();
        for (key, value) in [
            ("step", step.clone()),
            ("progress", progress.map(Value::from)),
            ("cost_usd", cost_usd.map(Value::from)),
            ("metric", metric.map(Value::from)),
            ("message", message.clone().map(Value::from)),
            ("checkpoint", checkpoint.clone()),
        ] {
            if let Some(value) = value {
                object.insert(key.to_owned(), value);
            }
        }
        let empty = object.is_empty();
        // Unknown fields are ignored, so runners can add their own.
        object.extend(extra);
        let line = Value::Object(object).to_string();
        let parsed = parse_line(&line);
        if empty {
            prop_assert!(matches!(parsed, Line::Log(_)));
            return Ok(());
        }
        // Numbers as JSON text reads them back (the last digit of a long float may differ).
        let sent: Value = serde_json::from_str(&line).unwrap();
        let expected = ProgressUpdate {
            step: step.map(|step| match step {
                Value::String(text) => text,
                other => other.to_string(),
            }),
            progress: progress.and(sent["progress"].as_f64()),
            cost_usd: cost_usd.and(sent["cost_usd"].as_f64()),
            metric: metric.and(sent["metric"].as_f64()),
            message,
            checkpoint: checkpoint.and(sent.get("checkpoint").cloned()),
            ..ProgressUpdate::default()
        };
        prop_assert_eq!(parsed, Line::Message { update: Some(expected), result: None });
    }

    #[test]
    fn out_of_range_numbers_are_invalid_not_applied(
        field in prop::sample::select(vec!["progress", "cost_usd"]),
        value in prop_oneof![
            (1.0f64..1e300).prop_filter("above 1", |v| *v > 1.0),
            -1e300..-1e-300f64,
        ],
    ) {
        if field == "cost_usd" && value >= 0.0 {
            return Ok(());
        }
        let line = json!({field: value}).to_string();
        prop_assert!(matches!(parse_line(&line), Line::Invalid { .. }), "{line}");
    }
}

// ---------------------------------------------------------------------------------------
// The configuration.

/// A value for any key: every TOML type, with the edges of each.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        2 => any::<i64>().prop_map(toml::Value::Integer),
        // The edges of every range check, and the numbers that overflow durations and deadlines.
        4 => prop::sample::select(vec![
            0i64,
            1,
            -1,
            60_000,
            60_001,
            600_000,
            31_536_000_000,
            31_536_000_001,
            i64::MAX / 1000,
            i64::MAX - 1,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(toml::Value::Integer),
        1 => prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(toml::Value::Float),
        1 => any::<bool>().prop_map(toml::Value::Boolean),
        2 => prop::sample::select(vec![
            "127.0.0.1:0",
            "127.0.0.1:8000",
            "[::1]:8000",
            "0.0.0.0:8000",
            "localhost:8000",
            "text",
            "json",
            "optimization",
            "Bad Type",
            "",
            " ",
            "sqlite:///tmp/x.db",
            "file:x.db?mode=ro",
            ":memory:",
            "/",
            "a\0b",
            "../../etc",
        ])
        .prop_map(|s| toml::Value::String(s.to_owned())),
        1 => ".{0,40}".prop_map(toml::Value::String),
        1 => Just(toml::Value::Datetime("1979-05-27T07:32:00Z".parse().unwrap())),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|map| toml::Value::Table(map.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] = &[
    "bind",
    "database",
    "auth_token",
    "emit_interval_ms",
    "cache_ttl_seconds",
    "resumable_types",
    "legacy_import",
    "log_format",
    "max_body_bytes",
    "data_dir",
    "max_concurrent_jobs",
    "stop_grace_seconds",
    "executors",
];

const EXECUTOR_KEYS: &[&str] = &[
    "command",
    "working_dir",
    "env",
    "timeout_seconds",
    "resumable",
    "max_concurrent",
];

/// An `[executors.TYPE]` table: mostly well-formed, any field may hold anything.
fn executor_table() -> impl Strategy<Value = toml::Value> {
    let command = prop_oneof![
        4 => prop::collection::vec("[a-z0-9./ -]{0,12}", 0..3)
            .prop_map(|args| toml::Value::Array(args.into_iter().map(toml::Value::String).collect())),
        1 => toml_value(),
    ];
    let field = prop_oneof![
        prop::sample::select(EXECUTOR_KEYS).prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    (
        command,
        prop::collection::btree_map(field, toml_value(), 0..4),
    )
        .prop_map(|(command, rest)| {
            let mut table = toml::Table::new();
            table.insert("command".to_owned(), command);
            table.extend(rest);
            toml::Value::Table(table)
        })
}

/// A valid value for each key of the file.
fn valid_value(key: &'static str) -> BoxedStrategy<toml::Value> {
    let int = |range: std::ops::RangeInclusive<i64>| range.prop_map(toml::Value::Integer).boxed();
    let string = |values: Vec<&'static str>| {
        prop::sample::select(values)
            .prop_map(|s| toml::Value::String(s.to_owned()))
            .boxed()
    };
    match key {
        "bind" => string(vec!["127.0.0.1:0", "127.0.0.1:8000", "[::1]:9000"]),
        "database" => string(vec!["jobs.db", "/tmp/x/jobs.db", "sqlite:///tmp/y.db"]),
        "auth_token" => string(vec!["t", "secret"]),
        "emit_interval_ms" => int(1..=60_000),
        "cache_ttl_seconds" | "stop_grace_seconds" => int(0..=86_400),
        "resumable_types" => Just(toml::Value::Array(vec![toml::Value::String(
            "optimization".into(),
        )]))
        .boxed(),
        "legacy_import" | "data_dir" => string(vec!["/tmp/legacy.json", "data"]),
        "log_format" => string(vec!["text", "json"]),
        "max_body_bytes" => int(1..=1 << 30),
        "max_concurrent_jobs" => int(1..=64),
        _ => prop::collection::btree_map(
            prop::sample::select(vec!["optimization", "evaluation"]).prop_map(str::to_owned),
            (1i64..=4, prop::option::of(1i64..=86_400)).prop_map(|(max, timeout)| {
                let mut table = toml::Table::new();
                table.insert(
                    "command".into(),
                    toml::Value::Array(vec![toml::Value::String("python3".into())]),
                );
                table.insert("max_concurrent".into(), toml::Value::Integer(max));
                if let Some(timeout) = timeout {
                    table.insert("timeout_seconds".into(), toml::Value::Integer(timeout));
                }
                toml::Value::Table(table)
            }),
            0..3,
        )
        .prop_map(|map| toml::Value::Table(map.into_iter().collect()))
        .boxed(),
    }
}

/// A hostile value of the type `key` takes.
fn hostile_of_type(key: &str) -> BoxedStrategy<toml::Value> {
    let strings = prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "\0",
            "a\0b",
            "/",
            "..",
            "../../etc/passwd",
            ":memory:",
            "sqlite://",
            "file:?mode=ro",
            "0.0.0.0:8000",
            "[::]:1",
            "127.0.0.1:99999",
            "localhost:8000",
            "127.0.0.1",
            "JSON",
            "Text",
        ])
        .prop_map(str::to_owned),
        ".{0,30}",
        "[a-z/]{300,400}",
    ];
    match key {
        "emit_interval_ms"
        | "cache_ttl_seconds"
        | "max_body_bytes"
        | "max_concurrent_jobs"
        | "stop_grace_seconds" => prop_oneof![
            any::<i64>(),
            prop::sample::select(vec![0, 1, -1, 60_001, i64::MAX - 1, i64::MAX, i64::MIN]),
        ]
        .prop_map(toml::Value::Integer)
        .boxed(),
        "resumable_types" => prop::collection::vec(strings, 0..4)
            .prop_map(|types| {
                toml::Value::Array(types.into_iter().map(toml::Value::String).collect())
            })
            .boxed(),
        _ => strings.prop_map(toml::Value::String).boxed(),
    }
}

/// A valid configuration file, then one or two keys (known, now and then unknown) set to
/// anything, so each hostile value reaches the check that should catch it.
fn config_table() -> impl Strategy<Value = toml::Table> {
    let base = prop::sample::subsequence(KEYS.to_vec(), 0..=KEYS.len()).prop_flat_map(|keys| {
        keys.into_iter()
            .map(|key| valid_value(key).prop_map(move |value| (key, value)))
            .collect::<Vec<_>>()
    });
    let key = prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ];
    // Mostly a value of the key's own type, so it gets past deserialization to the checks.
    let value = key.prop_flat_map(|key| {
        let typed = hostile_of_type(&key);
        (Just(key), prop_oneof![2 => typed, 1 => toml_value()])
    });
    let executors = prop::collection::btree_map(
        prop_oneof![
            3 => prop::sample::select(vec!["optimization", "evaluation", "x-1"]).prop_map(str::to_owned),
            1 => ".{0,12}",
        ],
        prop_oneof![3 => executor_table(), 1 => toml_value()],
        1..3,
    )
    .prop_map(|map| toml::Value::Table(map.into_iter().collect()));
    let hostile = prop_oneof![
        3 => value,
        1 => executors.prop_map(|executors| ("executors".to_owned(), executors)),
    ];
    (base, prop::collection::vec(hostile, 1..3)).prop_map(|(base, hostile)| {
        let mut table: toml::Table = base
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        table.extend(hostile);
        table
    })
}

/// What a resolved configuration must be for the server to start, run and stop with it.
fn check_usable(config: &Config) -> Result<(), TestCaseError> {
    prop_assert!((1..=60_000).contains(&config.emit_interval.as_millis()));
    prop_assert!(config.max_concurrent_jobs >= 1);
    prop_assert!(
        config.bind.ip().is_loopback() || config.auth_token.as_ref().is_some_and(|t| !t.is_empty())
    );
    prop_assert!(config.data_dir.is_absolute());
    for job_type in &config.resumable_types {
        prop_assert_eq!(validate_job_type(job_type), Ok(()));
    }
    for (job_type, executor) in config.executors.iter().flatten() {
        prop_assert_eq!(validate_job_type(job_type), Ok(()));
        prop_assert!(
            executor
                .command
                .first()
                .is_some_and(|program| !program.is_empty())
        );
        prop_assert!(executor.max_concurrent >= 1);
        // A run's deadline is `now + timeout` (executor/child.rs).
        if let Some(seconds) = executor.timeout_seconds {
            prop_assert!(
                tokio::time::Instant::now()
                    .checked_add(Duration::from_secs(seconds))
                    .is_some(),
                "executors.{job_type}.timeout_seconds = {seconds} is accepted but overflows a run's deadline: Config::resolve must refuse it"
            );
        }
    }
    // Shutdown waits until `now + stop_grace + 10 s` (executor/mod.rs).
    prop_assert!(
        tokio::time::Instant::now()
            .checked_add(config.stop_grace + Duration::from_secs(10))
            .is_some(),
        "stop_grace {:?} is accepted but overflows the shutdown deadline: Config::resolve must refuse it",
        config.stop_grace
    );
    // The response cache is built from `cache_ttl` at start-up.
    let _ = skill_fleet_api::cache::ResponseCache::new(config.cache_ttl, 1 << 20, false);
    Ok(())
}

fn resolve_file(text: &[u8]) -> (tempfile::TempDir, Result<Config, ServerError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, text).unwrap();
    let cli =
        Cli::try_parse_from(["skill-fleet-server", "--config", path.to_str().unwrap()]).unwrap();
    let result = Config::resolve(&cli);
    (dir, result)
}

fn check_resolved(result: &Result<Config, ServerError>) -> Result<(), TestCaseError> {
    match result {
        Ok(config) => check_usable(config),
        Err(err) => {
            prop_assert!(
                matches!(err, ServerError::Config(_) | ServerError::Io { .. }),
                "not a configuration error: {err:?}"
            );
            let message = err.to_string();
            prop_assert!(message.len() > "configuration: ".len(), "{message}");
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn any_file_text_is_a_config_or_a_clear_error(text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        ".{0,200}".prop_map(String::into_bytes),
        "((bind|database|emit_interval_ms|executors|\\[executors\\.[a-z]{1,5}\\]|command|max_body_bytes) ?= ?.{0,20}\n){0,5}"
            .prop_map(String::into_bytes),
    ]) {
        let (dir, result) = resolve_file(&text);
        check_resolved(&result)?;
        // A file TOML cannot read is named in the error.
        if let Err(ServerError::Config(message)) = &result
            && std::str::from_utf8(&text).is_ok_and(|t| toml::from_str::<toml::Table>(t).is_err())
        {
            prop_assert!(message.contains(&dir.path().display().to_string()), "{message}");
        }
    }

    #[test]
    fn any_value_for_a_known_key_is_a_config_or_a_clear_error(table in config_table()) {
        let Ok(text) = toml::to_string(&table) else {
            // A table the toml crate cannot print is not a file anyone could write.
            return Ok(());
        };
        let (_dir, result) = resolve_file(text.as_bytes());
        check_resolved(&result)?;
    }

    #[test]
    fn every_number_key_takes_any_integer_or_refuses_it(
        key in prop::sample::select(vec![
            "emit_interval_ms",
            "cache_ttl_seconds",
            "max_body_bytes",
            "max_concurrent_jobs",
            "stop_grace_seconds",
            "busy_timeout_ms",
            "max_sse_connections",
            "max_history_rows_per_job",
            "executors.timeout_seconds",
            "executors.max_concurrent",
        ]),
        value in prop_oneof![
            any::<i64>(),
            prop::sample::select(vec![0, 1, -1, 60_000, 60_001, 31_536_000_001, i64::MAX - 1, i64::MAX]),
        ],
    ) {
        // One key at a time, the rest left at the defaults, so nothing else refuses first.
        let text = match key.strip_prefix("executors.") {
            Some(field) => format!("[executors.evaluation]\ncommand = [\"python3\"]\n{field} = {value}\n"),
            None => format!("{key} = {value}\n"),
        };
        let (_dir, result) = resolve_file(text.as_bytes());
        check_resolved(&result)?;
    }

    #[test]
    fn any_flags_are_a_config_or_a_clear_error(args in prop::collection::vec(
        (
            prop::sample::select(vec![
                "--bind", "--auth-token", "--emit-interval-ms", "--cache-ttl-seconds",
                "--resumable-types", "--log-format", "--data-dir", "--max-concurrent-jobs",
                "--database",
            ]),
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                prop::sample::select(vec!["0", "1", "127.0.0.1:0", "0.0.0.0:1", "json", "a,B,", ""])
                    .prop_map(str::to_owned),
                "[a-z0-9:.,_-]{0,20}",
            ],
        ),
        0..4,
    )) {
        let mut argv = vec!["skill-fleet-server".to_owned()];
        for (flag, value) in args {
            argv.push(flag.to_owned());
            argv.push(value);
        }
        // clap refuses what it cannot parse; what it takes must resolve or fail cleanly.
        if let Ok(cli) = Cli::try_parse_from(&argv) {
            check_resolved(&Config::resolve(&cli))?;
        }
    }
}
