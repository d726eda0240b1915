//! The order store: one or more databases (SQLite, PostgreSQL, MySQL/MariaDB), orders routed
//! to one of them by a hash of the reservation id, each written with idempotent batched
//! inserts inside one transaction.
//!
//! Idempotence is the primary key on `(reservation_id, line)` (a cart's lines share its id;
//! a one-line reservation is line 0): a redelivered event (the writer died
//! after its commit and before its acknowledgement) inserts nothing the second time. SQLite
//! and PostgreSQL skip a duplicate with `ON CONFLICT DO NOTHING`. MySQL inserts plainly, and a
//! batch with a duplicate in it is written again row by row, each duplicate-key refusal
//! counted as a duplicate: `INSERT IGNORE` would also turn other errors (constraints, bad
//! values) into warnings and lose those rows silently, and `ON DUPLICATE KEY UPDATE` counts a
//! skipped duplicate as a row affected under the found-rows flag sqlx connects with.
//!
//! A row the database refuses for a reason retrying cannot fix goes to `dead_letters` with
//! the error, so one poison row does not stall every order behind it.

use std::time::Duration;

use flashstock_engine::{OrderRef, ReservationId, ReservationState};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::QueryBuilder;

use crate::error::WriterError;

/// Rows per multi-row INSERT statement (SQLite and MySQL; PostgreSQL binds arrays instead).
/// 10 columns x 1,000 rows stays under SQLite's 32,766 bound parameters and MySQL's 65,535.
const ROWS_PER_STATEMENT: usize = 1_000;
/// How long connecting (and taking a pooled connection) may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a writer waits for another process's schema migration of the same MySQL or
/// MariaDB database before giving up (`WriterError::MigrateLocked`).
const MIGRATE_LOCK_WAIT_S: u32 = 60;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mysql");

/// One order row: a reservation that ended, as the stream reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderRow {
    /// The reservation, or the cart (with `line`, the primary key).
    pub reservation: ReservationId,
    /// The line of the cart (0 for a one-line reservation).
    pub line: u8,
    /// The caller's order reference, if one was given.
    pub order_ref: Option<OrderRef>,
    /// Who bought.
    pub buyer: u64,
    /// What was bought.
    pub sku: u64,
    /// How many units.
    pub qty: u32,
    /// How the reservation ended (`Confirmed` for an order).
    pub status: ReservationState,
    /// When it ended, in the server's clock.
    pub ended_at_ms: u64,
    /// Where in the stream it came from: the shard...
    pub stream_shard: u16,
    /// ...and the record's sequence number there.
    pub stream_seq: u64,
}

impl OrderRow {
    fn status_name(&self) -> &'static str {
        self.status.name()
    }

    /// The order reference as 32 lowercase hex digits (a UUID's digits).
    fn order_ref_text(&self) -> Option<String> {
        self.order_ref.map(|r| format!("{:032x}", r.0))
    }
}

/// A return of units of an order row: the row's returned count becomes `returned_total`
/// unless it is already that high.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnRow {
    /// The row's reservation (or cart)...
    pub reservation: ReservationId,
    /// ...and line.
    pub line: u8,
    /// Units of the row returned so far, this return included.
    pub returned_total: u32,
}

/// Ids are u64 in flashstock and BIGINT (signed) in SQL: stored bit for bit, so an id at or
/// above 2^63 reads back negative. Reservation ids never are (their top 16 bits hold a shard
/// number below 2^15).
fn as_sql(id: u64) -> i64 {
    id as i64
}

/// A database and its connection pool.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL server.
    Postgres(PgPool),
    /// A MySQL or MariaDB server.
    MySql(MySqlPool),
}

