//! Budget enforcement with a clock moved by hand.

use std::sync::Arc;

use jiff::Timestamp;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::{BudgetAction, BudgetPeriod};
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
    match budgets.admit("b", config, &estimate(1, None), None) {
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
        .admit("b", &config, &estimate(1, None), None)
        .expect_err("exhausted");
    assert!(refused.to_string().contains("budget b is exhausted"), "{refused}");
    assert_eq!(refused.retry_after_secs(), Some(3600), "resets at local midnight");

    clock.set("2026-02-01T05:00:00Z"); // 1 February, 00:00 in New York.
    assert!(budgets.admit("b", &config, &estimate(1, None), None).is_ok());
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
            .admit("b", &config, &estimate(1, None), None)
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
    let too_big = budgets.admit("b", &config, &estimate(200, Some(900)), None);
    assert!(matches!(
        too_big,
        Err(BudgetError::RequestCeiling { asked: 1100, .. })
    ));
    for _ in 0..3 {
        let Ok(Admitted::Serve(charge)) = budgets.admit("b", &config, &estimate(10, None), Some("agent-1"))
        else {
            panic!("within the session ceiling");
        };
        charge.settle(&Usage::new(10, 30, 0, 0, 0), None);
    }
    let loop_stopped = budgets.admit("b", &config, &estimate(10, None), Some("agent-1"));
    assert!(matches!(
        loop_stopped,
        Err(BudgetError::SessionCeiling { used: 120, .. })
    ));
    assert!(
        budgets
            .admit("b", &config, &estimate(10, None), Some("agent-2"))
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
    let Ok(Admitted::Serve(charge)) = first.admit("b", &config, &estimate(1, None), Some("agent")) else {
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
    let stopped = second.admit("b", &config, &estimate(1, None), Some("agent"));
    assert!(
        matches!(stopped, Err(BudgetError::SessionCeiling { used: 100, .. })),
        "{stopped:?}"
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
