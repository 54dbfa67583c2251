//! Start-up, serving and graceful shutdown, plus the `init-db` and `db status` subcommands.
//!
//! Start-up order: take the database's lock (`<database>.lock`: one server per SQLite file;
//! a second one fails here, before it touches a row), open the store (runs migrations),
//! import legacy jobs if configured, take a new boot epoch (this run's number), on SQLite
//! rescue the jobs an earlier run left `running` (one mechanism with the lease sweep, which
//! then runs every `rescue_interval`; on PostgreSQL other servers' jobs are alive, and the
//! sweep takes back what expired), seed the hub with running jobs, start the cluster feed
//! (PostgreSQL), then listen, write the address into the lock file (and, with
//! `retention_days`, prune old finished jobs). On SIGINT/SIGTERM: stop accepting, end every
//! SSE stream, write pending progress, tell the other servers, exit 0; the lock is released
//! when the process exits.

use std::io::Write;

use skill_fleet_api::{ApiConfig, AppState};
use skill_fleet_core::{ClusterSettings, JobService, RescueSettings};
use skill_fleet_jobs::{
    DatabaseOwner, JobStore, LeasePolicy, Ownership, RescuePolicy, RescueScope, StoreError,
};
use skill_fleet_stream::{Hub, HubConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::ServerError;
use crate::executor::{Executor, ExecutorSettings, ExecutorSpec};

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServerError> {
    serve_until(config, wait_for_signal(), |addr| {
        // One machine-readable line on stdout, for scripts and tests that bind port 0.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on http://{addr}");
        let _ = stdout.flush();
    })
    .await
}

/// Runs the server until `stop` completes, then shuts down as on SIGTERM; `on_listening`
/// gets the bound address once connections are accepted. For a server inside a process that
/// is not its own (the CLI's tests run one on a thread).
pub async fn serve_until(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServerError> {
    // Before anything reads or writes the database: recovery would requeue the jobs another
    // server is running.
    // Checked before anything else: a bad tokens file stops the server at once.
    let tokens = crate::tokens::live(config.auth_token.as_ref(), config.tokens_file.as_deref())?;
    let mut owner = take_database(&config.database, SERVER_PROGRAM)?;
    let specs = executor_specs(&config)?;
    let store = open_store(&config.database, store_options(&config)).await?;
    if let Some(path) = config.legacy_import.clone() {
        let store = store.clone();
        let report = blocking(move || store.import_legacy(&path)).await?;
        tracing::info!(
            imported = report.imported,
            skipped = report.skipped,
            failed = report.failed,
            "legacy import"
        );
    }
    let epoch = {
        let store = store.clone();
        blocking(move || store.bump_boot_epoch()).await?
    };
    let hub = Hub::new(HubConfig {
        emit_interval: config.emit_interval,
        ..HubConfig::default()
    });
    let service = JobService::new(store, hub, epoch)
        .with_heartbeat_interval(config.heartbeat_interval)
        .with_artifact_limits(config.artifact_limits);
    let rescue_policy = RescuePolicy {
        resumable_types: resumable_types(&config, &specs),
        max_rescues: config.max_rescues,
        backoff_first: config.heartbeat_interval,
        backoff_max: MAX_RESCUE_BACKOFF.max(config.heartbeat_interval),
    };
    // Start-up recovery is a rescue: the jobs an earlier run of this server ran (and any
    // running job that holds no lease) are lost by definition. Remote workers' leases are
    // left alone: the sweep looks at them once the server has been up for a full lease.
    // On a shared database (PostgreSQL) the other servers' jobs are alive, and this run
    // cannot tell its own earlier runs from them: their leases expire and the sweep (of any
    // server) takes them back.
    if !service.store().is_shared() {
        let scope = RescueScope::EarlierRuns {
            current: service.server_owner().to_owned(),
        };
        let recovery = service.rescue(scope, rescue_policy.clone()).await?;
        // Uploads under way died with the earlier run: nothing of them was ever listed.
        let discarded = service
            .discard_abandoned_uploads(std::time::Duration::ZERO)
            .await?;
        if discarded > 0 {
            tracing::info!(
                discarded,
                "discarded artifact uploads the previous server left unfinished"
            );
        }
        if !recovery.is_empty() {
            tracing::info!(
                requeued = recovery.requeued.len(),
                failed = recovery.failed.len(),
                "recovered jobs left running by the previous server"
            );
        }
    }
    let state = AppState::new(
        service,
        ApiConfig {
            auth_token: config.auth_token.clone(),
            tokens: Some(std::sync::Arc::clone(&tokens)),
            max_body_bytes: config.max_body_bytes,
            max_sse_connections: config.max_sse_connections,
            cache_ttl: config.cache_ttl,
            bench_routes: config.bench_routes,
            ..ApiConfig::default()
        },
    );
    // Read before any state is loaded: the cluster feed brings every later change of other
    // servers, so nothing changes unseen between the seeds and the feed.
    let since = {
        let store = state.service().store().clone();
        blocking(move || store.change_counter()).await?
    };
    let seeded = state.service().seed_running().await?;
    let executor = Executor::new(
        state.clone(),
        specs,
        ExecutorSettings {
            data_dir: config.data_dir.clone(),
            max_concurrent_jobs: config.max_concurrent_jobs,
            stop_grace: config.stop_grace,
        },
    );

    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    owner.set_address(&format!("http://{addr}"))?;
    state.set_ready(true);
    tracing::info!(%addr, database = %config.database, seeded, "skill-fleet-server ready");
    on_listening(addr);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let flusher = {
        let state = state.clone();
        let stop = stopped(stop_rx.clone());
        let interval = config.emit_interval;
        tokio::spawn(async move {
            skill_fleet_core::run_flusher(state.service(), interval, stop).await;
        })
    };
    let rescuer = {
        let state = state.clone();
        let stop = stopped(stop_rx.clone());
        let settings = RescueSettings {
            interval: config.rescue_interval,
            policy: rescue_policy,
        };
        tokio::spawn(async move {
            skill_fleet_core::run_rescuer(state.service(), settings, stop).await;
        })
    };
    // Stopped last, after the shutdown's own writes (requeued jobs), so its final doorbell
    // tells the other servers about them.
    let (cluster_stop_tx, cluster_stop_rx) = watch::channel(false);
    let cluster = {
        let state = state.clone();
        let stop = stopped(cluster_stop_rx);
        let settings = ClusterSettings {
            run: epoch,
            tick: config.emit_interval,
            since,
        };
        tokio::spawn(async move {
            skill_fleet_core::run_cluster_feed(state.service(), settings, stop).await;
        })
    };
    let retention = config.retention.map(|keep| {
        tokio::spawn(crate::retention::run(
            state.clone(),
            config.data_dir.clone(),
            keep,
            stopped(stop_rx.clone()),
        ))
    });
    let token_watch = config.tokens_file.clone().map(|path| {
        tokio::spawn(crate::tokens::watch_file(
            path,
            std::sync::Arc::clone(&tokens),
            stop_rx.clone(),
        ))
    });
    let dispatcher = executor.start();
    let app = skill_fleet_api::router(state.clone()).merge(crate::dashboard::router());
    let shutdown_state = state.clone();
    let shutdown_executor = executor.clone();
    // `into_make_service`: the router is built once and shared; handing axum the Router
    // itself clones the whole route table for every connection (~14 KB per SSE client).
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move {
            stopped(stop_rx).await;
            tracing::info!("shutting down: stopping jobs, ending streams, writing progress");
            shutdown_state.set_ready(false);
            shutdown_executor.shutdown().await;
            shutdown_state.service().shutdown().await;
        })
        .await
        .map_err(ServerError::Serve)?;
    let _ = flusher.await;
    let _ = rescuer.await;
    let _ = dispatcher.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    if let Some(token_watch) = token_watch {
        let _ = token_watch.await;
    }
    // Anything that arrived while connections drained.
    state.service().shutdown().await;
    let _ = cluster_stop_tx.send(true);
    let _ = cluster.await;
    tracing::info!("stopped");
    // Held to the end: the next server may start once this one has written everything.
    drop(owner);
    Ok(())
}

/// The longest back-off before a rescued job may be claimed again.
const MAX_RESCUE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(600);

/// The program name a server writes into the database's lock file.
const SERVER_PROGRAM: &str = "skill-fleet-server";

/// Takes the database's lock for `program`; another holder becomes
/// [`ServerError::DatabaseInUse`], naming it.
fn take_database(database: &str, program: &str) -> Result<DatabaseOwner, ServerError> {
    DatabaseOwner::acquire(database, program).map_err(|err| match err {
        err @ StoreError::InUse { .. } => ServerError::DatabaseInUse(err),
        other => ServerError::Store(other),
    })
}

/// The bundled example optimizer, run for `optimization` jobs when the configuration names
/// no executors (so a fresh install runs a real job with no set-up).
const TOY_OPTIMIZER: &str = include_str!("../../../examples/toy_optimizer.py");

/// The executor specs from the configuration, or the built-in default.
fn executor_specs(config: &Config) -> Result<Vec<ExecutorSpec>, ServerError> {
    let Some(executors) = &config.executors else {
        let script = config.data_dir.join("bin").join("toy_optimizer.py");
        write_if_changed(&script, TOY_OPTIMIZER)?;
        return Ok(vec![ExecutorSpec {
            job_type: "optimization".to_owned(),
            command: vec!["python3".to_owned(), script.display().to_string()],
            working_dir: None,
            env: Default::default(),
            timeout: None,
            resumable: true,
            max_concurrent: 2,
        }]);
    };
    Ok(executors
        .iter()
        .map(|(job_type, executor)| ExecutorSpec {
            job_type: job_type.clone(),
            command: executor.command.clone(),
            working_dir: executor.working_dir.clone(),
            env: executor.env.clone(),
            timeout: executor.timeout_seconds.map(std::time::Duration::from_secs),
            resumable: executor.resumable,
            max_concurrent: executor.max_concurrent,
        })
        .collect())
}

fn write_if_changed(path: &std::path::Path, content: &str) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, content).map_err(io)
}

