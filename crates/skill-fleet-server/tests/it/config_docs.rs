//! docs/CONFIG.md lists exactly the options the server has: the flag, environment variable
//! and TOML key of each row of its options table are those of the one definition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use skill_fleet_server::config::{OptionNames, option_names};

/// `` `--log-format text\|json` `` → `--log-format`; `` `[executors.TYPE]` `` → `executors`;
/// `—` → none.
fn name_in(cell: &str) -> Option<String> {
    let cell = cell.trim();
    if cell == "—" || cell.is_empty() {
        return None;
    }
    let inner = cell.trim_matches('`');
    let first = inner.split_whitespace().next()?;
    let name = first
        .trim_start_matches('[')
        .split(['.', ']'])
        .next()
        .unwrap_or(first);
    Some(name.to_owned())
}

/// The rows of the table whose header starts `| flag | environment | TOML key |`.
fn documented_options(markdown: &str) -> Vec<OptionNames> {
    let mut lines = markdown
        .lines()
        .skip_while(|line| !line.starts_with("| flag | environment | TOML key |"));
    assert!(lines.next().is_some(), "CONFIG.md has no options table");
    lines
        .skip(1) // |---|
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            // `\|` inside a cell is a literal bar, not a column.
            let line = line.replace("\\|", "/");
            let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
            assert!(cells.len() >= 3, "a short row: {line}");
            OptionNames {
                flag: name_in(cells[0]),
                env: name_in(cells[1]),
                key: name_in(cells[2]),
            }
        })
        .collect()
}

#[test]
fn config_md_lists_exactly_the_options_of_the_server() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md");
    let markdown = std::fs::read_to_string(path).expect("read docs/CONFIG.md");
    let documented = documented_options(&markdown);
    let documented_set: BTreeSet<OptionNames> = documented.iter().cloned().collect();
    assert_eq!(
        documented.len(),
        documented_set.len(),
        "a row is listed twice"
    );
    let actual: BTreeSet<OptionNames> = option_names().into_iter().collect();
    let missing: Vec<_> = actual.difference(&documented_set).collect();
    let extra: Vec<_> = documented_set.difference(&actual).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/CONFIG.md is out of step with the server's options:\n  not documented: {missing:?}\n  documented but not options (or under other names): {extra:?}"
    );
}

#[test]
fn the_table_parser_reads_each_kind_of_cell() {
    assert_eq!(
        name_in(" `--log-format text/json` "),
        Some("--log-format".to_owned())
    );
    assert_eq!(name_in("`[executors.TYPE]`"), Some("executors".to_owned()));
    assert_eq!(
        name_in("`SKILL_FLEET_BIND`"),
        Some("SKILL_FLEET_BIND".to_owned())
    );
    assert_eq!(name_in(" — "), None);
    let rows = documented_options(
        "x\n| flag | environment | TOML key | default |\n|---|---|---|---|\n| `--a N` | `SKILL_FLEET_A` | `a` | 1 |\n| — | — | `[t.X]` | y \\| z |\n\nafter\n| flag | other |\n",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].key.as_deref(), Some("t"));
    assert_eq!(rows[1].flag, None);
}