/// Runs the MySQL migrations under a lock of our own. sqlx takes `GET_LOCK(name, -1)` for
/// them, which MySQL reads as "wait for ever" but MariaDB answers NULL at once, so two
/// writers starting together on a fresh database both migrated and one failed ("Duplicate
/// entry '1' for key 'PRIMARY'"). The lock is the session's: held on one pooled connection
/// while the migrator uses another, and released with it.
async fn migrate_mysql(pool: &MySqlPool, url: &str) -> Result<(), WriterError> {
    let failed = |source: sqlx::Error| WriterError::Database { url: redact(url), source };
    let mut holder = pool.acquire().await.map_err(failed)?;
    // Lock names are at most 64 characters: the database's name (up to 64) goes in hashed.
    let name = "CONCAT('flashstock_migrate_', MD5(DATABASE()))";
    let got: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({name}, ?)"))
        .bind(MIGRATE_LOCK_WAIT_S)
        .fetch_one(&mut *holder)
        .await
        .map_err(failed)?;
    if got != Some(1) {
        return Err(WriterError::MigrateLocked { url: redact(url), waited_s: MIGRATE_LOCK_WAIT_S });
    }
    let migrated = MYSQL_MIGRATIONS.run(pool).await;
    let released = sqlx::query(&format!("SELECT RELEASE_LOCK({name})")).execute(&mut *holder).await;
    migrated.map_err(|source| WriterError::Migrate { url: redact(url), source })?;
    released.map_err(failed)?;
    Ok(())
}

