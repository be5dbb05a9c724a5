//! The sync channel's cluster side against a mocked API server:
//! TokenReview authentication (valid, wrong audience, another namespace),
//! the budgets' and keys' status written at hand-off and resumed by the next
//! leader (reporting count included), a VirtualKey's spend and an
//! LLMRoute's sidecars in sync written from live watches and reports, and a
//! period rolling over at a calendar boundary of the budget's time zone on
//! tokio's paused clock.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use base64::Engine as _;
use http::Request;
use http_body_util::BodyExt;
use jiff::Timestamp;
use llmesh_crds::SidecarConfig;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::period;
use llmesh_crds::resources::{BudgetAction, BudgetPeriod, FailMode};
use llmesh_crds::sync::{BudgetDelta, Report};
use llmesh_operator::scope::WatchScope;
use llmesh_operator::sync::ledger::Ledger;
use llmesh_operator::sync::metrics::SyncMetrics;
use llmesh_operator::sync::server::SyncServer;
use llmesh_operator::sync::status::{STATUS_EVERY, StatusWriter};
use llmesh_operator::sync::tokenreview::TokenReviewer;
use llmesh_operator::sync::{Authenticator, Identified, Identity};
use serde_json::{Value, json};
use support::{ApiServer, play};
use tower::ServiceExt;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const BUDGET_STATUS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/budgets/team/status";
const ALL_BUDGETS: &str = "/apis/llmesh.io/v1alpha1/budgets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";
const ALL_KEYS: &str = "/apis/llmesh.io/v1alpha1/virtualkeys";
const KEY_STATUS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/virtualkeys";
const ROUTE_STATUS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/llmroutes/smart/status";

/// A projected token as the kubelet writes it (only `exp` is read, after the review).
fn token(subject: &str) -> String {
    let encode = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).expect("json"))
    };
    let exp = Timestamp::now().as_second() + 3600;
    format!(
        "{}.{}.sig",
        encode(json!({"alg": "RS256"})),
        encode(json!({"sub": subject, "exp": exp, "aud": ["llmesh-sync"]}))
    )
}

/// The API server's answer to a TokenReview.
fn reviewed(namespace: &str, pod: &str, audiences: &[&str]) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
        "spec": {},
        "status": {
            "authenticated": true,
            "audiences": audiences,
            "user": {
                "username": format!("system:serviceaccount:{namespace}:default"),
                "extra": {"authentication.kubernetes.io/pod-name": [pod]}
            }
        }
    })
}

fn server(client: kube::Client, registry: &prometheus::Registry) -> Arc<SyncServer> {
    let ledger = Ledger::open(None).expect("ledger");
    let auth = TokenReviewer::new(client, WatchScope::All);
    SyncServer::new(
        ledger,
        Arc::new(auth),
        SyncMetrics::register(registry).expect("metrics"),
    )
}

