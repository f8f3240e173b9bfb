//! # server-session
//!
//! Pluggable server-side session stores. Depend on this crate and pick
//! backends by Cargo feature:
//!
//! | feature | store | crate |
//! | --- | --- | --- |
//! | `memory` (default) | `MemoryStore` | `session-store-memory` |
//! | `redis` | `RedisStore`, `RedisClusterStore` | `session-store-redis` |
//! | `sqlite` | `SqliteStore` | `session-store-sqlite` |
//! | `postgres` | `PostgresStore` | `session-store-postgres` |
//! | `fs` | `FsStore` | `session-store-fs` |
//! | `mysql` | `MysqlStore` | `session-store-mysql` |
//!
//! Everything from the core crate (`session-store`) is re-exported here: the
//! [`SessionInterface`] trait, [`Session`], [`SessionManager`] and friends.
//!
//! [`open()`] opens whichever compiled-in store a URL names
//! (`sqlite://sessions.db`, `redis://127.0.0.1:6379?prefix=app:`, ...), for
//! apps that configure their store from an environment variable.
#![warn(missing_docs)]

pub use session_store::*;

pub mod open;
pub use open::{open, open_with, OpenOptions};

/// The Redis and Redis Cluster stores (feature `redis`).
#[cfg(feature = "redis")]
pub use session_store_redis as redis;
#[cfg(feature = "redis")]
pub use session_store_redis::{RedisClusterConfig, RedisClusterStore, RedisConfig, RedisStore};

/// The SQLite store (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use session_store_sqlite as sqlite;
#[cfg(feature = "sqlite")]
pub use session_store_sqlite::{SqliteConfig, SqliteStore};

/// The PostgreSQL store (feature `postgres`).
#[cfg(feature = "postgres")]
pub use session_store_postgres as postgres;
#[cfg(feature = "postgres")]
pub use session_store_postgres::{PostgresConfig, PostgresStore};

/// The MySQL/MariaDB store (feature `mysql`).
#[cfg(feature = "mysql")]
pub use session_store_mysql as mysql;
#[cfg(feature = "mysql")]
pub use session_store_mysql::{MysqlConfig, MysqlStore};

/// The file store (feature `fs`).
#[cfg(feature = "fs")]
pub use session_store_fs as fs;
#[cfg(feature = "fs")]
pub use session_store_fs::{FsConfig, FsStore};

/// axum / tower integration (feature `axum`): `SessionLayer` and the `Session` extractor.
#[cfg(feature = "axum")]
pub use session_axum as axum;

/// actix-web integration (feature `actix`): `SessionMiddleware` and the `Session` extractor.
#[cfg(feature = "actix")]
pub use session_actix as actix;

/// The in-memory store (feature `memory`).
#[cfg(feature = "memory")]
pub use session_store_memory::MemoryStore;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
