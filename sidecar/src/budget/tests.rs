//! Budget enforcement with a clock moved by hand.

use std::sync::Arc;

use jiff::Timestamp;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::{BudgetAction, BudgetPeriod, FailMode};
use parking_lot::Mutex;

use super::*;

#[derive(Debug)]
struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    fn at(text: &str) -> Arc<Self> {
        Arc::new(Self(Mutex::new(text.parse().expect("timestamp"))))
    }

    fn set(&self, text: &str) {
        *self.0.lock() = text.parse().expect("timestamp");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}

fn config(action: BudgetAction) -> BudgetConfig {
    BudgetConfig {
        limit_usd: 1.0,
        period: BudgetPeriod::Monthly,
        time_zone: "America/New_York".into(),
        thresholds: vec![50, 80],
        action,
        downgrade_to: (action == BudgetAction::Downgrade).then(|| "cheap".to_owned()),
        max_tokens_per_request: Some(1000),
        max_tokens_per_session: Some(100),
        fail_mode: FailMode::Open,
    }
}

fn budgets(clock: Arc<ManualClock>) -> Arc<Budgets> {
    Arc::new(Budgets::new(clock, Arc::new(Metrics::new()), Recorded::default()))
}

fn estimate(prompt: u64, max_output: Option<u64>) -> Estimate {
    Estimate {
        prompt_tokens: prompt,
        max_output_tokens: max_output,
    }
}

fn spend(budgets: &Arc<Budgets>, config: &BudgetConfig, usd: f64) {
    match budgets.admit("b", config, &estimate(1, None), 0.0, None) {
        Ok(Admitted::Serve(charge) | Admitted::Downgrade(charge, _)) => {
            charge.settle(&Usage::new(1, 1, 0, 0, 0), Some(usd));
        }
        Err(error) => panic!("refused: {error}"),
    }
}

#[test]
fn an_exhausted_budget_blocks_until_the_local_month_turns() {
    // 31 January, 23:00 in New York (UTC-5): still January there.
    let clock = ManualClock::at("2026-02-01T04:00:00Z");
    let budgets = budgets(clock.clone());
    let config = config(BudgetAction::Block);
    spend(&budgets, &config, 0.6);
    spend(&budgets, &config, 0.5);
    let refused = budgets
        .admit("b", &config, &estimate(1, None), 0.0, None)
        .expect_err("exhausted");
    assert!(refused.to_string().contains("budget b is exhausted"), "{refused}");
    assert_eq!(refused.retry_after_secs(), Some(3600), "resets at local midnight");

    clock.set("2026-02-01T05:00:00Z"); // 1 February, 00:00 in New York.
    assert!(budgets.admit("b", &config, &estimate(1, None), 0.0, None).is_ok());
    assert_eq!(budgets.spent("b"), 0.0);
}

#[test]
fn downgrade_and_alert_still_serve() {
    let clock = ManualClock::at("2026-05-10T12:00:00Z");
    for (action, downgraded) in [(BudgetAction::Downgrade, true), (BudgetAction::Alert, false)] {
        let budgets = budgets(clock.clone());
        let config = config(action);
        spend(&budgets, &config, 1.5);
        match budgets
            .admit("b", &config, &estimate(1, None), 0.0, None)
            .expect("served")
        {
            Admitted::Downgrade(_, route) => assert!(downgraded && route == "cheap"),
            Admitted::Serve(_) => assert!(!downgraded),
        }
    }
}

#[test]
fn thresholds_are_reported_once_per_period() {
    let clock = ManualClock::at("2026-05-10T12:00:00Z");
    let budgets = budgets(clock.clone());
    let config = config(BudgetAction::Alert);
    let crossed = |threshold: &str| {
        budgets
            .metrics
            .budget_thresholds
            .with_label_values(&["b", threshold])
            .get()
    };
    spend(&budgets, &config, 0.55);
    spend(&budgets, &config, 0.1);
    assert_eq!((crossed("50"), crossed("80")), (1, 0));
    spend(&budgets, &config, 0.3);
    assert_eq!((crossed("50"), crossed("80")), (1, 1));
    clock.set("2026-06-01T12:00:00Z");
    spend(&budgets, &config, 0.9);
    assert_eq!((crossed("50"), crossed("80")), (2, 2));
}

