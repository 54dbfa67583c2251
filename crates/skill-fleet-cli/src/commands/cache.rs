//! `skill-fleet cache stats | clear | prune`: the local response cache.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use skill_fleet_client::{Cache, CacheStats};

use crate::context::{Context, out, out_json};
use crate::error::{CliError, code};
use crate::parse::parse_duration;

/// Options of `cache prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove entries not stored or revalidated for this long (e.g. 30m, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "7d")]
    pub older_than: Duration,
}

fn cache() -> Result<Cache, CliError> {
    Cache::from_env().ok_or_else(|| {
        CliError::Usage(format!(
            "no cache directory: set {} or HOME",
            skill_fleet_client::CACHE_DIR_ENV
        ))
    })
}

/// Runs `cache stats`.
pub fn stats(ctx: &Context) -> Result<u8, CliError> {
    let cache = cache()?;
    let stats = cache.stats()?;
    if ctx.json() {
        out_json(&json!({
            "directory": cache.dir(),
            "entries": stats.entries,
            "bytes": stats.bytes,
        }))?;
    } else {
        out(format!("directory: {}", cache.dir().display()))?;
        out(format!("entries:   {}", stats.entries))?;
        out(format!("bytes:     {}", stats.bytes))?;
    }
    Ok(code::OK)
}

/// Runs `cache clear`.
pub fn clear(ctx: &Context) -> Result<u8, CliError> {
    let cache = cache()?;
    let removed = cache.clear()?;
    report(ctx, &cache, removed)
}

/// Runs `cache prune`.
pub fn prune(ctx: &Context, args: &PruneArgs) -> Result<u8, CliError> {
    let cache = cache()?;
    let removed = cache.prune(args.older_than)?;
    report(ctx, &cache, removed)
}

fn report(ctx: &Context, cache: &Cache, removed: CacheStats) -> Result<u8, CliError> {
    if ctx.json() {
        out_json(&json!({
            "directory": cache.dir(),
            "removed_entries": removed.entries,
            "removed_bytes": removed.bytes,
        }))?;
    } else {
        out(format!(
            "removed {} entries ({} bytes) from {}",
            removed.entries,
            removed.bytes,
            cache.dir().display()
        ))?;
    }
    Ok(code::OK)
}
