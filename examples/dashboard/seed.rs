//! Creates and seeds the example's tables, once: a marker table records
//! what was seeded, so a second run (or a second test binary) reuses it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use crate::sql;

/// Seeds `schema` with `tenants` tenants unless it already holds exactly
/// that seed; returns whether it seeded.
pub async fn ensure_seeded(
    client: &Client,
    schema: &str,
    tenants: u32,
    progress: bool,
) -> Result<bool, String> {
    let db =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(db("creating the schema"))?;
    // Two processes seeding at once would drop each other's tables.
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&schema])
        .await
        .map_err(db("locking the schema"))?;
    let result = seed_unless_current(client, tenants, progress).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&schema])
        .await;
    result
}

async fn seed_unless_current(
    client: &Client,
    tenants: u32,
    progress: bool,
) -> Result<bool, String> {
    let db = |what: String| move |e: tokio_postgres::Error| format!("{what}: {}", describe(&e));
    let digest = seed_digest(tenants);
    let current = client
        .query_opt("SELECT digest FROM seeded WHERE digest = $1", &[&digest])
        .await
        .ok()
        .flatten();
    if current.is_some() {
        return Ok(false);
    }

    // The views go last: built from the loaded tables, and their triggers
    // would slow the load down.
    let steps: Vec<(&str, &str)> = sql::sections(sql::SEED, "-- step:")
        .chain(sql::sections(sql::VIEWS, "-- step:"))
        .collect();
    let bar = if progress {
        ProgressBar::new(steps.len() as u64 + 1)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "seeding {prefix} tenants [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(tenants.to_string());
    let started = Instant::now();

    bar.set_message("schema");
    let schema = format!("DROP TABLE IF EXISTS seeded; {}", sql::SCHEMA);
    client
        .batch_execute(&schema)
        .await
        .map_err(db("schema.sql".into()))?;
    bar.inc(1);
    for (name, statement) in steps {
        bar.set_message(name);
        let statement = statement.replace("{{TENANTS}}", &tenants.to_string());
        client
            .batch_execute(&statement)
            .await
            .map_err(db(format!("seed step {name}")))?;
        bar.inc(1);
    }
    client
        .batch_execute("CREATE TABLE seeded (digest text NOT NULL)")
        .await
        .map_err(db("marking the seed".into()))?;
    client
        .execute("INSERT INTO seeded VALUES ($1)", &[&digest])
        .await
        .map_err(db("marking the seed".into()))?;
    bar.finish_and_clear();
    if progress {
        eprintln!(
            "seeded {tenants} tenants in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(true)
}

/// Identifies a seed: its size and the SQL that made it (views included),
/// so editing the SQL reseeds.
fn seed_digest(tenants: u32) -> String {
    let mut hasher = DefaultHasher::new();
    (sql::SCHEMA, sql::SEED, sql::VIEWS, tenants).hash(&mut hasher);
    format!("{tenants}:{:016x}", hasher.finish())
}

/// The server's message when there is one.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// The tenant id seed.sql gives tenant number `n` (from 1).
pub fn tenant_id(n: u32) -> String {
    format!("tenant-{n:04}")
}
