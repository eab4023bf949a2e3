//! A sqlx pool on the same database and schema as the tokio-postgres
//! config the dashboard's setup produces.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_postgres::config::Host;

/// sqlx connect options equivalent to `config` (host, port, user,
/// password, database), working in `schema`, with `application` as
/// `application_name`.
pub fn options(
    config: &tokio_postgres::Config,
    schema: &str,
    application: &str,
) -> Result<PgConnectOptions, String> {
    let mut options = PgConnectOptions::new_without_pgpass()
        .application_name(application)
        .options([("search_path", schema)]);
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) => options = options.host(host),
        Some(Host::Unix(path)) => options = options.socket(path),
        None => return Err("the database URL names no host".to_owned()),
    }
    if let Some(port) = config.get_ports().first() {
        options = options.port(*port);
    }
    if let Some(user) = config.get_user() {
        options = options.username(user);
    }
    if let Some(password) = config.get_password() {
        let password = std::str::from_utf8(password)
            .map_err(|_| "the database password is not valid UTF-8".to_owned())?;
        options = options.password(password);
    }
    if let Some(database) = config.get_dbname() {
        options = options.database(database);
    }
    Ok(options)
}

/// A pool of at most `size` connections, opened lazily; a caller waits at
/// most `wait` for one.
pub fn pool(options: PgConnectOptions, size: u32, wait: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(wait)
        .connect_lazy_with(options)
}
