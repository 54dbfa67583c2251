//! End to end: the `skill-fleet-client` library against a real server (in-process), for the
//! routes the CLI does not use (claim, events, history, complete, fail, health) and for its
//! typed errors.

use crate::support;

use serde_json::{Map, json};
use skill_fleet_client::types::{CompleteRequest, CreateJob, ErrorCode, JobStatus, ProgressUpdate};
use skill_fleet_client::{Cache, Client, ClientError, JobFilter};
use support::{Dirs, Server, dead_port};

fn client(server: &Server, dirs: &Dirs) -> Client {
    Client::new(&server.base)
        .expect("client")
        .with_cache(Cache::new(dirs.cache()))
}

#[test]
fn a_worker_claims_reports_and_completes() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let client = client(&server, &dirs);
    assert_eq!(client.health().unwrap().status, "ok");

    let job = client
        .create_job(&CreateJob {
            job_type: "sweep".into(),
            metadata: Some(Map::from_iter([("grid".to_owned(), json!([1, 2]))])),
            id: Some("s1".into()),
        })
        .unwrap();
    assert_eq!(
        (job.id.as_str(), job.status, job.source.as_str()),
        ("s1", JobStatus::Queued, "api")
    );

    let claimed = client
        .claim(&["sweep".to_owned()], Some("laptop"))
        .unwrap()
        .expect("a queued job");
    assert_eq!(
        (claimed.job.id.as_str(), claimed.job.status),
        ("s1", JobStatus::Running)
    );
    assert_eq!(claimed.job.lease.as_ref().unwrap().owner, "laptop");
    let fence = claimed.fence();
    assert_eq!(client.claim(&["sweep".to_owned()], None).unwrap(), None);
    let beat = client.heartbeat("s1", &fence).unwrap();
    assert!(!beat.stop);

    for (step, progress) in [("grid", 0.25), ("grid", 0.5), ("scoring", 0.75)] {
        let ack = client
            .post_event(
                "s1",
                &ProgressUpdate {
                    step: Some(step.into()),
                    progress: Some(progress),
                    cost_usd: Some(progress),
                    ..Default::default()
                },
                Some(&fence),
            )
            .unwrap();
        assert_eq!(ack.status, JobStatus::Running);
    }
    // Without the fence, a claimed job refuses the write.
    let err = client
        .post_event("s1", &ProgressUpdate::default(), None)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LeaseLost), "{err}");
    // Refused before sending: progress out of range.
    let err = client
        .post_event(
            "s1",
            &ProgressUpdate {
                progress: Some(7.0),
                ..Default::default()
            },
            Some(&fence),
        )
        .unwrap_err();
    assert!(matches!(err, ClientError::Invalid(_)), "{err}");

    let done = client
        .complete(
            "s1",
            &CompleteRequest {
                result: Some(json!({"best": 2})),
                ..CompleteRequest::default()
            },
            Some(&fence),
        )
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let history = client.progress("s1", None, Some(100)).unwrap();
    assert!(!history.records.is_empty());
    let steps: Vec<_> = history
        .records
        .iter()
        .filter_map(|r| r.step.clone())
        .collect();
    assert!(steps.contains(&"scoring".to_owned()), "{steps:?}");
    let after = history.records.last().unwrap().seq;
    assert!(
        client
            .progress("s1", Some(after), None)
            .unwrap()
            .records
            .is_empty()
    );

    let first = client.result("s1").unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.value.result, Some(json!({"best": 2})));
    let second = client.result("s1").unwrap();
    assert!(second.from_cache, "a second result should be a 304");
    assert_eq!(second.value, first.value);

    let list = client
        .jobs(&JobFilter {
            status: Some(JobStatus::Completed),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(list.value.jobs.len(), 1);

    // Typed errors.
    let err = client
        .complete("s1", &CompleteRequest::default(), None)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTransition), "{err}");
    // The owner's retry is answered with the job as it is.
    let again = client
        .complete("s1", &CompleteRequest::default(), Some(&fence))
        .unwrap();
    assert_eq!(again.result, Some(json!({"best": 2})));
    assert_eq!(err.status(), Some(409));
    let err = client.job("missing").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    // fail, cancel, resume.
    client
        .create_job(&CreateJob {
            job_type: "sweep".into(),
            id: Some("s2".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        client
            .fail("s2", "out of memory", None)
            .unwrap()
            .error
            .as_deref(),
        Some("out of memory")
    );
    assert_eq!(client.resume("s2").unwrap().status, JobStatus::Queued);
    let cancelled = client.cancel("s2", None).unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
}

#[test]
fn watch_yields_states_until_the_terminal_one() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let client = client(&server, &dirs);
    let job = client
        .create_optimization(Map::new(), Some("w1".into()))
        .unwrap();
    assert_eq!(job.job_type, "optimization");

    let mut watch = client.watch("w1").unwrap();
    let first = watch.next().unwrap().unwrap();
    assert_eq!(
        (first.job_id.as_str(), first.status),
        ("w1", JobStatus::Queued)
    );
    client
        .post_event(
            "w1",
            &ProgressUpdate {
                step: Some("bootstrap".into()),
                progress: Some(0.5),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let second = watch.next().unwrap().unwrap();
    assert_eq!(second.step.as_deref(), Some("bootstrap"));
    assert!(second.seq > first.seq);
    assert_eq!(watch.last_event_id(), Some(second.seq.to_string().as_str()));
    client
        .complete("w1", &CompleteRequest::default(), None)
        .unwrap();
    let last = watch.by_ref().map(Result::unwrap).last().unwrap();
    assert_eq!(last.status, JobStatus::Completed);
    assert!(watch.is_finished() && !watch.was_stopped());
    assert!(watch.next().is_none());

    let err = client.watch("nope").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

    // A stop handle ends a blocked next() from another thread.
    client
        .create_optimization(Map::new(), Some("w2".into()))
        .unwrap();
    let mut watch = client.watch("w2").unwrap();
    assert!(watch.next().unwrap().is_ok());
    let stop = watch.stop_handle();
    let stopper = std::thread::spawn(move || stop.stop());
    assert!(watch.next().is_none());
    assert!(watch.was_stopped());
    stopper.join().unwrap();
}

#[test]
fn tokens_and_unreachable_servers_are_typed_errors() {
    let dirs = Dirs::new();
    let server = Server::start_with(&dirs.db(), 0, &["--auth-token", "s3cret"]);
    let anonymous = Client::new(&server.base).unwrap().without_cache();
    let err = anonymous.jobs(&JobFilter::default()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    let err = anonymous.watch("x").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    let authorized = anonymous.clone().with_token("s3cret");
    assert!(
        authorized
            .jobs(&JobFilter::default())
            .unwrap()
            .value
            .jobs
            .is_empty()
    );
    authorized
        .create_optimization(Map::new(), Some("t1".into()))
        .unwrap();
    let mut watch = authorized.watch("t1").unwrap();
    assert_eq!(watch.next().unwrap().unwrap().job_id, "t1");

    let base = format!("http://127.0.0.1:{}", dead_port());
    let err = Client::new(&base).unwrap().health().unwrap_err();
    match err {
        ClientError::Unreachable { url, reason } => {
            assert_eq!(url, base);
            assert_eq!(reason, "connection refused");
        }
        other => panic!("expected unreachable, got {other}"),
    }
}
