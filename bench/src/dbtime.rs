//! MariaDB's own accounting of the controller's database time: every
//! statement the controller's user ran, with how long the server spent on
//! it, from performance_schema's statement history, grouped into poll
//! ticks; and per kind of statement (the `/* multinic <what> */` tag of
//! each prepared statement) from its prepared-statement statistics. The
//! history does not say which prepared statement an execution was
//! (MariaDB leaves its text empty), hence the two sources.
//!
//! A statement's time is the server's, from start to the last row sent:
//! for a read of many rows it includes waiting for the client to take them.
//!
//! Exists so that "DB time per idle tick" and "per full read" come from the
//! database itself, not from the controller's clock (which would add the
//! network and the client). Profiling (`SET profiling`) only sees its own
//! session, so performance_schema is the one that sees the controller's:
//! the benchmark starts its server with statement history on. Reading the
//! history never runs as the controller's user and never touches its
//! tables.

use std::collections::BTreeMap;
use std::time::Duration;

use multinic_testkit::mariadb::USER;
use serde::Serialize;
use sqlx::MySqlConnection;

use crate::BenchError;
use crate::stats::Latency;

/// Statements kept in the server's history: a minute of idle ticks and the
/// change rounds between two readings fit many times over.
pub const HISTORY: u32 = 20_000;

/// One statement the controller ran (times in picoseconds of the server's
/// statement clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub start_ps: i64,
    pub end_ps: i64,
    /// The server's time on it.
    pub wait_ps: i64,
    /// It began a transaction or sent more than one row: a read of rows,
    /// not a probe or a lock check.
    pub reads_rows: bool,
}

/// The server's statement clock now.
pub async fn clock(root: &mut MySqlConnection) -> Result<i64, BenchError> {
    sqlx::query_scalar(
        "SELECT CAST(TIMER_START AS SIGNED) FROM performance_schema.events_statements_current \
         WHERE THREAD_ID = (SELECT THREAD_ID FROM performance_schema.threads WHERE PROCESSLIST_ID = CONNECTION_ID())",
    )
    .fetch_one(&mut *root)
    .await
    .map_err(|source| BenchError::Sql { what: "read performance_schema's clock", source })
}

/// The controller user's statements that began at or after `from` and
/// ended by `to` (two [`clock`] readings), in order.
pub async fn statements(root: &mut MySqlConnection, from: i64, to: i64) -> Result<Vec<Statement>, BenchError> {
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT CAST(h.TIMER_START AS SIGNED), CAST(h.TIMER_END AS SIGNED), CAST(h.TIMER_WAIT AS SIGNED), \
                CAST(h.EVENT_NAME = 'statement/sql/begin' OR h.ROWS_SENT > 1 AS SIGNED) \
         FROM performance_schema.events_statements_history_long h \
         JOIN performance_schema.threads t ON t.THREAD_ID = h.THREAD_ID \
         WHERE t.PROCESSLIST_USER = ? AND h.TIMER_START >= ? AND h.TIMER_END <= ? \
         ORDER BY h.TIMER_START",
    )
    .bind(USER)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *root)
    .await
    .map_err(|source| BenchError::Sql { what: "read the statement history", source })?;
    Ok(rows
        .into_iter()
        .map(|(start_ps, end_ps, wait_ps, reads)| Statement { start_ps, end_ps, wait_ps, reads_rows: reads != 0 })
        .collect())
}

/// One prepared statement's executions so far, on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub thread: i64,
    pub id: i64,
    /// The `/* multinic <what> */` tag of its text, or `other`.
    pub kind: String,
    pub count: i64,
    pub sum_ps: i64,
}

/// Every prepared statement of the controller's user, with its counts.
pub async fn prepared(root: &mut MySqlConnection) -> Result<Vec<Prepared>, BenchError> {
    let rows: Vec<(i64, i64, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT CAST(p.OWNER_THREAD_ID AS SIGNED), CAST(p.STATEMENT_ID AS SIGNED), LEFT(p.SQL_TEXT, 40), \
                CAST(p.COUNT_EXECUTE AS SIGNED), CAST(p.SUM_TIMER_EXECUTE AS SIGNED) \
         FROM performance_schema.prepared_statements_instances p \
         JOIN performance_schema.threads t ON t.THREAD_ID = p.OWNER_THREAD_ID \
         WHERE t.PROCESSLIST_USER = ?",
    )
    .bind(USER)
    .fetch_all(&mut *root)
    .await
    .map_err(|source| BenchError::Sql { what: "read the prepared statements", source })?;
    Ok(rows
        .into_iter()
        .map(|(thread, id, text, count, sum_ps)| Prepared {
            thread,
            id,
            kind: kind_of(text.as_deref().unwrap_or_default()),
            count,
            sum_ps,
        })
        .collect())
}

/// The tag of a statement's text.
fn kind_of(text: &str) -> String {
    text.strip_prefix("/* multinic ")
        .and_then(|rest| rest.split_whitespace().next())
        .map_or_else(|| "other".to_owned(), str::to_owned)
}

/// One poll tick: the statements that followed each other closely.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub db: Duration,
    pub statements: usize,
    /// It read rows (in the idle window: the periodic full read).
    pub reads_rows: bool,
}