/// Types re-queued after a crash: the configured ones, plus executor types marked
/// resumable, minus executor types marked not resumable.
fn resumable_types(config: &Config, specs: &[ExecutorSpec]) -> Vec<String> {
    let mut types: Vec<String> = config
        .resumable_types
        .iter()
        .filter(|t| !specs.iter().any(|s| &s.job_type == *t && !s.resumable))
        .cloned()
        .collect();
    for spec in specs.iter().filter(|s| s.resumable) {
        if !types.contains(&spec.job_type) {
            types.push(spec.job_type.clone());
        }
    }
    types
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once we are stopping anyway.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The store's options from the configuration.
fn store_options(config: &Config) -> skill_fleet_jobs::StoreOptions {
    skill_fleet_jobs::StoreOptions {
        busy_timeout: config.busy_timeout,
        pool_size: config.pool_size,
        max_history_rows_per_job: config.max_history_rows_per_job,
        lease: LeasePolicy {
            ttl: config.lease_ttl,
        },
    }
}

async fn open_store(
    database: &str,
    options: skill_fleet_jobs::StoreOptions,
) -> Result<JobStore, ServerError> {
    let database = database.to_owned();
    blocking(move || JobStore::open_with(&database, options)).await
}

async fn blocking<T, F>(call: F) -> Result<T, ServerError>
where
    F: FnOnce() -> Result<T, skill_fleet_jobs::StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| ServerError::Config(format!("start-up task failed: {err}")))?
        .map_err(ServerError::from)
}

