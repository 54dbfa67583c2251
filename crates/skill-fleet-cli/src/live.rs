//! Following a job live: a progress bar on a terminal, plain lines otherwise, JSON lines
//! with `--json`; the final line and the exit code from the job's outcome; Ctrl-C stops
//! watching without touching the job.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use skill_fleet_client::{Client, WatchOptions};
use skill_fleet_types::{JobStatus, StreamEvent};

use crate::context::{out, out_json};
use crate::error::{CliError, code};
use crate::format;

/// Watches `job_id` until it ends; returns the exit code (0 completed, 1 failed or
/// cancelled, 130 stopped with Ctrl-C).
pub fn follow(
    client: &Client,
    job_id: &str,
    json: bool,
    reconnect_for: Duration,
) -> Result<u8, CliError> {
    let client = client.clone().with_watch_options(WatchOptions {
        reconnect_for,
        ..WatchOptions::default()
    });
    let mut watch = client.watch(job_id)?;
    let stop = watch.stop_handle();
    // Only one handler per process; if one is already set, Ctrl-C keeps its default.
    let _ = ctrlc::set_handler(move || stop.stop());

    let mut view = View::new(json, std::io::stderr().is_terminal());
    let mut last: Option<StreamEvent> = None;
    for item in &mut watch {
        let event = match item {
            Ok(event) => event,
            Err(err) => {
                view.abandon();
                return Err(err.into());
            }
        };
        let repeated = last.as_ref().and_then(|l| l.message.as_deref()) == event.message.as_deref();
        if let Err(err) = view.show(&event, !repeated) {
            view.abandon();
            return Err(err);
        }
        last = Some(event);
    }
    view.finish();
    if watch.was_stopped() {
        eprintln!(
            "stopped watching; the job keeps running. Re-attach with: skill-fleet jobs watch {job_id}"
        );
        return Ok(code::INTERRUPTED);
    }
    let Some(last) = last.filter(|event| event.status.is_terminal()) else {
        return Err(CliError::Client(skill_fleet_client::ClientError::Stream {
            job_id: job_id.to_owned(),
            url: client.base_url().to_owned(),
            reason: "the stream ended before the job did".to_owned(),
        }));
    };
    if !json {
        let error = match &last.message {
            Some(message) => Some(message.clone()),
            None if last.status != JobStatus::Completed => {
                client.job(job_id).ok().and_then(|job| job.value.error)
            }
            None => None,
        };
        if let Some(line) =
            format::final_line(last.status, last.metric, last.cost_usd, error.as_deref())
        {
            out(line)?;
        }
    }
    Ok(match last.status {
        JobStatus::Completed => code::OK,
        _ => code::FAILED,
    })
}

/// How states are shown.
enum View {
    /// One JSON object per state on stdout.
    Json,
    /// A line on stdout whenever the visible line changes.
    Lines { last: Option<String> },
    /// An updating bar on stderr.
    Bar(ProgressBar),
}

impl View {
    fn new(json: bool, terminal: bool) -> View {
        if json {
            return View::Json;
        }
        if !terminal {
            return View::Lines { last: None };
        }
        let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {wide_msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        View::Bar(bar)
    }

    fn show(&mut self, event: &StreamEvent, new_message: bool) -> Result<(), CliError> {
        // The server's budget warning (`budget 80% used: $1.62 of $2.00`) gets a line of
        // its own, whatever the view, so it is not lost in a progress bar.
        if let Some(warning) = event
            .message
            .as_deref()
            .filter(|m| new_message && is_budget_warning(m))
        {
            match self {
                View::Bar(bar) => bar.println(format!("warning: {warning}")),
                View::Lines { .. } => eprintln!("warning: {warning}"),
                View::Json => {}
            }
        }
        match self {
            View::Json => out_json(event),
            // The final line says how a job ended; no progress line for that state.
            View::Lines { .. } if event.status.is_terminal() => Ok(()),
            View::Lines { last } => {
                let line = format::progress_line(event);
                if last.as_deref() != Some(line.as_str()) {
                    out(&line)?;
                    *last = Some(line);
                }
                Ok(())
            }
            View::Bar(bar) => {
                bar.set_position((event.progress.clamp(0.0, 1.0) * 100.0).floor() as u64);
                bar.set_message(bar_message(event));
                Ok(())
            }
        }
    }

    fn finish(&mut self) {
        if let View::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }

    fn abandon(&mut self) {
        self.finish();
    }
}

/// `Proposing instructions... $0.85 · metric 0.81 · ETA 5m30s`.
fn bar_message(event: &StreamEvent) -> String {
    let mut text = format!(
        "{} {}",
        format::activity(event.status, event.step.as_deref()),
        format::dollars(event.cost_usd)
    );
    if let Some(metric) = event.metric {
        text.push_str(&format!(" · metric {}", format::metric(metric)));
    }
    if let Some(eta) = event.eta_seconds {
        text.push_str(&format!(" · ETA {}", format::eta(eta)));
    }
    text
}

/// Whether a stream message is the server's budget warning.
fn is_budget_warning(message: &str) -> bool {
    message.starts_with("budget ") && message.contains("% used: $")
}
