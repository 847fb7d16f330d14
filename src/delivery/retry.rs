//! Pure retry policy: the delay before attempt n+1 (the list's last entry repeats, with
//! ±10% jitter so a backlog does not retry in lockstep) and queue expiry.

use std::time::Duration;

/// `attempts` = attempts made so far (≥ 1); `jitter` in [0, 1) picks a point in ±10%.
pub fn delay(schedule: &[Duration], attempts: u32, jitter: f64) -> Duration {
    let idx = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(idx)
        .copied()
        .unwrap_or(Duration::from_secs(300));
    base.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

pub fn expired(received_ms: u64, now_ms: u64, lifetime: Duration) -> bool {
    now_ms.saturating_sub(received_ms) >= lifetime.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_expiry() {
        let s = [Duration::from_secs(60), Duration::from_secs(300)];
        assert_eq!(delay(&s, 1, 0.5), Duration::from_secs(60));
        assert_eq!(delay(&s, 2, 0.5), Duration::from_secs(300));
        assert_eq!(delay(&s, 9, 0.5), Duration::from_secs(300));
        assert_eq!(delay(&s, 1, 0.0), Duration::from_secs(54));
        assert_eq!(delay(&s, 1, 1.0), Duration::from_secs(66));
        assert_eq!(delay(&s, 0, 0.5), Duration::from_secs(60));
        let day = Duration::from_secs(86400);
        assert!(!expired(0, 86_399_999, day));
        assert!(expired(0, 86_400_000, day));
        assert!(!expired(10, 5, day));
    }
}