#[test]
fn token_ceilings_stop_big_requests_and_long_sessions() {
    let budgets = budgets(ManualClock::at("2026-05-10T12:00:00Z"));
    let config = config(BudgetAction::Block);
    let too_big = budgets.admit("b", &config, &estimate(200, Some(900)), 0.0, None);
    assert!(matches!(
        too_big,
        Err(BudgetError::RequestCeiling { asked: 1100, .. })
    ));
    for _ in 0..3 {
        let Ok(Admitted::Serve(charge)) =
            budgets.admit("b", &config, &estimate(10, None), 0.0, Some("agent-1"))
        else {
            panic!("within the session ceiling");
        };
        charge.settle(&Usage::new(10, 30, 0, 0, 0), None);
    }
    let loop_stopped = budgets.admit("b", &config, &estimate(10, None), 0.0, Some("agent-1"));
    assert!(matches!(
        loop_stopped,
        Err(BudgetError::SessionCeiling { used: 120, .. })
    ));
    // Under the ceiling, but not with this request's input added: the message says so.
    let near = budgets.admit("b", &config, &estimate(10, None), 0.0, Some("agent-3"));
    let Ok(Admitted::Serve(charge)) = near else {
        panic!("a new session");
    };
    charge.settle(&Usage::new(40, 52, 0, 0, 0), None);
    let Err(refused) = budgets.admit("b", &config, &estimate(10, None), 0.0, Some("agent-3")) else {
        panic!("92 used + 10 estimated passes 100");
    };
    assert_eq!(
        refused.to_string(),
        "session agent-3 has used 92 tokens, and this request's input is estimated at 10 more (102 in all); budget b allows 100 per session (x-llmesh-session-id)"
    );
    assert!(
        budgets
            .admit("b", &config, &estimate(10, None), 0.0, Some("agent-2"))
            .is_ok()
    );
}

#[test]
fn what_is_recorded_carries_on_in_a_new_instance() {
    let clock = ManualClock::at("2026-05-10T12:00:00Z");
    let config = config(BudgetAction::Block);
    let first = budgets(clock.clone());
    assert!(!first.take_changed());
    spend(&first, &config, 0.25);
    let Ok(Admitted::Serve(charge)) = first.admit("b", &config, &estimate(1, None), 0.0, Some("agent"))
    else {
        panic!("served");
    };
    charge.settle(&Usage::new(60, 40, 0, 0, 0), None);
    assert!(
        first.take_changed(),
        "spend and session tokens are news for the state file"
    );
    assert!(!first.take_changed());
    let second = Arc::new(Budgets::new(clock, Arc::new(Metrics::new()), first.recorded()));
    assert!((second.spent("b") - 0.25).abs() < 1e-12);
    let stopped = second.admit("b", &config, &estimate(1, None), 0.0, Some("agent"));
    assert!(
        matches!(stopped, Err(BudgetError::SessionCeiling { used: 100, .. })),
        "{stopped:?}"
    );
}

#[test]
fn a_running_request_holds_its_reservation_until_it_settles() {
    let clock = ManualClock::at("2026-03-10T12:00:00Z");
    let budgets = budgets(clock);
    let config = config(BudgetAction::Block);
    let Ok(Admitted::Serve(first)) = budgets.admit("b", &config, &estimate(1, None), 0.6, None) else {
        panic!("the first request fits");
    };
    let Ok(Admitted::Serve(second)) = budgets.admit("b", &config, &estimate(1, None), 0.6, None) else {
        panic!("0.6 held is below the limit of 1");
    };
    assert!((budgets.reserved("b") - 1.2).abs() < 1e-9);
    let third = budgets.admit("b", &config, &estimate(1, None), 0.6, None);
    assert!(
        matches!(third, Err(BudgetError::Exhausted { .. })),
        "two running requests hold it all"
    );
    first.settle(&Usage::new(1, 1, 0, 0, 0), Some(0.1));
    drop(second); // ended without usage: its hold is released, nothing charged
    assert_eq!(budgets.reserved("b"), 0.0);
    assert!((budgets.spent("b") - 0.1).abs() < 1e-9);
    assert!(budgets.admit("b", &config, &estimate(1, None), 0.6, None).is_ok());
}

#[test]
fn with_sync_the_cluster_total_plus_unacknowledged_spend_is_enforced() {
    let clock = ManualClock::at("2026-03-10T12:00:00Z");
    let budgets = budgets(clock);
    budgets.enable_sync(None);
    let config = config(BudgetAction::Block);
    spend(&budgets, &config, 0.3);
    let report = budgets.next_report("v1").expect("spend to report");
    assert_eq!(report.seq, 1);
    assert!((report.budgets["b"].spent_usd - 0.3).abs() < 1e-9);
    assert_eq!(
        budgets.next_report("v1"),
        Some(report.clone()),
        "resent as it was until acknowledged"
    );
    spend(&budgets, &config, 0.2);
    // The others spent 0.4: the ack's totals hold this report's 0.3 too.
    let start = report.budgets["b"].period_start;
    let total = |usd| BudgetTotal {
        period_start: start,
        spent_usd: usd,
    };
    budgets.acknowledged(Ack {
        seq: 1,
        applied: true,
        totals: [("b".to_owned(), total(0.7))].into(),
    });
    // 0.7 acknowledged + 0.2 unreported = 0.9: still below 1.
    assert!(budgets.admit("b", &config, &estimate(1, None), 0.0, None).is_ok());
    budgets.set_totals([("b".to_owned(), total(0.85))].into());
    let refused = budgets.admit("b", &config, &estimate(1, None), 0.0, None);
    assert!(
        matches!(refused, Err(BudgetError::Exhausted { spent, .. }) if (spent - 1.05).abs() < 1e-9),
        "{refused:?}"
    );
    let next = budgets.next_report("v1").expect("the 0.2");
    assert_eq!(next.seq, 2);
    assert!(budgets.saved_sync().is_some_and(|s| s.in_flight == Some(next)));
}

