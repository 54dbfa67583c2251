//! What a section found: rows of measured value, baseline, ratio and goal, printed as a
//! Markdown table and written to the JSON report.

use serde_json::{Value, json};

/// One measured number, with its baseline and goal when it has them.
#[derive(Debug, Clone)]
pub struct Row {
    pub measure: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    /// The goal in words (`≥ 0.50× baseline`) and whether it was met.
    pub goal: Option<(String, bool)>,
}

impl Row {
    pub fn new(measure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            measure: measure.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            goal: None,
        }
    }

    pub fn baseline(mut self, baseline: f64, ratio: f64) -> Row {
        self.baseline = Some(baseline);
        self.ratio = Some(ratio);
        self
    }

    pub fn goal(mut self, text: impl Into<String>, met: bool) -> Row {
        self.goal = Some((text.into(), met));
        self
    }
}

/// The result of one section.
#[derive(Debug, Default)]
pub struct Section {
    pub key: &'static str,
    pub title: String,
    pub rows: Vec<Row>,
    /// How it was measured, what to keep in mind.
    pub notes: Vec<String>,
    /// Raw numbers for the JSON report.
    pub data: Value,
}

fn number(value: f64, unit: &str) -> String {
    let digits = if value == 0.0 || value.abs() >= 100.0 {
        0
    } else if value.abs() >= 10.0 {
        1
    } else if value.abs() >= 0.1 {
        2
    } else {
        3
    };
    let text = format!("{value:.digits$}");
    if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    }
}

impl Section {
    pub fn print(&self) {
        println!("\n### {} (`{}`)\n", self.title, self.key);
        println!("| measure | value | baseline | ratio | goal | met |");
        println!("|---|---:|---:|---:|---|---|");
        for row in &self.rows {
            let baseline = row
                .baseline
                .map_or_else(|| "".to_owned(), |b| number(b, row.unit));
            let ratio = row.ratio.map_or_else(String::new, |r| format!("{r:.3}×"));
            let (goal, met) = match &row.goal {
                Some((text, met)) => (text.as_str(), if *met { "met" } else { "**missed**" }),
                None => ("", ""),
            };
            println!(
                "| {} | {} | {baseline} | {ratio} | {goal} | {met} |",
                row.measure,
                number(row.value, row.unit)
            );
        }
        for note in &self.notes {
            println!("\n- {note}");
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "title": self.title,
            "rows": self.rows.iter().map(|row| json!({
                "measure": row.measure,
                "value": row.value,
                "unit": row.unit,
                "baseline": row.baseline,
                "ratio": row.ratio,
                "goal": row.goal.as_ref().map(|g| &g.0),
                "met": row.goal.as_ref().map(|g| g.1),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "data": self.data,
        })
    }
}
