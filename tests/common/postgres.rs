//! PostgreSQL helpers of the backend tests.

use std::time::Duration;

use server_session::postgres::sqlx;
use server_session::PostgresStore;

/// Waits until a statement on the store's table waits for a row lock. It
/// asks on a connection of its own: the store's pool may have only the one
/// that waits.
pub async fn until_blocked(store: &PostgresStore) {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&super::database_url())
        .await
        .unwrap();
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
        )
        .bind(store.table())
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement on {} ever waited for the lock", store.table());
}