fn report_request(token: &str, namespace: &str, seq: u64) -> Request<Body> {
    let body = json!({"instance": "chat-0-abc", "seq": seq, "configVersion": "v1", "budgets": {}});
    Request::post("/v1/sync/report")
        .header("authorization", format!("Bearer {token}"))
        .header("llmesh-namespace", namespace)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

async fn status_of(response: axum::response::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn token_reviews_bind_each_sidecar_to_its_namespace_and_are_cached() {
    let (client, mut api) = ApiServer::start();
    let registry = prometheus::Registry::new();
    let server = server(client, &registry);
    let router = server.router();
    let valid = token("team-a");

    // A valid token of team-a: one TokenReview, asking for the sync audience.
    let (answer, call) = tokio::join!(
        router.clone().oneshot(report_request(&valid, "team-a", 1)),
        api.expect(
            "POST",
            REVIEWS,
            201,
            reviewed("team-a", "chat-0", &["llmesh-sync"])
        )
    );
    assert_eq!(status_of(answer.expect("answer")).await.0, 200);
    assert_eq!(call.body["spec"]["token"], valid.as_str());
    assert_eq!(call.body["spec"]["audiences"], json!(["llmesh-sync"]));
    let instance = &server.ledger().namespace("team-a").instances["chat-0-abc"];
    assert_eq!(
        instance.pod.as_deref(),
        Some("chat-0"),
        "bound to the token's pod"
    );

    // The same token again, now naming team-b: refused from the cache, no second review.
    let (status, body) = status_of(
        router
            .clone()
            .oneshot(report_request(&valid, "team-b", 2))
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("team-a") && body.contains("team-b"), "{body}");
    let (status, _) = status_of(
        router
            .clone()
            .oneshot(report_request(&valid, "team-a", 2))
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "cached for the token's lifetime: no API call");

    // A token the API server accepts only for its own audience.
    let other = token("kube-api");
    let (answer, _) = tokio::join!(
        router.clone().oneshot(report_request(&other, "team-a", 3)),
        api.expect(
            "POST",
            REVIEWS,
            201,
            reviewed("team-a", "chat-0", &["https://kubernetes.default.svc"])
        )
    );
    assert_eq!(status_of(answer.expect("answer")).await.0, 401);
    // An unauthenticated one.
    let forged = token("forged");
    let (answer, _) = tokio::join!(
        router.clone().oneshot(report_request(&forged, "team-a", 3)),
        api.expect(
            "POST",
            REVIEWS,
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
                   "spec": {}, "status": {"authenticated": false, "error": "invalid bearer token"}})
        )
    );
    assert_eq!(status_of(answer.expect("answer")).await.0, 401);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics");
    for line in [
        "llmesh_sync_refused_total{reason=\"other_namespace\",request=\"report\"} 1",
        "llmesh_sync_refused_total{reason=\"bad_token\",request=\"report\"} 2",
        "llmesh_sync_reports_total{result=\"applied\"} 2",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

fn config(version: &str) -> SidecarConfig {
    SidecarConfig {
        version: version.to_owned(),
        budgets: BTreeMap::from([(
            "team".to_owned(),
            BudgetConfig {
                limit_usd: 10.0,
                period: BudgetPeriod::Monthly,
                time_zone: "Europe/Berlin".to_owned(),
                thresholds: vec![50, 80],
                action: BudgetAction::Block,
                downgrade_to: None,
                max_tokens_per_request: None,
                max_tokens_per_session: None,
                fail_mode: FailMode::Open,
            },
        )]),
        ..SidecarConfig::default()
    }
}

fn report(instance: &str, seq: u64, period_start: Timestamp, usd: f64) -> Report {
    let delta = BudgetDelta {
        period_start: period_start.as_second(),
        spent_usd: usd,
        tokens: 100,
    };
    Report {
        instance: instance.to_owned(),
        seq,
        config_version: "v1".to_owned(),
        budgets: BTreeMap::from([("team".to_owned(), delta)]),
        keys: BTreeMap::from([("agent".to_owned(), delta)]),
    }
}

/// What the API server answers a status patch with: the Budget, patched.
fn stored_budget(call: &support::Call) -> Value {
    let mut budget = call.body.clone();
    budget["metadata"] = json!({"name": "team", "namespace": "team-a", "uid": "u1"});
    budget["spec"] = json!({"limitUsd": 10.0});
    budget
}

/// The Budget `team-a/team` as the API server lists it, with `status`.
fn listed_budget(status: &Value) -> Value {
    json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "BudgetList", "metadata": {},
        "items": [{
            "apiVersion": "llmesh.io/v1alpha1", "kind": "Budget",
            "metadata": {"name": "team", "namespace": "team-a", "uid": "u1"},
            "spec": {"limitUsd": 10.0, "period": "monthly", "timeZone": "Europe/Berlin", "thresholds": [50, 80]},
            "status": status
        }]
    })
}