impl Database {
    /// Connects to `url` (`sqlite:PATH`, `postgres://...`, `mysql://...`) and runs the
    /// migrations. Fails at once, with the URL (password hidden) in the error, when the
    /// server is unreachable or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Database, WriterError> {
        let failed = |source: sqlx::Error| WriterError::Database { url: redact(url), source };
        let migrate_failed =
            |source: sqlx::migrate::MigrateError| WriterError::Migrate { url: redact(url), source };
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {
                let options: SqliteConnectOptions = url.parse().map_err(failed)?;
                // WAL journal with synchronous=FULL: a committed transaction survives power
                // loss, which the acknowledgement after it relies on.
                let options = options
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(CONNECT_TIMEOUT);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(failed)?;
                SQLITE_MIGRATIONS.run(&pool).await.map_err(migrate_failed)?;
                Ok(Database::Sqlite(pool))
            }
            "postgres" | "postgresql" => {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(failed)?;
                POSTGRES_MIGRATIONS.run(&pool).await.map_err(migrate_failed)?;
                Ok(Database::Postgres(pool))
            }
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb:", "mysql:", 1);
                let pool = MySqlPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect(&url)
                    .await
                    .map_err(failed)?;
                migrate_mysql(&pool, &url).await?;
                Ok(Database::MySql(pool))
            }
            _ => Err(WriterError::UnknownScheme { url: redact(url) }),
        }
    }

    /// Writes `rows`: in one transaction when the database takes them all; when it refuses
    /// the batch for a reason retrying cannot fix, row by row, each refused row going to
    /// `dead_letters` with the database's error. An error that retrying may fix (the database
    /// gone, a deadlock, a full disk) is returned, and nothing of the batch is lost: the
    /// caller retries it whole, and rows already stored are skipped as duplicates.
    pub async fn write(&self, rows: &[OrderRow]) -> Result<Written, sqlx::Error> {
        match self.insert(rows).await {
            Ok(inserted) => {
                Ok(Written { inserted, duplicates: rows.len() as u64 - inserted, dead: 0 })
            }
            Err(err) if is_about_the_rows(&err) => self.write_row_by_row(rows).await,
            Err(err) => Err(err),
        }
    }

    async fn write_row_by_row(&self, rows: &[OrderRow]) -> Result<Written, sqlx::Error> {
        let mut written = Written::default();
        for row in rows {
            match self.insert(std::slice::from_ref(row)).await {
                Ok(1) => written.inserted += 1,
                Ok(_) => written.duplicates += 1,
                // MySQL inserts plainly (no IGNORE, which would hide other errors too): a
                // redelivered row is refused by the primary key.
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    written.duplicates += 1;
                }
                Err(err) if is_about_the_rows(&err) => {
                    let error = err.to_string();
                    tracing::error!(
                        reservation = row.reservation.0,
                        stream_shard = row.stream_shard,
                        stream_seq = row.stream_seq,
                        %error,
                        "the database refused an order row; kept in dead_letters"
                    );
                    self.dead_letter(row, &error).await?;
                    written.dead += 1;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(written)
    }

    /// Stores `row` and why it was refused in `dead_letters` (once per reservation).
    async fn dead_letter(&self, row: &OrderRow, error: &str) -> Result<(), sqlx::Error> {
        const COLUMNS: &str = "reservation_id, line, order_ref, buyer_id, sku_id, qty, status, \
                               ended_at_ms, stream_shard, stream_seq, error";
        let (skip, placeholders) = match self {
            Database::Postgres(_) => (
                " ON CONFLICT (reservation_id, line) DO NOTHING",
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11",
            ),
            Database::Sqlite(_) => (
                " ON CONFLICT (reservation_id, line) DO NOTHING",
                "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
            ),
            Database::MySql(_) => {
                (" ON DUPLICATE KEY UPDATE error = error", "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?")
            }
        };
        let sql = format!("INSERT INTO dead_letters ({COLUMNS}) VALUES ({placeholders}){skip}");
        macro_rules! bound {
            ($pool:expr) => {
                sqlx::query(&sql)
                    .bind(as_sql(row.reservation.0))
                    .bind(i16::from(row.line))
                    .bind(row.order_ref_text())
                    .bind(as_sql(row.buyer))
                    .bind(as_sql(row.sku))
                    .bind(row.qty as i32)
                    .bind(row.status_name())
                    .bind(as_sql(row.ended_at_ms))
                    .bind(row.stream_shard as i16)
                    .bind(as_sql(row.stream_seq))
                    .bind(error)
                    .execute($pool)
                    .await
                    .map(drop)
            };
        }
        match self {
            Database::Sqlite(pool) => bound!(pool),
            Database::Postgres(pool) => bound!(pool),
            Database::MySql(pool) => bound!(pool),
        }
    }

    /// Applies returns to their rows, in one transaction; returns how many found no row (an
    /// order the writer never stored: dead-lettered, or confirmed before its consumer began).
    /// Idempotent: a row's returned count only rises, to each return's running total.
    pub async fn apply_returns(&self, returns: &[ReturnRow]) -> Result<u64, sqlx::Error> {
        // Status first: MySQL evaluates assignments in order, the others on the old row.
        const SET: &str = "status = CASE WHEN {max}(returned_qty, {p1}) >= qty THEN 'returned' \
                           ELSE status END, returned_qty = {max}(returned_qty, {p2})";
        let (max, p) = match self {
            Database::Sqlite(_) => ("MAX", ["?", "?", "?", "?"]),
            Database::Postgres(_) => ("GREATEST", ["$1", "$2", "$3", "$4"]),
            Database::MySql(_) => ("GREATEST", ["?", "?", "?", "?"]),
        };
        let set = SET.replace("{max}", max).replace("{p1}", p[0]).replace("{p2}", p[1]);
        let sql =
            format!("UPDATE orders SET {set} WHERE reservation_id = {} AND line = {}", p[2], p[3]);
        macro_rules! apply {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let mut unmatched = 0;
                for r in returns {
                    let total = i64::from(r.returned_total);
                    let matched = sqlx::query(&sql)
                        .bind(total)
                        .bind(total)
                        .bind(as_sql(r.reservation.0))
                        .bind(i16::from(r.line))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    unmatched += u64::from(matched == 0);
                }
                tx.commit().await?;
                Ok(unmatched)
            }};
        }
        match self {
            Database::Sqlite(pool) => apply!(pool),
            Database::Postgres(pool) => apply!(pool),
            Database::MySql(pool) => apply!(pool),
        }
    }

    /// Units returned of the row `(reservation, line)`, and its status; `None` without a row.
    pub async fn returned(
        &self,
        reservation: ReservationId,
        line: u8,
    ) -> Result<Option<(u32, String)>, sqlx::Error> {
        let sql = "SELECT returned_qty, status FROM orders WHERE reservation_id = ";
        let (id, line) = (as_sql(reservation.0), i16::from(line));
        let row: Option<(i64, String)> = match self {
            Database::Sqlite(pool) => {
                let sql = format!("{sql}? AND line = ?");
                sqlx::query_as(&sql).bind(id).bind(line).fetch_optional(pool).await?
            }
            Database::Postgres(pool) => {
                let sql = "SELECT returned_qty::int8, status FROM orders \
                           WHERE reservation_id = $1 AND line = $2";
                sqlx::query_as(sql).bind(id).bind(line).fetch_optional(pool).await?
            }
            Database::MySql(pool) => {
                let sql = "SELECT CAST(returned_qty AS SIGNED), status FROM orders \
                           WHERE reservation_id = ? AND line = ?";
                sqlx::query_as(sql).bind(id).bind(line).fetch_optional(pool).await?
            }
        };
        Ok(row.map(|(returned, status)| (returned as u32, status)))
    }

    /// Rows kept in `dead_letters`.
    pub async fn count_dead_letters(&self) -> Result<u64, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM dead_letters";
        let count: i64 = match self {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Database::MySql(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(count as u64)
    }

    /// Inserts `rows` in one transaction, skipping reservations already stored (on MySQL a
    /// stored one fails the batch: see `write`); returns how many rows were new.
    async fn insert(&self, rows: &[OrderRow]) -> Result<u64, sqlx::Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut inserted = 0;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut query = values_insert("INSERT", chunk);
                    query.push(" ON CONFLICT (reservation_id, line) DO NOTHING");
                    inserted += query.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(inserted)
            }
            Database::MySql(pool) => {
                let mut tx = pool.begin().await?;
                let mut inserted = 0;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut query = values_insert("INSERT", chunk);
                    inserted += query.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(inserted)
            }
            Database::Postgres(pool) => {
                // One statement whatever the batch size: columns bound as arrays and UNNESTed,
                // so the statement is prepared once and reused.
                let inserted = sqlx::query(
                    "INSERT INTO orders (reservation_id, line, order_ref, buyer_id, sku_id, qty, \
                     status, ended_at_ms, stream_shard, stream_seq) \
                     SELECT * FROM UNNEST($1::int8[], $2::int2[], $3::varchar[], $4::int8[], \
                     $5::int8[], $6::int4[], $7::varchar[], $8::int8[], $9::int2[], \
                     $10::int8[]) \
                     ON CONFLICT (reservation_id, line) DO NOTHING",
                )
                .bind(rows.iter().map(|r| as_sql(r.reservation.0)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| i16::from(r.line)).collect::<Vec<_>>())
                .bind(rows.iter().map(OrderRow::order_ref_text).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| as_sql(r.buyer)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| as_sql(r.sku)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.qty as i32).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.status_name()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| as_sql(r.ended_at_ms)).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.stream_shard as i16).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| as_sql(r.stream_seq)).collect::<Vec<_>>())
                .execute(pool)
                .await?
                .rows_affected();
                Ok(inserted)
            }
        }
    }

    /// Rows stored with `status` (for audits and tests).
    pub async fn count(&self, status: &str) -> Result<u64, sqlx::Error> {
        self.count_where("", status).await
    }

    /// Rows stored with `status` for any of `skus` (for the load generator's audit).
    pub async fn count_for_skus(&self, status: &str, skus: &[u64]) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for chunk in skus.chunks(1_000) {
            let ids = chunk.iter().map(|&s| as_sql(s).to_string()).collect::<Vec<_>>().join(",");
            // The ids are integers formatted here, never caller text: no injection.
            total += self.count_where(&format!("sku_id IN ({ids}) AND "), status).await?;
        }
        Ok(total)
    }

    /// `SELECT COUNT(*) FROM orders WHERE <filter>status = <status>`.
    async fn count_where(&self, filter: &str, status: &str) -> Result<u64, sqlx::Error> {
        let sql = format!("SELECT COUNT(*) FROM orders WHERE {filter}status = ");
        let count: i64 = match self {
            Database::Sqlite(pool) => {
                sqlx::query_scalar(&format!("{sql}?")).bind(status).fetch_one(pool).await?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar(&format!("{sql}$1")).bind(status).fetch_one(pool).await?
            }
            Database::MySql(pool) => {
                sqlx::query_scalar(&format!("{sql}?")).bind(status).fetch_one(pool).await?
            }
        };
        Ok(count as u64)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
            Database::MySql(pool) => pool.close().await,
        }
    }
}

