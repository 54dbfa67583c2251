//! PostgreSQL only: several stores (several pools, as several servers would have) on one
//! database. Claims never hand one job out twice, two sweeps never rescue one job twice, a
//! fenced write and a rescue never both land, and leases run on the database's clock.
//! Each test skips, saying why, when the test kit finds no PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use skill_fleet_jobs::{
    ClaimFilter, Doorbell, JobStore, LEASE_EXPIRED_EVENT, LeasePolicy, ProgressWrite, RescuePolicy,
    RescueReport, RescueScope, StoreError, StoreOptions, Writer,
};
use skill_fleet_testkit::TestPostgres;
use skill_fleet_types::{JobStatus, Progress};

use crate::support::{TestDb, create, raw};

/// Stores ("servers") per test.
const SERVERS: usize = 3;

fn servers(db: &TestDb, ttl: Duration) -> Vec<JobStore> {
    (0..SERVERS)
        .map(|_| {
            db.open_with(StoreOptions {
                pool_size: 6,
                busy_timeout: Duration::from_secs(30),
                lease: LeasePolicy { ttl },
                ..StoreOptions::default()
            })
        })
        .collect()
}

fn requeue_policy() -> RescuePolicy {
    RescuePolicy {
        resumable_types: vec!["optimization".to_owned()],
        max_rescues: 100,
        backoff_first: Duration::ZERO,
        backoff_max: Duration::ZERO,
    }
}

