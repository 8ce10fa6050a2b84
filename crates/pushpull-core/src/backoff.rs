//! Delays between reconnection attempts.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a random time between half and all
/// of `min(max, initial * 2^n)`, so clients dropped together do not return together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Backoff {
    /// The delay before the first retry.
    #[serde(with = "crate::duration_text")]
    pub initial: Duration,
    /// The longest delay.
    #[serde(with = "crate::duration_text")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// Delays from `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay before retry number `attempt` (0 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let mut bytes = [0u8; 4];
        let fraction = match getrandom::fill(&mut bytes) {
            Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
            Err(_) => 0.5,
        };
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) };
        for attempt in 0..30 {
            let ceiling =
                Duration::from_millis(100 * (1u64 << attempt.min(10))).min(Duration::from_secs(1));
            let delay = backoff.delay(attempt);
            assert!(delay <= ceiling && delay >= ceiling / 2, "attempt {attempt}: {delay:?}");
        }
    }
}