/// What writing a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows stored now.
    pub inserted: u64,
    /// Rows stored before (a redelivered event).
    pub duplicates: u64,
    /// Rows the database refused, kept in `dead_letters`.
    pub dead: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.dead += other.dead;
    }
}

/// Whether `err` is about the rows themselves (a constraint, a type, a trigger, a duplicate),
/// which retrying cannot fix, rather than about the database's state (gone, locked, full,
/// shutting down), which it may.
fn is_about_the_rows(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else { return false };
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Lock wait timeout, deadlock, table or disk full, server shutting down.
        return !matches!(mysql.number(), 1205 | 1213 | 1114 | 1021 | 1053);
    }
    let code = db.code().unwrap_or_default();
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The primary result code: BUSY, LOCKED, IOERR, FULL are the database's state.
        let primary = code.parse::<u32>().unwrap_or(0) & 0xff;
        return !matches!(primary, 5 | 6 | 10 | 13);
    }
    // PostgreSQL SQLSTATE classes: transaction rollback (serialization, deadlock), resources,
    // operator intervention, system errors, connection exceptions.
    !(code.starts_with("40")
        || code.starts_with("53")
        || code.starts_with("57")
        || code.starts_with("58")
        || code.starts_with("08")
        || code == "55P03")
}

/// `<insert> INTO orders (...) VALUES (...), (...)` for SQLite and MySQL (same placeholders).
fn values_insert<DB>(insert: &str, rows: &[OrderRow]) -> QueryBuilder<'static, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    &'static str: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new(format!(
        "{insert} INTO orders (reservation_id, line, order_ref, buyer_id, sku_id, qty, status, \
         ended_at_ms, stream_shard, stream_seq) "
    ));
    query.push_values(rows, |mut b, row| {
        b.push_bind(as_sql(row.reservation.0))
            .push_bind(i32::from(row.line))
            .push_bind(row.order_ref_text())
            .push_bind(as_sql(row.buyer))
            .push_bind(as_sql(row.sku))
            .push_bind(row.qty as i32)
            .push_bind(row.status_name())
            .push_bind(as_sql(row.ended_at_ms))
            .push_bind(i32::from(row.stream_shard))
            .push_bind(as_sql(row.stream_seq));
    });
    query
}

