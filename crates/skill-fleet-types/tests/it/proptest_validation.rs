//! Property tests of the wire validators and request bodies: arbitrary input never panics,
//! gets a clear error, and valid values are accepted and survive a serde round trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Map, Value, json};
use skill_fleet_types::{
    CancelRequest, ClaimRequest, CompleteRequest, CreateJob, DEFAULT_BUDGET_WARNING_FRACTION,
    ErrorBody, FailRequest, JobLimits, JobStatus, MAX_ID_LEN, MAX_METADATA_BYTES, ProgressUpdate,
    ValidationError, validate_cost, validate_job_id, validate_job_type, validate_metadata,
    validate_metric, validate_progress,
};

/// Seed of the generated cases.
const SEED: u64 = 0x5eed0001;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        // The same cases every run (`PROPTEST_RNG_SEED` explores others).
        rng_seed: match Config::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..Config::default()
    }
}

/// Any JSON value, a few levels deep, with hostile leaves (huge, tiny, negative numbers).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("json has no nan or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object whose keys are mostly the ones a parser looks for.
fn json_object(keys: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    object_of(keys, json_value())
}

fn object_of(
    keys: &'static [&'static str],
    values: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => ".{0,10}",
    ];
    prop::collection::btree_map(key, values, 0..6).prop_map(|map| map.into_iter().collect())
}

/// A decimal of at most 15 significant digits below 10^14: serde_json without its
/// `float_roundtrip` feature (as this workspace builds it) reads such a number back exactly.
/// Longer ones may come back one unit in the last place off: `3.761727867704759e298`,
/// `0.17740830010734499`, and even the whole number `-3919364651302330.0` (printed with a
/// trailing `.0`, it has 17 digits).
fn short_decimal() -> impl Strategy<Value = f64> {
    (-999_999_999_999_999i64..=999_999_999_999_999, -15i32..=-1)
        .prop_map(|(mantissa, exponent)| format!("{mantissa}e{exponent}").parse::<f64>().unwrap())
}

