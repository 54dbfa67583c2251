//! The command line: global options and the command tree (clap derive).

use clap::{Args, Parser, Subcommand};

use crate::commands::{cache, jobs, optimize};

/// Exit codes, as `--help` and the README document them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success; for watch and optimize --watch: the job completed
  1    the job failed or was cancelled, or the server refused the request
  2    usage error (bad arguments or values)
  3    the server cannot be reached
  130  stopped watching with Ctrl-C (the job keeps running)";

/// `skill-fleet`: start, list, inspect and watch jobs on a skill-fleet server.
#[derive(Debug, Parser)]
#[command(name = "skill-fleet", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "SKILL_FLEET_URL",
        default_value = skill_fleet_client::DEFAULT_SERVER_URL,
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token, when the server requires one (else `SKILL_FLEET_AUTH_TOKEN`, the
    /// server's own variable, is used).
    #[arg(
        long,
        global = true,
        env = "SKILL_FLEET_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Do not read or write the local response cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, inspect, cancel, resume and watch jobs.
    Jobs {
        /// Which jobs command.
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Start an optimization job (and follow it with --watch).
    Optimize(optimize::OptimizeArgs),
    /// Manage the local response cache.
    Cache {
        /// Which cache command.
        #[command(subcommand)]
        command: CacheCommand,
    },
}

/// `skill-fleet jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List(jobs::list::ListArgs),
    /// Show one job.
    Show(JobIdArg),
    /// Show a completed job's result.
    Results(JobIdArg),
    /// Cancel a job (a running job's process is stopped).
    Cancel(jobs::cancel::CancelArgs),
    /// Queue a failed, cancelled or interrupted job again.
    Resume(JobIdArg),
    /// Show a job's output lines.
    Logs(JobIdArg),
    /// Follow a job's live progress until it ends.
    Watch(jobs::watch::WatchArgs),
    /// List a job's artifacts, or download one (resumable, checked against its SHA-256).
    Artifacts(jobs::artifacts::ArtifactsArgs),
}

/// A job id argument.
#[derive(Debug, Args)]
pub struct JobIdArg {
    /// The job's id.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `skill-fleet cache …`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Show the cache directory, its entries and their size.
    Stats,
    /// Remove every cached response.
    Clear,
    /// Remove cached responses not used for a while.
    Prune(cache::PruneArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in ["0 ", "1 ", "2 ", "3 ", "130"] {
            assert!(help.contains(&format!("  {code}")), "{help}");
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["skill-fleet", "jobs", "list", "--json", "--no-cache"]).unwrap();
        assert!(cli.global.json && cli.global.no_cache);
        let cli = Cli::try_parse_from(["skill-fleet", "--json", "jobs", "show", "abc"]).unwrap();
        assert!(cli.global.json);
    }
}
