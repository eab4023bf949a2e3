//! Connecting to the example's database: a pool whose connections work in
//! one schema, so the example never touches tables it did not create.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Client, Config, NoTls};

/// Parses `url` and points it at `schema`.
pub fn config(url: &str, schema: &str) -> Result<Config, String> {
    let mut config = Config::from_str(url)
        .map_err(|e| format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
    config
        .application_name("fanout-dashboard")
        .options(format!("-c search_path={schema}"))
        .connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// A pool of at most `size` connections; a caller waits at most `wait` for
/// one.
///
/// Recycled with `Verified`: an empty query on checkout, one round trip
/// (about 0.1 ms locally). A connection whose query was dropped goes back to
/// the pool at once while `fanout::postgres` cancels its statement; the
/// round trip waits behind whatever is still queued on it, so the next user
/// starts on an idle connection, and a connection the server closed is
/// replaced rather than handed out.
pub fn pool(config: Config, size: usize, wait: Duration) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// One connection outside the pool, for seeding and checks.
pub async fn connect(config: &Config) -> Result<Client, String> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        let hosts = format!("{:?}:{:?}", config.get_hosts(), config.get_ports());
        format!(
            "cannot connect to PostgreSQL at {hosts}: {}",
            first_line(&e.to_string())
        )
    })?;
    tokio::spawn(async move {
        // Ends when the client is dropped; an error here shows up on the
        // client's next call.
        let _ = connection.await;
    });
    Ok(client)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