/// The URL with any password replaced, for errors and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// See [`OrderStore::route`].
pub fn route(reservation: ReservationId, database_count: usize) -> usize {
    (flashstock_engine::mix64(reservation.0) % database_count as u64) as usize
}

/// Several databases, each holding the orders whose reservation id hashes to it.
#[derive(Debug, Clone)]
pub struct OrderStore {
    databases: Vec<Database>,
}

impl OrderStore {
    /// Connects to every URL (in order: the position is the routing, so keep it fixed).
    pub async fn connect(urls: &[String]) -> Result<OrderStore, WriterError> {
        if urls.is_empty() {
            return Err(WriterError::Config("at least one database URL".to_owned()));
        }
        let mut databases = Vec::with_capacity(urls.len());
        for url in urls {
            databases.push(Database::connect(url).await?);
            tracing::info!(url = %redact(url), "database ready");
        }
        Ok(OrderStore { databases })
    }

    /// The databases, in routing order.
    pub fn databases(&self) -> &[Database] {
        &self.databases
    }

    /// Which database holds `reservation`'s row: a fixed mix of the id (the SplitMix64
    /// finaliser), modulo the database count. Stable across versions: changing it would move
    /// rows and break idempotence.
    pub fn route(&self, reservation: ReservationId) -> usize {
        route(reservation, self.databases.len())
    }

