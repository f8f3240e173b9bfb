//! Running again what the database undid to break a deadlock.

use std::time::Duration;

/// How many times work that deadlocks runs in all before the deadlock is
/// the caller's error (all within the operation timeout).
pub const DEADLOCK_ATTEMPTS: u32 = 5;

/// The tries of one piece of work that the database may undo whole to
/// break a deadlock: one statement, or a transaction that is never
/// committed when a try fails. Only for such work: a try that failed left
/// nothing behind, so running it again cannot apply anything twice.
///
/// ```text
/// let mut retry = DeadlockRetry::new("revoke_user", table);
/// loop {
///     match work().await {
///         Err(e) if deadlocked(&e) && retry.left() => retry.pause().await,
///         done => return done,
///     }
/// }
/// ```
#[derive(Debug)]
pub struct DeadlockRetry<'a> {
    what: &'static str,
    table: &'a str,
    attempt: u32,
}

impl<'a> DeadlockRetry<'a> {
    /// The first try of `what` on `table` (both for the log).
    pub fn new(what: &'static str, table: &'a str) -> Self {
        DeadlockRetry {
            what,
            table,
            attempt: 1,
        }
    }

    /// Whether another try is allowed.
    pub fn left(&self) -> bool {
        self.attempt < DEADLOCK_ATTEMPTS
    }

    /// Before the next try: waits 10, 20, 40, then 80 ms, so the other
    /// party to the deadlock can finish first.
    pub async fn pause(&mut self) {
        tracing::debug!(
            table = %self.table,
            attempt = self.attempt,
            "{} was a deadlock's victim; running it again",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(5 << self.attempt)).await;
        self.attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tries_run_out_after_the_last_attempt_and_pauses_grow() {
        let mut retry = DeadlockRetry::new("revoke_user", "sessions");
        let mut pauses = Vec::new();
        while retry.left() {
            let before = tokio::time::Instant::now();
            retry.pause().await;
            pauses.push(before.elapsed().as_millis());
        }
        assert_eq!(pauses, [10, 20, 40, 80]);
        assert_eq!(pauses.len() as u32 + 1, DEADLOCK_ATTEMPTS);
    }
}