#[tokio::test]
async fn the_status_written_at_hand_off_is_where_the_next_leader_resumes() {
    // January in Berlin began at 2025-12-31T23:00Z.
    let now: Timestamp = "2026-01-20T12:00:00Z".parse().expect("time");
    let january: Timestamp = "2025-12-31T23:00:00Z".parse().expect("time");
    let (client, mut api) = ApiServer::start();
    let registry = prometheus::Registry::new();
    let first = server(client.clone(), &registry);
    first.publish("team-a", config("v1"));
    for (instance, seq, usd) in [("a", 1, 2.0), ("b", 1, 3.5), ("a", 2, 0.5)] {
        first
            .ledger()
            .apply("team-a", &report(instance, seq, january, usd), None, 1);
    }
    let writer = StatusWriter::new(client.clone(), Arc::clone(&first), Some("op-0".to_owned()));
    // The hand-off write: the spend fields under their own field manager, and
    // the 50 % threshold's Event, once.
    let mut calls = Vec::new();
    play(
        async move {
            assert_eq!(writer.write(now).await.expect("written"), 1);
        },
        async {
            calls.push(
                api.expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
                    .await,
            );
            calls.push(
                api.expect_with("POST", EVENTS, |call| (201, call.body.clone()))
                    .await,
            );
        },
    )
    .await;
    let (patch, event) = (&calls[0], &calls[1]);
    assert!(
        patch.query.contains("fieldManager=llmesh-operator-sync"),
        "{}",
        patch.query
    );
    let status = &patch.body["status"];
    assert_eq!(status["spentUsd"], 6.0);
    assert_eq!(status["state"], "warning");
    assert_eq!(status["periodEnd"], "2026-01-31T23:00:00Z");
    assert_eq!(status["reportingSidecars"], 2);
    assert!(
        status.get("conditions").is_none(),
        "the reconcile's fields are not touched"
    );
    assert_eq!(event.body["reason"], "BudgetThresholdCrossed");
    assert_eq!(event.body["regarding"]["name"], "team");

    // The next leader has no ledger: it resumes from the Budget's and the
    // VirtualKey's status (the key counts in its budget's Berlin calendar).
    let (client, mut api) = ApiServer::start();
    let registry = prometheus::Registry::new();
    let next = server(client.clone(), &registry);
    let writer = StatusWriter::new(client, Arc::clone(&next), Some("op-1".to_owned()));
    let stored = status.clone();
    let key_status = json!({"spentUsd": 4.0, "period": "monthly (Europe/Berlin)",
                            "periodEnd": "2026-01-31T23:00:00Z"});
    let writer = play(
        async move {
            let seeded = writer.resume(&WatchScope::All, now).await.expect("resumed");
            assert_eq!(seeded, 2);
            writer
        },
        async {
            api.expect("GET", ALL_BUDGETS, 200, listed_budget(&stored)).await;
            api.expect("GET", ALL_KEYS, 200, listed_key(&key_status)).await;
        },
    )
    .await;
    assert_eq!(next.ledger().totals("team-a")["team"].spent_usd, 6.0);
    assert_eq!(next.ledger().namespace("team-a").keys["agent"].spent_usd, 4.0);
    next.publish("team-a", config("v1"));
    // Its first round has nothing to restate: spend, state and the count of
    // reporting sidecars are what the statuses say. Nothing is announced twice.
    let writer = play(
        async move {
            assert_eq!(writer.write(now).await.expect("written"), 0);
            writer
        },
        async {},
    )
    .await;
    // A sidecar's next report adds to the resumed spend; the two sidecars
    // that reported before the hand-off still count.
    next.ledger()
        .apply("team-a", &report("a", 3, january, 2.5), None, 2);
    let spent = play(async move { writer.write(now).await.expect("written") }, async {
        let patch = api
            .expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
            .await;
        assert_eq!(patch.body["status"]["spentUsd"], 8.5);
        assert_eq!(patch.body["status"]["reportingSidecars"], 2);
        let event = api
            .expect_with("POST", EVENTS, |call| (201, call.body.clone()))
            .await;
        assert_eq!(
            event.body["reason"], "BudgetThresholdCrossed",
            "80 % now, not 50 % again"
        );
        assert!(
            event.body["note"].as_str().unwrap_or_default().contains("80%"),
            "{}",
            event.body
        );
    })
    .await;
    assert_eq!(spent, 1);
}

/// The VirtualKey `team-a/agent` (budget `team`) as the API server lists it, with `status`.
fn listed_key(status: &Value) -> Value {
    json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "VirtualKeyList", "metadata": {},
        "items": [{
            "apiVersion": "llmesh.io/v1alpha1", "kind": "VirtualKey",
            "metadata": {"name": "agent", "namespace": "team-a", "uid": "k1"},
            "spec": {"budget": "team"},
            "status": status
        }]
    })
}

/// Accepts any token as a sidecar of team-a (the TokenReview is tested above).
#[derive(Debug)]
struct TeamA;

impl Authenticator for TeamA {
    fn identify<'a>(&'a self, _token: &'a str) -> Identified<'a> {
        Box::pin(async {
            Ok(Identity {
                namespace: "team-a".to_owned(),
                pod: None,
            })
        })
    }
}

/// `config(version)` with the route `smart` and the keys `agent` (budget
/// `team`) and `ops` (no budget).
fn with_keys_and_route(version: &str) -> SidecarConfig {
    let mut config = config(version);
    config.keys = serde_json::from_value(json!({
        "agent": {"keyHash": "a1", "budget": "team"},
        "ops": {"keyHash": "b2"}
    }))
    .expect("keys");
    config.routes = serde_json::from_value(json!({
        "smart": {"resource": "smart", "strategy": "ordered", "targets": []}
    }))
    .expect("routes");
    config
}

