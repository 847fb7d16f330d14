//! RFC 5322 date-time formatting (UTC), without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

// 1970-01-01 was a Thursday.
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// Any 400 consecutive Gregorian years hold exactly 97 leap years.
const DAYS_PER_400Y: u64 = 400 * 365 + 97;

/// Formats `t` as e.g. `Thu, 26 Nov 2026 15:34:57 +0000`; times before the epoch clamp to it.
pub fn rfc5322(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[month],
        year,
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Seconds since the epoch to UTC (year, month 1..=12, day, hour, minute, second).
pub fn utc(secs: u64) -> (u64, usize, u64, u64, u64, u64) {
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days);
    (year, month + 1, day, sod / 3600, sod / 60 % 60, sod % 60)
}

fn is_leap(y: u64) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

/// Days since 1970-01-01 to (year, month index 0..12, day of month 1..).
fn civil(days: u64) -> (u64, usize, u64) {
    // Skipping whole 400-year cycles bounds both loops below (at most 400 + 12 steps).
    let mut year = 1970 + 400 * (days / DAYS_PER_400Y);
    let mut rest = days % DAYS_PER_400Y;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if rest < len {
            break;
        }
        rest -= len;
        year += 1;
    }
    let mut month = 0;
    loop {
        let len = match month {
            1 if is_leap(year) => 29,
            1 => 28,
            3 | 5 | 8 | 10 => 30,
            _ => 31,
        };
        if rest < len {
            return (year, month, rest + 1);
        }
        rest -= len;
        month += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        rfc5322(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn table() {
        for (secs, want) in [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (946_684_799, "Fri, 31 Dec 1999 23:59:59 +0000"),
            (951_825_600, "Tue, 29 Feb 2000 12:00:00 +0000"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 +0000"),
            (1_795_707_297, "Thu, 26 Nov 2026 15:34:57 +0000"),
            (4_107_485_350, "Sun, 28 Feb 2100 08:09:10 +0000"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 +0000"),
            (13_574_563_200, "Tue, 29 Feb 2400 00:00:00 +0000"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 +0000"),
            (253_402_300_800, "Sat, 01 Jan 10000 00:00:00 +0000"),
        ] {
            assert_eq!(at(secs), want, "{secs}");
        }
    }

    #[test]
    fn before_epoch_clamps() {
        assert_eq!(
            rfc5322(UNIX_EPOCH - Duration::from_secs(1)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn consecutive_days_over_two_cycles() {
        let mut prev = civil(0);
        for d in 1..2 * DAYS_PER_400Y + 1000 {
            let cur = civil(d);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 0, 1);
            assert!(
                cur == next_day
                    || (prev.2 >= 28 && prev.1 < 11 && cur == next_month)
                    || (prev.1 == 11 && prev.2 == 31 && cur == next_year),
                "{prev:?} -> {cur:?}"
            );
            prev = cur;
        }
    }
}