/// Groups statements into ticks: a statement that starts less than `gap`
/// after the previous one ended belongs to the same tick (a tick's
/// statements run back to back; ticks are a poll interval apart).
pub fn ticks(statements: &[Statement], gap: Duration) -> Vec<Tick> {
    let gap_ps = i64::try_from(gap.as_nanos()).unwrap_or(i64::MAX).saturating_mul(1000);
    let mut ticks: Vec<Tick> = Vec::new();
    let mut last_end = None;
    for s in statements {
        let joins = last_end.is_some_and(|end: i64| s.start_ps.saturating_sub(end) < gap_ps);
        if !joins {
            ticks.push(Tick { db: Duration::ZERO, statements: 0, reads_rows: false });
        }
        if let Some(tick) = ticks.last_mut() {
            tick.db += picos(s.wait_ps);
            tick.statements += 1;
            tick.reads_rows |= s.reads_rows;
        }
        last_end = Some(last_end.map_or(s.end_ps, |end: i64| end.max(s.end_ps)));
    }
    ticks
}

/// DB time of each kind of statement over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindTime {
    pub kind: String,
    pub count: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
}

/// The executions between two readings of [`prepared`], per kind.
pub fn kinds_between(before: &[Prepared], after: &[Prepared]) -> Vec<KindTime> {
    let mut kinds: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for p in after {
        let earlier = before.iter().find(|b| (b.thread, b.id) == (p.thread, p.id));
        let (count, sum) = earlier.map_or((p.count, p.sum_ps), |b| (p.count - b.count, p.sum_ps - b.sum_ps));
        if count > 0 {
            let entry = kinds.entry(&p.kind).or_default();
            entry.0 += count;
            entry.1 += sum.max(0);
        }
    }
    kinds
        .into_iter()
        .map(|(kind, (count, sum))| {
            let total_ms = crate::stats::ms(picos(sum));
            KindTime { kind: kind.to_owned(), count, total_ms, mean_ms: total_ms / count as f64 }
        })
        .collect()
}

/// The controller's database time over a window of ticks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DbTime {
    pub window_s: f64,
    /// DB time of each tick that read no rows (lock check and probe).
    pub tick: Latency,
    /// DB time of each tick that read rows (while idle: the periodic full
    /// read).
    pub reading_ticks: Latency,
    /// All of the controller's DB time over the window, in % of one core.
    pub busy_percent: f64,
    /// Per kind of prepared statement.
    pub kinds: Vec<KindTime>,
}

impl DbTime {
    /// From the statements of a window of `window`, ticks `poll` apart.
    pub fn of(statements: &[Statement], kinds: Vec<KindTime>, window: Duration, poll: Duration) -> Self {
        let ticks = ticks(statements, poll / 2);
        let times =
            |reads: bool| -> Vec<Duration> { ticks.iter().filter(|t| t.reads_rows == reads).map(|t| t.db).collect() };
        let total: Duration = ticks.iter().map(|t| t.db).sum();
        Self {
            window_s: window.as_secs_f64(),
            tick: Latency::of(&times(false)),
            reading_ticks: Latency::of(&times(true)),
            busy_percent: if window.is_zero() { 0.0 } else { 100.0 * total.as_secs_f64() / window.as_secs_f64() },
            kinds,
        }
    }
}

fn picos(ps: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ps / 1000).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000_000;

    fn stmt(start_ms: i64, wait_ms: i64, reads_rows: bool) -> Statement {
        Statement { start_ps: start_ms * MS, end_ps: (start_ms + wait_ms) * MS, wait_ps: wait_ms * MS, reads_rows }
    }

    #[test]
    fn statements_close_together_are_one_tick() {
        let statements = [
            stmt(0, 1, false),
            stmt(2, 3, false),
            stmt(2000, 1, false),
            stmt(2001, 2, false),
            stmt(2004, 400, true),
            stmt(4000, 1, false),
        ];
        let ticks = ticks(&statements, Duration::from_secs(1));
        assert_eq!(ticks.len(), 3);
        assert_eq!((ticks[0].db, ticks[0].statements, ticks[0].reads_rows), (Duration::from_millis(4), 2, false));
        assert_eq!((ticks[1].db, ticks[1].reads_rows), (Duration::from_millis(403), true));
        let time = DbTime::of(&statements, vec![], Duration::from_secs(6), Duration::from_secs(2));
        assert_eq!((time.tick.n, time.tick.max_ms, time.reading_ticks.n), (2, 4.0, 1));
        assert!((time.busy_percent - 100.0 * 0.408 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn kinds_count_only_the_executions_in_between() {
        let p = |thread, id, kind: &str, count, sum_ms| Prepared {
            thread,
            id,
            kind: kind.into(),
            count,
            sum_ps: sum_ms * MS,
        };
        let before = [p(1, 1, "probe", 10, 5), p(1, 2, "full", 1, 400)];
        let after = [p(1, 1, "probe", 30, 15), p(1, 2, "full", 1, 400), p(2, 1, "probe", 2, 2)];
        let kinds = kinds_between(&before, &after);
        assert_eq!(kinds, vec![KindTime { kind: "probe".into(), count: 22, total_ms: 12.0, mean_ms: 12.0 / 22.0 }]);
    }

    #[test]
    fn statements_are_known_by_their_tag() {
        assert_eq!(kind_of("/* multinic probe */ SELECT 1"), "probe");
        assert_eq!(kind_of("SELECT 1"), "other");
        assert_eq!(kind_of(""), "other");
    }
}