/// Waits until every running job's lease has expired by the database's clock.
fn wait_expired(store: &JobStore, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in ids {
        loop {
            let job = store.get(id).unwrap();
            let expired = job.lease.as_ref().is_none_or(|lease| {
                lease.expires_at <= chrono::Utc::now() - chrono::Duration::milliseconds(5)
            });
            if expired {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the lease of {id} did not expire"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn claims_from_several_servers_never_take_one_job_twice() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_secs(90));
    const ROUNDS: usize = 5;
    const JOBS: usize = 60;
    const WORKERS_PER_SERVER: usize = 4;
    for round in 0..ROUNDS {
        for n in 0..JOBS {
            create(&db, &format!("r{round}-j{n:03}"), "optimization");
        }
        let barrier = Barrier::new(SERVERS * WORKERS_PER_SERVER);
        let claimed: Vec<(String, u32)> = std::thread::scope(|scope| {
            let workers: Vec<_> = stores
                .iter()
                .enumerate()
                .flat_map(|(s, store)| (0..WORKERS_PER_SERVER).map(move |w| (s, w, store)))
                .map(|(s, w, store)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        let mut mine = Vec::new();
                        while let Some(claimed) = store
                            .claim(&ClaimFilter::default(), &format!("s{s}-w{w}"))
                            .unwrap()
                        {
                            mine.push((claimed.job.id, claimed.job.attempt));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let mut times: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, attempt) in &claimed {
            *times.entry(id).or_default() += 1;
            assert_eq!(*attempt, 1, "round {round}: {id} started twice");
        }
        assert_eq!(claimed.len(), JOBS, "round {round}: {times:?}");
        assert!(
            times.values().all(|&n| n == 1),
            "round {round}: a job was claimed twice: {times:?}"
        );
        // Leave nothing queued or running for the next round.
        for (id, _) in &claimed {
            db.cancel(id, None).unwrap();
        }
    }
}

#[test]
fn two_sweeps_at_once_never_rescue_one_job_twice() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_millis(50));
    const ROUNDS: usize = 4;
    const JOBS: usize = 40;
    let policy = requeue_policy();
    for round in 0..ROUNDS {
        let mut ids = Vec::new();
        for n in 0..JOBS {
            let id = format!("r{round}-j{n:03}");
            create(&db, &id, "optimization");
            ids.push(id);
        }
        for _ in 0..JOBS {
            stores[0]
                .claim(&ClaimFilter::default(), "lost-worker")
                .unwrap()
                .expect("a queued job");
        }
        wait_expired(&stores[0], &ids);
        let barrier = Barrier::new(SERVERS);
        let reports: Vec<RescueReport> = std::thread::scope(|scope| {
            let sweeps: Vec<_> = stores
                .iter()
                .map(|store| {
                    let (barrier, policy) = (&barrier, &policy);
                    scope.spawn(move || {
                        barrier.wait();
                        store.rescue(&RescueScope::Expired, policy).unwrap()
                    })
                })
                .collect();
            sweeps.into_iter().map(|s| s.join().unwrap()).collect()
        });
        let mut rescued: Vec<&str> = reports
            .iter()
            .flat_map(|r| r.requeued.iter().chain(&r.failed))
            .map(|r| r.job.id.as_str())
            .collect();
        let total = rescued.len();
        rescued.sort_unstable();
        rescued.dedup();
        assert_eq!(
            rescued.len(),
            total,
            "round {round}: a job was rescued twice"
        );
        // A sweep skips rows another sweep holds; one more sweep takes what is left.
        let rest = stores[0].rescue(&RescueScope::Expired, &policy).unwrap();
        assert_eq!(total + rest.requeued.len(), JOBS, "round {round}");
        for id in &ids {
            let job = db.get(id).unwrap();
            assert_eq!(job.status, JobStatus::Queued, "round {round}: {id}");
            let events = db
                .progress_history(id, None, 0)
                .unwrap()
                .records
                .into_iter()
                .filter(|r| r.event.as_deref() == Some(LEASE_EXPIRED_EVENT))
                .count();
            assert_eq!(events, 1, "round {round}: {id} has {events} rescue rows");
            db.cancel(id, None).unwrap();
        }
    }
}

#[test]
fn a_fenced_write_and_a_rescue_on_other_servers_never_both_land() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_millis(30));
    let (worker_side, sweeper) = (&stores[0], &stores[1]);
    let policy = requeue_policy();
    let (mut completed, mut rescued) = (0, 0);
    for round in 0..40 {
        let id = format!("race-{round:02}");
        create(&db, &id, "optimization");
        let claimed = worker_side
            .claim(&ClaimFilter::default(), "racing-worker")
            .unwrap()
            .expect("the job");
        let fence = claimed.lease.fence();
        // Let the lease run out, or nearly: either side may win.
        std::thread::sleep(Duration::from_millis(25 + (round % 10)));
        let barrier = Barrier::new(2);
        let (write, sweep) = std::thread::scope(|scope| {
            let write = scope.spawn(|| {
                barrier.wait();
                // Odd rounds race the coalesced batch (the fence in SQL), even ones the
                // complete (the fence read under the row lock).
                if round % 2 == 1 {
                    let report = worker_side
                        .write_progress_batch(&[ProgressWrite {
                            writer: Writer::Owner(fence.clone()),
                            job_id: id.clone(),
                            progress: Progress {
                                progress: 0.5,
                                ..Progress::default()
                            },
                            checkpoint: None,
                        }])
                        .unwrap();
                    (report.written == 1)
                        .then_some(())
                        .ok_or_else(|| StoreError::InvalidInput("skipped".to_owned()))
                } else {
                    worker_side
                        .complete(&id, None, None, &Writer::Owner(fence.clone()))
                        .map(drop)
                }
            });
            let sweep = scope.spawn(|| {
                barrier.wait();
                let deadline = Instant::now() + Duration::from_millis(60);
                let mut all = RescueReport::default();
                while Instant::now() < deadline && all.is_empty() {
                    all = sweeper.rescue(&RescueScope::Expired, &policy).unwrap();
                }
                all
            });
            (write.join().unwrap(), sweep.join().unwrap())
        });
        let job = db.get(&id).unwrap();
        let history = db.progress_history(&id, None, 0).unwrap().records;
        match write {
            Ok(()) => {
                completed += 1;
                // The write landed first: a rescue after it is a later, separate expiry of
                // the renewed lease (only the batch renews; a completed job is not running).
                if round % 2 == 0 {
                    assert_eq!(job.status, JobStatus::Completed, "round {round}");
                    assert!(sweep.is_empty(), "round {round}: rescued after completing");
                }
                let landed = history
                    .iter()
                    .position(|r| r.event.is_none() && r.attempt == Some(1));
                let rescue = history
                    .iter()
                    .position(|r| r.event.as_deref() == Some(LEASE_EXPIRED_EVENT));
                if let (Some(landed), Some(rescue)) = (landed, rescue) {
                    assert!(
                        landed < rescue,
                        "round {round}: the write landed after a rescue"
                    );
                }
            }
            Err(err) => {
                rescued += 1;
                assert!(
                    matches!(
                        err,
                        StoreError::LeaseLost { .. } | StoreError::InvalidInput(_)
                    ),
                    "round {round}: {err:?}"
                );
                assert_eq!(sweep.requeued.len(), 1, "round {round}");
                assert_eq!(job.status, JobStatus::Queued, "round {round}");
                assert!(
                    history
                        .iter()
                        .all(|r| r.event.is_some() || r.attempt != Some(1)),
                    "round {round}: a fenced-out write left history: {history:?}"
                );
            }
        }
        if job.status != JobStatus::Completed {
            db.cancel(&id, None).unwrap();
        }
    }
    eprintln!("fenced write vs rescue: {completed} writes landed first, {rescued} rescues");
}

#[test]
fn leases_run_on_the_database_clock() {
    let Some(postgres) = TestPostgres::get() else {
        return;
    };
    let database = postgres.database();
    // The database's clock an hour ahead of this machine's: `clock_timestamp()` resolves to
    // this one, `public` being searched before `pg_catalog` in this database.
    let mut conn = raw(&database.url);
    conn.batch_execute(&format!(
        "CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS \
         $$ SELECT pg_catalog.clock_timestamp() + interval '1 hour' $$; \
         ALTER DATABASE {} SET search_path = public, pg_catalog;",
        database.name()
    ))
    .unwrap();
    drop(conn);
    let ttl = Duration::from_secs(90);
    let store = JobStore::open_with(
        &database.url,
        StoreOptions {
            lease: LeasePolicy { ttl },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    create(&store, "clocked", "optimization");
    let db_now = || {
        #[derive(QueryableByName)]
        struct Now {
            #[diesel(sql_type = diesel::sql_types::Timestamp)]
            now: chrono::NaiveDateTime,
        }
        let now: Now =
            diesel::sql_query("SELECT (clock_timestamp() AT TIME ZONE 'UTC')::timestamp AS now")
                .get_result(&mut raw(&database.url))
                .unwrap();
        now.now.and_utc()
    };
    let before = db_now();
    let claimed = store
        .claim(&ClaimFilter::default(), "clock-reader")
        .unwrap()
        .expect("the job");
    let after = db_now();
    let ttl = chrono::Duration::from_std(ttl).unwrap();
    let lease = claimed.job.lease.clone().expect("a lease");
    assert!(
        before + ttl <= lease.expires_at && lease.expires_at <= after + ttl,
        "expiry {} is not the database's now ({before} … {after}) + {ttl}",
        lease.expires_at
    );
    assert!(
        lease.expires_at > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the lease was stamped with this machine's clock"
    );
    let started = claimed.job.started_at.expect("started");
    assert!(
        before <= started && started <= after,
        "started_at {started}"
    );
    // The rescue reads the same clock: an hour-ahead lease of 90 s is not yet expired.
    let report = store
        .rescue(&RescueScope::Expired, &requeue_policy())
        .unwrap();
    assert!(report.is_empty(), "{report:?}");
    drop(store);
}

#[test]
fn one_id_created_on_several_servers_at_once_is_one_job() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_secs(90));
    for round in 0..20 {
        let id = format!("same-{round:02}");
        let barrier = Barrier::new(SERVERS);
        let results: Vec<skill_fleet_jobs::Created> = std::thread::scope(|scope| {
            let creates: Vec<_> = stores
                .iter()
                .map(|store| {
                    let (barrier, id) = (&barrier, &id);
                    scope.spawn(move || {
                        barrier.wait();
                        store
                            .create(&crate::support::new_job(id, "optimization"))
                            .unwrap()
                            .1
                    })
                })
                .collect();
            creates.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let new = results
            .iter()
            .filter(|c| **c == skill_fleet_jobs::Created::New)
            .count();
        assert_eq!(new, 1, "round {round}: {results:?}");
    }
}

#[test]
fn refused_writes_are_storage_faults_and_the_pool_recovers() {
    use skill_fleet_jobs::StorageFault;
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let store = db.open_with(StoreOptions {
        pool_size: 2,
        busy_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    });
    create(&store, "faulty", "optimization");

    // A row another transaction holds past the busy timeout (`lock_timeout`): busy.
    let mut holder = raw(&db.url);
    holder
        .batch_execute("BEGIN; SELECT id FROM jobs WHERE id = 'faulty' FOR UPDATE;")
        .unwrap();
    let err = store.cancel("faulty", None).unwrap_err();
    assert_eq!(err.storage_fault(), Some(StorageFault::Busy), "{err}");
    holder.batch_execute("ROLLBACK").unwrap();

    // Every connection of the store terminated (a server restart, an administrator): the
    // next write is refused as unavailable, or reconnects at once; either way the store
    // writes again without being reopened.
    holder
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    match store.cancel("faulty", None) {
        Ok(job) => assert_eq!(job.status, JobStatus::Cancelled),
        Err(err) => {
            assert_eq!(
                err.storage_fault(),
                Some(StorageFault::Unavailable),
                "{err}"
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match store.cancel("faulty", None) {
                    Ok(_) => break,
                    Err(err) => {
                        assert!(err.storage_fault().is_some(), "{err}");
                        assert!(Instant::now() < deadline, "no recovery: {err}");
                    }
                }
            }
        }
    }
    assert_eq!(db.get("faulty").unwrap().status, JobStatus::Cancelled);

    // A server that does not answer (nothing listens on port 1): unavailable.
    let err = JobStore::open("postgres://postgres@127.0.0.1:1/postgres").unwrap_err();
    assert_eq!(
        err.storage_fault(),
        Some(StorageFault::Unavailable),
        "{err}"
    );

    // A read-only database (a standby, `default_transaction_read_only`): read-only.
    create(&store, "read-only", "optimization");
    holder
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', \
             current_database()); END $$; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid();",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let err = store.cancel("read-only", None).unwrap_err();
        if err.storage_fault() == Some(StorageFault::ReadOnly) || Instant::now() > deadline {
            break err;
        }
    };
    assert_eq!(err.storage_fault(), Some(StorageFault::ReadOnly), "{err}");
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    holder
        .batch_execute(
            "SET default_transaction_read_only = off; \
             DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET default_transaction_read_only', \
             current_database()); END $$;",
        )
        .unwrap();
}

#[test]
fn a_doorbell_rung_by_one_server_is_heard_by_another() {
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_secs(90));
    let mut heard = stores[1].listen_for_changes().unwrap().expect("a listener");
    let mut also = stores[2].listen_for_changes().unwrap().expect("a listener");
    let payload = Doorbell::encode(7, &[("job-a".to_owned(), Some(3))]);
    stores[0].ring_doorbell(&payload).unwrap();
    for listener in [&mut heard, &mut also] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(Instant::now() < deadline, "no doorbell heard");
            got = listener.take().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, vec![payload.clone()]);
        listener.check().unwrap();
    }
}