/// `init-db [--import PATH]`: migrate, optionally import, print a report. It writes, so it
/// takes the database's lock for its run and refuses beside a running server.
pub fn init_db(database: &str, import: Option<&std::path::Path>) -> Result<String, ServerError> {
    let _owner = take_database(database, "skill-fleet-server init-db")?;
    let store = JobStore::open(database)?;
    let mut report = format!("database {database} is ready\n");
    if let Some(path) = import {
        let imported = store.import_legacy(path)?;
        report.push_str(&format!(
            "imported {} jobs from {} ({} skipped, {} failed)\n",
            imported.imported,
            path.display(),
            imported.skipped,
            imported.failed
        ));
        for error in &imported.errors {
            report.push_str(&format!("  failed: {error}\n"));
        }
    }
    Ok(report)
}

/// `db status`: who owns the database, applied and pending migrations and job counts by
/// status. It only reads, so it works beside a running server (and takes no lock).
pub fn db_status(database: &str) -> Result<String, ServerError> {
    let mut report = format!("database: {database}\n");
    let shared = skill_fleet_jobs::is_shared_url(database);
    if !shared {
        report.push_str(&format!(
            "owner: {}\n",
            describe_ownership(&skill_fleet_jobs::owner_of(database)?)
        ));
    }
    let status = skill_fleet_jobs::migration_status(database)?;
    report.push_str(&format!(
        "schema version: {}\n",
        status.applied.last().map(String::as_str).unwrap_or("none")
    ));
    if status.pending.is_empty() {
        report.push_str("pending migrations: none\n");
    } else {
        report.push_str(&format!(
            "pending migrations: {}\n",
            status.pending.join(", ")
        ));
    }
    if status.pending.is_empty() {
        let store = JobStore::open(database)?;
        if let Some(servers) = store.listening_servers()? {
            report.push_str(&format!(
                "servers: {servers} listening for changes (shared PostgreSQL database)\n"
            ));
        }
        report.push_str("jobs:\n");
        for (status, count) in store.counts_by_status()? {
            report.push_str(&format!("  {status:<10} {count}\n"));
        }
    }
    Ok(report)
}

/// `skill-fleet-server pid 4242 at http://127.0.0.1:8000 (since 2026-12-01T08:40:00Z)`, or
/// `none`.
fn describe_ownership(ownership: &Ownership) -> String {
    match ownership {
        Ownership::Free => "none".to_owned(),
        Ownership::Held {
            record: Some(record),
            ..
        } => {
            let mut text = format!("{} pid {}", record.program, record.pid);
            if let Some(address) = &record.address {
                text.push_str(&format!(" at {address}"));
            }
            text.push_str(&format!(" (since {})", record.since));
            text
        }
        Ownership::Held {
            record: None,
            lock_path,
        } => format!(
            "a process that left no readable record in {}",
            lock_path.display()
        ),
    }
}
