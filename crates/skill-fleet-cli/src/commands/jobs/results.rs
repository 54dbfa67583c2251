//! `skill-fleet jobs results ID`: a completed job's result; when it names one of the job's
//! artifacts, its URL and the command that downloads it.

use skill_fleet_types::result_artifact;

use crate::context::{Context, note_cached, out, out_json};
use crate::error::{CliError, code};

/// Runs `jobs results`.
pub fn run(ctx: &Context, id: &str) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let fetched = client.result(id)?;
    note_cached(fetched.from_cache);
    let body = fetched.value;
    if ctx.json() {
        out_json(&body)?;
        return Ok(code::OK);
    }
    if let Some(result) = &body.result {
        let text = serde_json::to_string_pretty(result)
            .map_err(|err| CliError::Output(std::io::Error::other(err)))?;
        out(text)?;
    }
    if let Some(path) = &body.result_path {
        out(format!("result_path: {path}"))?;
    }
    if let Some(url) = &body.result_url {
        // The server gives the path; the full URL is what a browser or curl takes.
        let url = if url.starts_with('/') {
            format!("{}{url}", client.base_url())
        } else {
            url.clone()
        };
        out(format!("result_url:  {url}"))?;
        if let Some(name) = body.result_path.as_deref().and_then(result_artifact) {
            out(format!(
                "download:    skill-fleet jobs artifacts {} {name}",
                body.job_id
            ))?;
        }
    }
    if body.result.is_none() && body.result_path.is_none() {
        out(format!("job {} completed without a result", body.job_id))?;
    }
    Ok(code::OK)
}