    /// Writes `rows` (see [`Database::write`]), each database's share in its own transaction,
    /// the databases concurrently. Ok only when every database has written its share.
    pub async fn write(&self, rows: &[OrderRow]) -> Result<Written, sqlx::Error> {
        if self.databases.len() == 1 {
            return self.databases[0].write(rows).await;
        }
        let mut shares = vec![Vec::new(); self.databases.len()];
        for row in rows {
            shares[self.route(row.reservation)].push(*row);
        }
        let mut writes = tokio::task::JoinSet::new();
        for (database, share) in self.databases.iter().cloned().zip(shares) {
            writes.spawn(async move { database.write(&share).await });
        }
        let mut written = Written::default();
        let mut failure = None;
        while let Some(done) = writes.join_next().await {
            match done.expect("an insert task never panics") {
                Ok(share) => written += share,
                Err(err) => failure = Some(err),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(written),
        }
    }

    /// Applies returns (see [`Database::apply_returns`]), each to its row's database; returns
    /// how many found no row.
    pub async fn apply_returns(&self, returns: &[ReturnRow]) -> Result<u64, sqlx::Error> {
        let mut shares = vec![Vec::new(); self.databases.len()];
        for r in returns {
            shares[self.route(r.reservation)].push(*r);
        }
        let mut unmatched = 0;
        for (database, share) in self.databases.iter().zip(shares) {
            if !share.is_empty() {
                unmatched += database.apply_returns(&share).await?;
            }
        }
        Ok(unmatched)
    }

    /// Units returned of the row `(reservation, line)` and its status, from its database.
    pub async fn returned(
        &self,
        reservation: ReservationId,
        line: u8,
    ) -> Result<Option<(u32, String)>, sqlx::Error> {
        self.databases[self.route(reservation)].returned(reservation, line).await
    }

    /// Rows kept in `dead_letters`, summed over the databases.
    pub async fn count_dead_letters(&self) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for database in &self.databases {
            total += database.count_dead_letters().await?;
        }
        Ok(total)
    }

    /// Rows stored with `status` for any of `skus`, summed over the databases.
    pub async fn count_for_skus(&self, status: &str, skus: &[u64]) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for database in &self.databases {
            total += database.count_for_skus(status, skus).await?;
        }
        Ok(total)
    }

    /// Rows stored with `status`, summed over the databases.
    pub async fn count(&self, status: &str) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for database in &self.databases {
            total += database.count(status).await?;
        }
        Ok(total)
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for database in &self.databases {
            database.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_routing_spreads() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:***@db:5432/x");
        assert_eq!(redact("mysql://root@127.0.0.1/test"), "mysql://root@127.0.0.1/test");
        assert_eq!(redact("sqlite:orders.db"), "sqlite:orders.db");
        // Consecutive reservations of one shard spread evenly over three databases.
        let mut counts = [0u32; 3];
        for seq in 1..=3_000 {
            counts[route(
                ReservationId::new(flashstock_engine::Slot(0), flashstock_engine::ShardId(1), seq),
                3,
            )] += 1;
        }
        assert!(counts.iter().all(|&c| (900..=1_100).contains(&c)), "{counts:?}");
        assert_eq!(route(ReservationId(42), 1), 0);
    }
}
