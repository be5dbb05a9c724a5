//! Budget periods: calendar-aligned in the budget's time zone.

use crate::config::BudgetConfig;
use crate::resources::BudgetPeriod;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The start of the period `now` falls in, as a Unix second; 0 for `total`
/// (one period since the beginning of time).
pub fn start(period: BudgetPeriod, time_zone: &TimeZone, now: Timestamp) -> i64 {
    let local = now.to_zoned(time_zone.clone());
    let date = local.date();
    let first_day = match period {
        BudgetPeriod::Total => return 0,
        BudgetPeriod::Daily => date,
        BudgetPeriod::Weekly => {
            let back = i64::from(date.weekday().since(Weekday::Monday));
            date.checked_sub(back.days()).unwrap_or(date)
        }
        BudgetPeriod::Monthly => date.first_of_month(),
    };
    first_day
        .to_zoned(time_zone.clone())
        .map_or(0, |midnight| midnight.timestamp().as_second())
}

/// The start of the period after the one starting at `start`; `None` for `total`.
pub fn next_start(period: BudgetPeriod, time_zone: &TimeZone, start: i64) -> Option<i64> {
    let length = match period {
        BudgetPeriod::Total => return None,
        BudgetPeriod::Daily => 1.day(),
        BudgetPeriod::Weekly => 1.week(),
        BudgetPeriod::Monthly => 1.month(),
    };
    let local = Timestamp::from_second(start).ok()?.to_zoned(time_zone.clone());
    // Calendar arithmetic on the civil date, so a DST change does not shift midnight.
    let next = local.date().checked_add(length).ok()?;
    next.to_zoned(time_zone.clone())
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// The calendar a VirtualKey's spend is counted in: its budget's period and
/// time zone, or a month in UTC for a key without a budget.
pub fn of_key(budget: Option<&BudgetConfig>) -> (BudgetPeriod, &str) {
    budget.map_or((BudgetPeriod::Monthly, "UTC"), |b| {
        (b.period, b.time_zone.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone")
    }

    #[test]
    fn periods_start_at_local_midnight() {
        let utc = tz("UTC");
        let berlin = tz("Europe/Berlin");
        let now = at("2026-03-31T22:30:00Z"); // already 1 April, 00:30, in Berlin (CEST, +2)
        let cases = [
            (BudgetPeriod::Daily, &utc, "2026-03-31T00:00:00Z"),
            (BudgetPeriod::Daily, &berlin, "2026-03-31T22:00:00Z"),
            (BudgetPeriod::Monthly, &utc, "2026-03-01T00:00:00Z"),
            (BudgetPeriod::Monthly, &berlin, "2026-03-31T22:00:00Z"),
            // Tuesday 31 March; the week began Monday 30 March.
            (BudgetPeriod::Weekly, &utc, "2026-03-30T00:00:00Z"),
        ];
        for (period, zone, expected) in cases {
            assert_eq!(
                start(period, zone, now),
                at(expected).as_second(),
                "{period:?} {zone:?}"
            );
        }
        assert_eq!(start(BudgetPeriod::Total, &utc, now), 0);
    }

    #[test]
    fn the_next_period_follows_the_calendar() {
        let berlin = tz("Europe/Berlin");
        let march = at("2026-02-28T23:00:00Z").as_second(); // 1 March, CET (+1)
        assert_eq!(
            next_start(BudgetPeriod::Monthly, &berlin, march),
            Some(at("2026-03-31T22:00:00Z").as_second()),
            "1 April is in summer time (+2)"
        );
        assert_eq!(next_start(BudgetPeriod::Total, &berlin, 0), None);
    }
}
