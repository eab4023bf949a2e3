//! The SQL files of the example, split into their named statements.

/// The six widget queries: `-- name: NAME` headers, tenant id as `$1`.
pub const QUERIES: &str = include_str!("queries.sql");
/// Hybrid forms of the widgets the materialized views serve: closed months
/// from the views, the rest live. Same headers, parameters and columns.
pub const HYBRID: &str = include_str!("hybrid.sql");
/// Independent formulations of the same six values, for tests.
#[allow(dead_code)] // read by the tests, which share this module
pub const VERIFY: &str = include_str!("verify.sql");
/// Drops and recreates the tables.
pub const SCHEMA: &str = include_str!("schema.sql");
/// The materialized views, their watermark and refresh function, as
/// `-- step: NAME` sections run after the seed.
pub const VIEWS: &str = include_str!("views.sql");
/// The seed, as `-- step: NAME` sections with a `{{TENANTS}}` placeholder.
pub const SEED: &str = include_str!("seed.sql");

/// The statement headed `-- name: NAME` in `file`, without its trailing
/// semicolon.
pub fn named(file: &'static str, name: &str) -> Option<&'static str> {
    sections(file, "-- name:")
        .find(|(header, _)| *header == name)
        .map(|(_, body)| body)
}

/// `(header, body)` for every section of `file` that starts with a line
/// `MARKER header`; bodies are trimmed, without a trailing semicolon.
pub fn sections<'a>(
    file: &'a str,
    marker: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    file.split(marker).skip(1).map(|section| {
        let (header, body) = section.split_once('\n').unwrap_or((section, ""));
        (header.trim(), body.trim().trim_end_matches(';').trim_end())
    })
}
