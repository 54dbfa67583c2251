//! Parsers for argument values: durations (`90s`, `30m`, `1h30m`) and `KEY=VALUE` metadata.

use std::time::Duration;

use serde_json::Value;

/// Parses a duration: one or more `<number><unit>` parts with units `s`, `m`, `h`, `d`
/// (`90s`, `30m`, `1h30m`, `2d`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: expected e.g. 90s, 30m, 1h or 1h30m".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let invalid = || format!("invalid duration `{text}`: expected e.g. 90s, 30m, 1h or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = u64::MAX;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid()),
        };
        // Units must come largest first, each once: `1h30m`, not `30m1h` or `1m1m`.
        if digits.is_empty() || unit >= last_unit {
            return Err(invalid());
        }
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        digits.clear();
        last_unit = unit;
    }
    if !digits.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Like [`parse_duration`], but refuses zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("duration `{}` must be more than zero", text.trim()));
    }
    Ok(duration)
}

/// One `--metadata KEY=VALUE` pair. A value that parses as a JSON number or boolean is kept
/// as one; anything else is a string.
pub fn parse_metadata_pair(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid metadata `{text}`: expected KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("invalid metadata `{text}`: the key is empty"));
    }
    let value = match serde_json::from_str::<Value>(value.trim()) {
        Ok(parsed @ (Value::Number(_) | Value::Bool(_))) => parsed,
        _ => Value::String(value.to_owned()),
    };
    Ok((key.to_owned(), value))
}

/// A budget or target: a finite number (`--budget` also refuses negatives).
pub fn parse_budget(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("invalid amount `{text}`: expected a number of US dollars"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("budget must be more than 0 dollars, got `{text}`"));
    }
    Ok(value)
}

/// An artifact name: one plain file name (`program.json`), never a path.
pub fn parse_artifact_name(text: &str) -> Result<String, String> {
    skill_fleet_types::validate_artifact_name(text)
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
}

/// A finite number.
pub fn parse_finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(format!("invalid number `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse() {
        let cases = [
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h30m15s", 5415),
            ("2d", 172_800),
            ("45", 45),
            (" 10m ", 600),
            ("0s", 0),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for bad in [
            "",
            "h",
            "1x",
            "1.5h",
            "30m1h",
            "1m1m",
            "m30",
            "-5s",
            "1h 30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn metadata_values_keep_numbers_and_booleans() {
        let cases = [
            ("seed=42", json!(42)),
            ("temperature=0.7", json!(0.7)),
            ("dry_run=true", json!(true)),
            ("name=miprov2", json!("miprov2")),
            ("empty=", json!("")),
            ("url=http://x/?a=b", json!("http://x/?a=b")),
            ("zip=007", json!("007")),
            ("nothing=null", json!("null")),
            ("list=[1,2]", json!("[1,2]")),
        ];
        for (text, value) in cases {
            let (key, parsed) = parse_metadata_pair(text).unwrap();
            assert_eq!(key, text.split('=').next().unwrap());
            assert_eq!(parsed, value, "{text}");
        }
        assert!(parse_metadata_pair("novalue").is_err());
        assert!(parse_metadata_pair("=x").is_err());
    }

    #[test]
    fn amounts_parse() {
        assert_eq!(parse_budget("2.5"), Ok(2.5));
        assert_eq!(parse_budget("$2"), Ok(2.0));
        assert!(parse_budget("0").is_err() && parse_budget("-1").is_err());
        assert!(parse_budget("inf").is_err() && parse_budget("two").is_err());
        assert_eq!(parse_finite("0.9"), Ok(0.9));
        assert!(parse_finite("NaN").is_err());
    }
}