#[test]
fn changes_read_by_version_never_skip_a_commit_of_another_server() {
    // Three "servers" write at once while a fourth reads `version > last seen` in a loop:
    // every version any write produced is seen by the reader (as the job's state at that
    // version or a later one), because versions become visible in the order they are given.
    let Some(db) = TestDb::postgres() else {
        return;
    };
    let stores = servers(&db, Duration::from_secs(90));
    let reader = db.open_with(StoreOptions::default());
    let start = reader.change_counter().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (written, seen) = std::thread::scope(|scope| {
        let writers: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(n, store)| {
                scope.spawn(move || {
                    let mut versions = Vec::new();
                    for k in 0..40 {
                        let job = create(store, &format!("s{n}-{k:02}"), "optimization");
                        versions.push((job.id.clone(), job.version));
                    }
                    versions
                })
            })
            .collect();
        let done = &done;
        let reader = &reader;
        let reads = scope.spawn(move || {
            let mut last = start;
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                for job in reader.jobs_changed_since(last, 7).unwrap() {
                    assert!(
                        job.version > last,
                        "{} at {} after {last}",
                        job.id,
                        job.version
                    );
                    last = job.version;
                    seen.insert(job.id.clone(), job.version);
                }
                if finished && reader.jobs_changed_since(last, 1).unwrap().is_empty() {
                    return seen;
                }
            }
        });
        let written: Vec<(String, u64)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (written, reads.join().unwrap())
    });
    assert_eq!(seen.len(), written.len());
    for (id, version) in written {
        assert!(
            seen.get(&id).is_some_and(|v| *v >= version),
            "{id} at {version} never seen"
        );
    }
}
