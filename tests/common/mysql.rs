//! MySQL helpers of the backend tests: a migrated store, and row locks held
//! by a second connection to put a race exactly where it would happen.

use std::time::Duration;

use server_session::mysql::sqlx;
use server_session::{MysqlConfig, MysqlStore};

/// The configuration the tests start from: `table` on `MYSQL_URL`, four
/// connections.
pub fn config(table: String) -> MysqlConfig {
    MysqlConfig {
        table,
        pool_size: 4,
        ..MysqlConfig::new(super::mysql_url())
    }
}

/// A migrated store made with `config`, or `None` (said, and failing under
/// CI) when the server cannot be reached.
pub async fn store(config: MysqlConfig) -> Option<MysqlStore> {
    let url = config.url.clone();
    let store = match MysqlStore::connect_with(config).await {
        Ok(store) => store,
        Err(e) => {
            super::unreachable("mysql", &url, e);
            return None;
        }
    };
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A transaction on a connection of its own (not the store's pool) that ran
/// `sql` (with `{t}` the table, and `binds` bound in order) and holds the
/// locks it took: exactly one row.
pub async fn locking(
    store: &MysqlStore,
    sql: &str,
    binds: &[&[u8]],
) -> sqlx::Transaction<'static, sqlx::MySql> {
    let pool = sqlx::MySqlPool::connect(&super::mysql_url()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let sql = sql.replace("{t}", &format!("`{}`", store.table()));
    let mut query = sqlx::query(&sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    let locked = if sql.starts_with("SELECT") {
        query.fetch_all(&mut *tx).await.unwrap().len() as u64
    } else {
        query.execute(&mut *tx).await.unwrap().rows_affected()
    };
    assert_eq!(locked, 1, "{sql} locked nothing");
    tx
}

/// Waits until a statement on the store's table waits for a row lock:
/// MariaDB's `innodb_trx` does not show a prepared statement that waits in
/// the optimizer's primary-key lookup, so this looks for a statement on the
/// table that has been running for a while (nothing else here takes long).
pub async fn until_blocked(store: &MysqlStore) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist
             WHERE id <> CONNECTION_ID() AND command IN ('Query', 'Execute')
             AND time_ms > 200 AND LOCATE(?, info) > 0",
        )
        .bind(format!("`{}`", store.table()))
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no statement on {} ever waited for the lock", store.table());
}

/// `bytes` in lowercase hex, for `X'…'` literals.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
