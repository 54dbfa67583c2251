//! `skill-fleet jobs results ID`: a completed job's result.

use crate::context::{Context, note_cached, out, out_json};
use crate::error::{CliError, code};

/// Runs `jobs results`.
pub fn run(ctx: &Context, id: &str) -> Result<u8, CliError> {
    let fetched = ctx.client()?.result(id)?;
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
    if body.result.is_none() && body.result_path.is_none() {
        out(format!("job {} completed without a result", body.job_id))?;
    }
    Ok(code::OK)
}