fn watch_request(instance: &str, version: &str) -> Request<Body> {
    Request::post("/v1/sync/watch")
        .header("authorization", "Bearer t")
        .body(Body::from(
            json!({"instance": instance, "configVersion": version}).to_string(),
        ))
        .expect("request")
}

fn post_report(report: &Report) -> Request<Body> {
    Request::post("/v1/sync/report")
        .header("authorization", "Bearer t")
        .body(Body::from(serde_json::to_vec(report).expect("json")))
        .expect("request")
}

/// Answers a status patch with the resource `name`, patched.
fn stored(call: &support::Call, kind: &str, name: &str) -> Value {
    let mut object = call.body.clone();
    object["kind"] = json!(kind);
    object["metadata"] = json!({"name": name, "namespace": "team-a", "uid": "u"});
    object["spec"] = match kind {
        "LLMRoute" => json!({"targets": [{"provider": "mock", "model": "m"}]}),
        _ => json!({}),
    };
    object
}

#[tokio::test]
async fn keys_show_their_spend_and_routes_the_sidecars_in_sync() {
    let now = Timestamp::now();
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("zone");
    let month_in_berlin = period::start(BudgetPeriod::Monthly, &berlin, now);
    let month_in_utc = period::start(BudgetPeriod::Monthly, &jiff::tz::TimeZone::UTC, now);
    let (client, mut api) = ApiServer::start();
    let registry = prometheus::Registry::new();
    let sync = SyncServer::new(
        Ledger::open(None).expect("ledger"),
        Arc::new(TeamA),
        SyncMetrics::register(&registry).expect("metrics"),
    );
    sync.publish("team-a", with_keys_and_route("v2"));
    let router = sync.router();
    // Two sidecars connect: one already serves v2, one still v1.
    let a = router
        .clone()
        .oneshot(watch_request("a", "v2"))
        .await
        .expect("watch a");
    let b = router
        .clone()
        .oneshot(watch_request("b", "v1"))
        .await
        .expect("watch b");
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    // Both report spend with both keys; b says it serves v2 by now.
    let delta = |start: i64, usd: f64| BudgetDelta {
        period_start: start,
        spent_usd: usd,
        tokens: 10,
    };
    for (instance, version, usd) in [("a", "v2", 1.0), ("b", "v1", 0.5), ("b", "v2", 0.25)] {
        let seq = if version == "v1" { 1 } else { 2 };
        let report = Report {
            instance: instance.to_owned(),
            seq,
            config_version: version.to_owned(),
            budgets: BTreeMap::new(),
            keys: BTreeMap::from([
                ("agent".to_owned(), delta(month_in_berlin, usd)),
                ("ops".to_owned(), delta(month_in_utc, usd * 2.0)),
            ]),
        };
        let answer = router
            .clone()
            .oneshot(post_report(&report))
            .await
            .expect("report");
        assert_eq!(answer.status(), 200);
    }
    let writer = StatusWriter::new(client, Arc::clone(&sync), None);
    let writer = play(
        async move {
            // The budget (nothing spent), both keys and the route.
            assert_eq!(writer.write(now).await.expect("written"), 4);
            writer
        },
        async {
            api.expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
                .await;
            let agent = api
                .expect_with("PATCH", &format!("{KEY_STATUS}/agent/status"), |call| {
                    (200, stored(call, "VirtualKey", "agent"))
                })
                .await;
            assert!(agent.query.contains("fieldManager=llmesh-operator-sync"));
            let status = &agent.body["status"];
            assert_eq!(status["spentUsd"], 1.75, "{status}");
            assert_eq!(status["period"], "monthly (Europe/Berlin)");
            assert!(status["periodEnd"].is_string() && status["lastReportAt"].is_string());
            assert!(
                status.get("conditions").is_none(),
                "the reconcile's fields are not touched"
            );
            let ops = api
                .expect_with("PATCH", &format!("{KEY_STATUS}/ops/status"), |call| {
                    (200, stored(call, "VirtualKey", "ops"))
                })
                .await;
            assert_eq!(ops.body["status"]["spentUsd"], 3.5);
            assert_eq!(
                ops.body["status"]["period"], "monthly (UTC)",
                "no budget: a month in UTC"
            );
            let route = api
                .expect_with("PATCH", ROUTE_STATUS, |call| {
                    (200, stored(call, "LLMRoute", "smart"))
                })
                .await;
            let status = &route.body["status"];
            assert_eq!(status["sidecarsConnected"], 2, "{status}");
            assert_eq!(
                status["sidecarsInSync"], 2,
                "b reported v2 after its hello said v1"
            );
            assert_eq!(status["configVersion"], "v2");
        },
    )
    .await;

    // A new version is published: nobody serves it yet. Sidecar a leaves.
    sync.publish("team-a", with_keys_and_route("v3"));
    drop(a);
    let writer = play(
        async move {
            assert_eq!(writer.write(now).await.expect("written"), 1);
            writer
        },
        async {
            let route = api
                .expect_with("PATCH", ROUTE_STATUS, |call| {
                    (200, stored(call, "LLMRoute", "smart"))
                })
                .await;
            let status = &route.body["status"];
            assert_eq!(
                (&status["sidecarsConnected"], &status["sidecarsInSync"]),
                (&json!(1), &json!(0)),
                "{status}"
            );
        },
    )
    .await;
    // b applies v3 and says so in a report without spend.
    let report = Report {
        instance: "b".to_owned(),
        seq: 3,
        config_version: "v3".to_owned(),
        ..Report::default()
    };
    assert_eq!(
        router
            .oneshot(post_report(&report))
            .await
            .expect("report")
            .status(),
        200
    );
    play(async move { writer.write(now).await.expect("written") }, async {
        let route = api
            .expect_with("PATCH", ROUTE_STATUS, |call| {
                (200, stored(call, "LLMRoute", "smart"))
            })
            .await;
        assert_eq!(route.body["status"]["sidecarsInSync"], 1);
    })
    .await;
    drop(b);
}