/// Like [`json_value`], with numbers that survive a text round trip.
fn round_trip_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        short_decimal().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Numbers with the edges that break range checks.
fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::EPSILON,
            1.0 + f64::EPSILON,
            f64::MAX,
            f64::MIN,
            5e-324,
        ]),
        -2.0..2.0f64,
    ]
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn type_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// What an error message may be at most: the value is shown cut to a bounded length, so a
/// 10 KB id never makes a 10 KB message.
const MAX_MESSAGE_BYTES: usize = 512;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_ids_match_exactly_the_documented_set(id in prop_oneof![
        ".{0,80}",
        "[A-Za-z0-9_-]{0,70}",
        prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]) {
        let expected = (1..=MAX_ID_LEN).contains(&id.len()) && id.chars().all(id_char);
        match validate_job_id(&id) {
            Ok(()) => prop_assert!(expected, "accepted {id:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {id:?}");
                prop_assert!(matches!(err, ValidationError::JobId(_)));
                let message = err.to_string();
                prop_assert!(message.starts_with("invalid job id"), "{message}");
                prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
            }
        }
    }

    #[test]
    fn valid_by_construction_ids_are_accepted(id in "[A-Za-z0-9_-]{1,64}") {
        prop_assert_eq!(validate_job_id(&id), Ok(()));
    }

    #[test]
    fn one_foreign_char_or_a_wrong_length_refuses_an_id(
        id in "[A-Za-z0-9_-]{1,64}",
        bad in any::<char>().prop_filter("outside the id set", |c| !id_char(*c)),
        at in any::<prop::sample::Index>(),
        long in "[A-Za-z0-9_-]{65,300}",
    ) {
        let mut chars: Vec<char> = id.chars().collect();
        let index = at.index(chars.len() + 1);
        chars.insert(index, bad);
        let with_bad: String = chars.into_iter().collect();
        prop_assert!(validate_job_id(&with_bad).is_err(), "{with_bad:?}");
        prop_assert!(validate_job_id(&long).is_err());
        prop_assert!(validate_job_id("").is_err());
        let huge = id.repeat(10_000 / id.len() + 1);
        let message = validate_job_id(&huge).unwrap_err().to_string();
        prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
    }

    #[test]
    fn job_types_match_exactly_the_documented_set(job_type in prop_oneof![
        ".{0,80}",
        "[A-Za-z0-9_.-]{0,70}",
    ]) {
        let expected =
            (1..=MAX_ID_LEN).contains(&job_type.len()) && job_type.chars().all(type_char);
        match validate_job_type(&job_type) {
            Ok(()) => prop_assert!(expected, "accepted {job_type:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {job_type:?}");
                let message = err.to_string();
                prop_assert!(message.starts_with("invalid job type"), "{message}");
                prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
            }
        }
    }

    #[test]
    fn valid_types_are_accepted_and_foreign_chars_refused(
        job_type in "[a-z0-9_-]{1,64}",
        bad in any::<char>().prop_filter("outside the type set", |c| !type_char(*c)),
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert_eq!(validate_job_type(&job_type), Ok(()));
        let mut chars: Vec<char> = job_type.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let with_bad: String = chars.into_iter().collect();
        prop_assert!(validate_job_type(&with_bad).is_err(), "{with_bad:?}");
    }

    #[test]
    fn metadata_is_refused_exactly_when_too_large(
        metadata in json_object(&["model", "budget_usd"]),
        padding in prop::option::of(MAX_METADATA_BYTES - 64..MAX_METADATA_BYTES + 64),
    ) {
        let mut metadata = metadata;
        if let Some(padding) = padding {
            metadata.insert("blob".to_owned(), Value::from("x".repeat(padding)));
        }
        let size = Value::Object(metadata.clone()).to_string().len();
        match validate_metadata(&metadata) {
            Ok(()) => prop_assert!(size <= MAX_METADATA_BYTES),
            Err(err) => {
                prop_assert_eq!(err.clone(), ValidationError::MetadataTooLarge(size));
                prop_assert!(err.to_string().starts_with("metadata is "));
            }
        }
    }

    #[test]
    fn numbers_are_checked_against_their_ranges(value in hostile_f64()) {
        prop_assert_eq!(validate_progress(value).is_ok(), (0.0..=1.0).contains(&value));
        prop_assert_eq!(validate_cost(value).is_ok(), value.is_finite() && value >= 0.0);
        prop_assert_eq!(validate_metric(value).is_ok(), value.is_finite());
    }

    #[test]
    fn limits_are_read_or_refused_with_the_field_named(
        metadata in json_object(&["budget_usd", "budget_warning_fraction", "time_limit_seconds"]),
    ) {
        let positive = |field: &str, max: f64| match metadata.get(field) {
            None | Some(Value::Null) => Some(None),
            Some(value) => value
                .as_f64()
                .filter(|n| n.is_finite() && *n > 0.0 && *n <= max)
                .map(Some),
        };
        let expected = (|| {
            Some(JobLimits {
                budget_usd: positive("budget_usd", f64::MAX)?,
                budget_warning_fraction: positive("budget_warning_fraction", 1.0)?
                    .unwrap_or(DEFAULT_BUDGET_WARNING_FRACTION),
                time_limit_seconds: positive("time_limit_seconds", f64::MAX)?,
            })
        })();
        match JobLimits::from_metadata(&metadata) {
            Ok(limits) => prop_assert_eq!(Some(limits), expected),
            Err(err) => {
                prop_assert!(expected.is_none(), "refused {metadata:?}: {err}");
                let ValidationError::Limit { field, .. } = &err else {
                    return Err(TestCaseError::fail(format!("wrong error {err:?}")));
                };
                prop_assert!(metadata.contains_key(*field));
                let prefix = format!("metadata `{field}`");
                prop_assert!(err.to_string().starts_with(&prefix), "{err}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_body_parser(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<CreateJob>(&bytes);
        let _ = serde_json::from_slice::<ClaimRequest>(&bytes);
        let _ = serde_json::from_slice::<CompleteRequest>(&bytes);
        let _ = serde_json::from_slice::<FailRequest>(&bytes);
        let _ = serde_json::from_slice::<CancelRequest>(&bytes);
        let _ = serde_json::from_slice::<ErrorBody>(&bytes);
        if let Ok(update) = serde_json::from_slice::<ProgressUpdate>(&bytes) {
            let _ = update.validate();
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = text.parse::<JobStatus>();
    }

    #[test]
    fn arbitrary_json_objects_parse_or_fail_cleanly(
        object in json_object(&["type", "id", "metadata", "step", "progress", "cost_usd",
            "metric", "message", "checkpoint", "reason", "types", "result", "result_path", "error"]),
    ) {
        let value = Value::Object(object.clone());
        let text = value.to_string();
        // Unknown fields are refused by every request body.
        let create = serde_json::from_str::<CreateJob>(&text);
        if let Ok(create) = &create {
            prop_assert!(object.keys().all(|k| ["type", "id", "metadata"].contains(&k.as_str())));
            if let Some(metadata) = &create.metadata {
                let _ = validate_metadata(metadata);
                let _ = JobLimits::from_metadata(metadata);
            }
            let _ = validate_job_type(&create.job_type);
            if let Some(id) = &create.id {
                let _ = validate_job_id(id);
            }
        }
        match serde_json::from_str::<ProgressUpdate>(&text) {
            Ok(update) => {
                prop_assert!(object.keys().all(|k| ["step", "progress", "cost_usd", "metric",
                    "message", "checkpoint"].contains(&k.as_str())));
                // A validated update only carries numbers inside their ranges.
                if update.validate().is_ok() {
                    prop_assert!(update.progress.is_none_or(|p| (0.0..=1.0).contains(&p)));
                    prop_assert!(update.cost_usd.is_none_or(|c| c.is_finite() && c >= 0.0));
                    prop_assert!(update.metric.is_none_or(f64::is_finite));
                }
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
        if let Ok(cancel) = serde_json::from_str::<CancelRequest>(&text) {
            prop_assert!(object.keys().all(|k| k == "reason"));
            prop_assert_eq!(cancel.reason.is_some(), object.get("reason").is_some_and(Value::is_string));
        }
        let _ = serde_json::from_str::<ClaimRequest>(&text);
        let _ = serde_json::from_str::<CompleteRequest>(&text);
        let _ = serde_json::from_str::<FailRequest>(&text);
    }

    #[test]
    fn whole_number_steps_are_their_digits(n in any::<i64>(), big in (i64::MAX as u64 + 1)..=u64::MAX) {
        let update: ProgressUpdate = serde_json::from_value(json!({"step": n})).unwrap();
        prop_assert_eq!(update.step, Some(n.to_string()));
        // Outside i64, or not whole: refused, not truncated.
        let too_big = json!({"step": big});
        prop_assert!(serde_json::from_value::<ProgressUpdate>(too_big).is_err(), "{big}");
        let fractional = json!({"step": n as f64 + 0.5});
        prop_assert!(serde_json::from_value::<ProgressUpdate>(fractional).is_err(), "{n}");
    }

    #[test]
    fn valid_bodies_survive_a_round_trip(
        job_type in "[a-z0-9_-]{1,64}",
        id in prop::option::of("[A-Za-z0-9_-]{1,64}"),
        metadata in prop::option::of(object_of(&["model", "budget_usd"], round_trip_value())),
        step in prop::option::of(".{0,20}"),
        progress in prop::option::of((0..=1_000_000_000_000_000u64)
            .prop_map(|n| format!("{n}e-15").parse::<f64>().unwrap())),
        cost_usd in prop::option::of(short_decimal().prop_map(f64::abs)),
        metric in prop::option::of(short_decimal()),
        message in prop::option::of(".{0,40}"),
        // `Some(null)` is sent as `null`, which reads back as no checkpoint (the same thing).
        checkpoint in prop::option::of(round_trip_value().prop_filter("not null", |v| !v.is_null())),
        reason in prop::option::of(".{0,40}"),
    ) {
        let create = CreateJob { job_type, metadata, id };
        let back: CreateJob = serde_json::from_str(&serde_json::to_string(&create).unwrap()).unwrap();
        prop_assert_eq!(back, create);

        let update = ProgressUpdate {
            step, progress, cost_usd, metric, message, checkpoint, ..ProgressUpdate::default()
        };
        prop_assert_eq!(update.validate(), Ok(()));
        let back: ProgressUpdate = serde_json::from_str(&serde_json::to_string(&update).unwrap()).unwrap();
        prop_assert_eq!(back.validate(), Ok(()));
        prop_assert_eq!(back, update);

        let cancel = CancelRequest { reason };
        let back: CancelRequest = serde_json::from_str(&serde_json::to_string(&cancel).unwrap()).unwrap();
        prop_assert_eq!(back, cancel);
    }

    #[test]
    fn statuses_parse_only_from_their_names(text in prop_oneof![
        ".{0,12}",
        prop::sample::select(JobStatus::ALL.to_vec()).prop_map(|s| s.as_str().to_owned()),
    ]) {
        match text.parse::<JobStatus>() {
            Ok(status) => prop_assert_eq!(status.as_str(), text.as_str()),
            Err(err) => {
                prop_assert!(JobStatus::ALL.iter().all(|s| s.as_str() != text));
                prop_assert!(err.to_string().starts_with("unknown job status"));
            }
        }
    }
}
