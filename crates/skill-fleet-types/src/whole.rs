//! Whole numbers as JSON may spell them: `3` or `3.0`. JSON Schema (and so the OpenAPI
//! document, and the clients and test generators that read it) counts `3.0` as an integer;
//! serde's integer types refuse it. The `attempt` fields and `step` read through here, so a
//! value the document calls valid is one the server takes.

use serde::{Deserialize, Deserializer};

/// A whole number, written as an integer or as a float with no fraction.
#[derive(Deserialize)]
#[serde(untagged)]
enum Whole {
    Int(i64),
    Big(u64),
    Float(f64),
}

impl Whole {
    /// The value as an `i128`, or `None` for a float with a fraction (or out of range).
    fn value(self) -> Option<i128> {
        match self {
            Whole::Int(n) => Some(i128::from(n)),
            Whole::Big(n) => Some(i128::from(n)),
            Whole::Float(f) if f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
            Whole::Float(_) => None,
        }
    }
}

/// An optional `u32` written as `3` or `3.0`; absent is `None` (with `#[serde(default)]`),
/// `null` is refused: a fence's fields are given or left out, never `null`.
pub(crate) fn optional_u32<'de, D>(deserializer: D) -> Result<Option<u32>, D::Error>
where
    D: Deserializer<'de>,
{
    Some(Whole::deserialize(deserializer)?)
        .map(|whole| {
            whole
                .value()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    serde::de::Error::custom("expected a whole number from 0 to 4294967295")
                })
        })
        .transpose()
}

/// An optional string: absent is `None` (with `#[serde(default)]`), `null` is refused.
pub(crate) fn present_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    String::deserialize(deserializer).map(Some)
}

/// A `u32` written as `3` or `3.0`.
pub(crate) fn required_u32<'de, D>(deserializer: D) -> Result<u32, D::Error>
where
    D: Deserializer<'de>,
{
    Whole::deserialize(deserializer)?
        .value()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| serde::de::Error::custom("expected a whole number from 0 to 4294967295"))
}

/// Below this magnitude a float that reads whole was written whole: a fraction would have been
/// kept (`2^52 + 0.5` rounds to `2^52`).
const EXACT_FRACTIONS: f64 = 4_503_599_627_370_496.0;

/// The whole number a float spells (`3.0`), or `None` for a fraction, or a float too large to
/// tell a fraction from a whole number (2^52 and beyond: write those as integers).
pub(crate) fn whole_i64(value: f64) -> Option<i64> {
    if value.abs() >= EXACT_FRACTIONS {
        return None;
    }
    Whole::Float(value)
        .value()
        .and_then(|n| i64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "optional_u32")]
        attempt: Option<u32>,
    }

    fn attempt(json: &str) -> Result<Option<u32>, serde_json::Error> {
        serde_json::from_str::<Body>(json).map(|body| body.attempt)
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        assert_eq!(attempt("{}").unwrap(), None);
        assert!(attempt(r#"{"attempt": null}"#).is_err());
        assert_eq!(attempt(r#"{"attempt": 3}"#).unwrap(), Some(3));
        assert_eq!(attempt(r#"{"attempt": 3.0}"#).unwrap(), Some(3));
        assert_eq!(
            attempt(r#"{"attempt": 4294967295}"#).unwrap(),
            Some(u32::MAX)
        );
        for bad in ["3.5", "-1", "4294967296", "\"3\"", "1e40"] {
            assert!(
                attempt(&format!(r#"{{"attempt": {bad}}}"#)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(whole_i64(7.0), Some(7));
        assert_eq!(whole_i64(7.5), None);
        assert_eq!(whole_i64(EXACT_FRACTIONS), None);
    }
}