/// Lets the writer finish its round and start waiting (the answers pass
/// through the client's buffer task), then moves the paused clock to its
/// next round: the mock's own timeouts never race the writer's.
async fn next_round() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(STATUS_EVERY).await;
}

#[tokio::test(start_paused = true)]
async fn a_period_rolls_over_at_midnight_in_the_budgets_time_zone() {
    // 22:59:50 UTC on January 31st is ten seconds before February in Berlin.
    let base: Timestamp = "2026-01-31T22:59:50Z".parse().expect("time");
    let january: Timestamp = "2025-12-31T23:00:00Z".parse().expect("time");
    let february: Timestamp = "2026-01-31T23:00:00Z".parse().expect("time");
    let started = tokio::time::Instant::now();
    let clock = Arc::new(move || base + jiff::SignedDuration::try_from(started.elapsed()).expect("duration"));
    let (client, mut api) = ApiServer::start();
    let registry = prometheus::Registry::new();
    let sync = server(client.clone(), &registry);
    sync.publish("team-a", config("v1"));
    sync.ledger()
        .apply("team-a", &report("a", 1, january, 10.0), None, 1);
    let writer = StatusWriter::new(client, Arc::clone(&sync), None).with_clock(clock);
    let running = tokio::spawn(async move { writer.run().await });

    // First round, still January in Berlin: exceeded, one Event.
    next_round().await;
    let patch = api
        .expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
        .await;
    assert_eq!(patch.body["status"]["state"], "exceeded");
    assert_eq!(patch.body["status"]["periodEnd"], "2026-01-31T23:00:00Z");
    let event = api
        .expect_with("POST", EVENTS, |call| (201, call.body.clone()))
        .await;
    assert_eq!(event.body["reason"], "BudgetExceeded");

    // Next round, 23:00:00 UTC: February 1st in Berlin. No restart, no
    // report: the calendar alone starts the new period from zero.
    next_round().await;
    let patch = api
        .expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
        .await;
    let status = &patch.body["status"];
    assert_eq!(status["spentUsd"], 0.0);
    assert_eq!(status["state"], "ok");
    assert_eq!(status["periodEnd"], "2026-02-28T23:00:00Z");

    // February's spend counts from zero; a late January report is dropped.
    sync.ledger()
        .apply("team-a", &report("a", 2, february, 1.0), None, 2);
    sync.ledger()
        .apply("team-a", &report("b", 1, january, 5.0), None, 3);
    next_round().await;
    let patch = api
        .expect_with("PATCH", BUDGET_STATUS, |call| (200, stored_budget(call)))
        .await;
    assert_eq!(patch.body["status"]["spentUsd"], 1.0);
    assert_eq!(patch.body["status"]["state"], "ok");
    running.abort();
}