#[test]
fn a_closed_budget_refuses_once_the_operator_is_not_heard_for_the_staleness_limit() {
    let clock = ManualClock::at("2026-03-10T12:00:00Z");
    let budgets = budgets(clock.clone());
    let open = config(BudgetAction::Block);
    let config = BudgetConfig {
        fail_mode: FailMode::Closed,
        ..open.clone()
    };
    assert!(
        budgets.admit("b", &config, &estimate(1, None), 0.0, None).is_ok(),
        "no sync: no effect"
    );
    budgets.enable_sync(None);
    let never = budgets.admit("b", &config, &estimate(1, None), 0.0, None);
    assert!(matches!(never, Err(BudgetError::Unavailable { .. })), "{never:?}");
    assert!(
        budgets.admit("b", &open, &estimate(1, None), 0.0, None).is_ok(),
        "open keeps serving"
    );
    budgets.heard_from_operator();
    clock.set("2026-03-10T12:00:29Z");
    assert!(budgets.admit("b", &config, &estimate(1, None), 0.0, None).is_ok());
    clock.set("2026-03-10T12:00:30Z");
    let stale = budgets.admit("b", &config, &estimate(1, None), 0.0, None);
    assert!(
        matches!(stale, Err(BudgetError::Unavailable { stale_secs: 30, .. })),
        "{stale:?}"
    );
}

#[test]
fn the_period_end_is_published_in_the_budgets_time_zone() {
    let clock = ManualClock::at("2026-02-01T04:00:00Z"); // still January in New York
    let metrics = Arc::new(Metrics::new());
    let budgets = Budgets::new(clock.clone(), Arc::clone(&metrics), Recorded::default());
    let config = config(BudgetAction::Block);
    let end = || {
        let seconds = metrics
            .budget_period_end
            .with_label_values(&["b", config.period.as_str()])
            .get();
        Timestamp::from_second(seconds as i64)
            .expect("unix time")
            .to_string()
    };
    budgets.publish_all(&BTreeMap::from([("b".to_owned(), config.clone())]));
    assert_eq!(end(), "2026-02-01T05:00:00Z", "local midnight, 1 February");
    clock.set("2026-02-01T05:00:00Z");
    spend(&Arc::new(budgets), &config, 0.1);
    assert_eq!(end(), "2026-03-01T05:00:00Z");
}

#[test]
fn a_keys_spend_is_reported_in_its_budgets_calendar_and_a_new_version_is_reported_alone() {
    // 04:30 UTC on March 1st is still February in New York.
    let clock = ManualClock::at("2026-03-01T04:30:00Z");
    let budgets = budgets(clock);
    let config = config(BudgetAction::Block);
    assert!(
        budgets.key_spend("agent", Some(&config)).is_none(),
        "no sync, no key spend"
    );
    budgets.enable_sync(None);
    assert!(budgets.next_report("v1").is_none(), "nothing to report yet");

    let usage = Usage::new(10, 20, 0, 0, 0);
    let with_budget = budgets.key_spend("agent", Some(&config)).expect("synced");
    with_budget.settle(&usage, Some(0.25));
    with_budget.settle(&usage, Some(0.5));
    budgets
        .key_spend("ops", None)
        .expect("synced")
        .settle(&usage, Some(1.0));
    let report = budgets.next_report("v1").expect("key spend to report");
    assert!(report.budgets.is_empty(), "no budget was charged");
    let february_in_new_york: Timestamp = "2026-02-01T05:00:00Z".parse().expect("time");
    let march_in_utc: Timestamp = "2026-03-01T00:00:00Z".parse().expect("time");
    assert_eq!(
        report.keys["agent"],
        BudgetDelta {
            period_start: february_in_new_york.as_second(),
            spent_usd: 0.75,
            tokens: 60,
        }
    );
    assert_eq!(report.keys["ops"].period_start, march_in_utc.as_second());
    budgets.acknowledged(Ack {
        seq: report.seq,
        applied: true,
        totals: BTreeMap::new(),
    });
    assert!(budgets.next_report("v1").is_none(), "acknowledged");

    // A new configuration in force: reported with no spend, so the operator
    // counts this sidecar in sync.
    budgets.report_version();
    let report = budgets.next_report("v2").expect("the version is due");
    assert_eq!(report.config_version, "v2");
    assert!(report.budgets.is_empty() && report.keys.is_empty());
}
