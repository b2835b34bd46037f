//! pgcat: a PostgreSQL connection pooler and proxy.
//!
//! # Layout
//!
//! - [`proxy`]: the engine.
//!   - `config/`: PgCat's `pgcat.toml` model, defaults, validation with
//!     key and line in every error, and the per-pool config hash.
//!   - `protocol/`: PostgreSQL v3 framing, message builders, the
//!     request/reply tracker, statement identity, the effects of a
//!     transaction on session state, and settings as data. No IO.
//!   - `auth/`: md5 and SCRAM-SHA-256, towards clients and towards
//!     PostgreSQL.
//!   - `net`: socket options (keepalive, TCP_USER_TIMEOUT, nodelay) and
//!     their read-back.
//!   - `listener`: accept loop and graceful drain.
//!   - `session/`: one client session: `login`, the `pump` (hot path),
//!     `statements` (transaction mode's statement mapping) and `state`
//!     (the client's settings on every server it lands on, cleanup).
//!   - `server`: one server connection; knows nothing of mirrors.
//!   - `pool/`: bb8 pools per (pool, user, shard, server) and server
//!     selection.
//!   - `cancel`: per-client cancel keys mapped to server keys.
//!   - `mirror`: the mirror tasks a pooled connection owns.
//!   - `stats/`: the registry and counters (a leaf every connection
//!     registers with) and `snapshot`, the one view admin, metrics and the
//!     dashboard read.
//! - [`tui`]: the terminal dashboard: `app` (state, keys), `ui/` (one
//!   file per panel), `editor` ($EDITOR and in-place edits), `source`
//!   (in-process, or a remote pgcat's admin console).
//! - [`demo`]: `pgcat demo`'s throwaway clusters and traffic.
//!
//! A client's bytes go: `listener` -> `session` (startup, auth) -> `pool`
//! checkout -> `server`, forwarded both ways by the session's pump, and
//! back to the pool at the transaction boundary (transaction mode) or at
//! disconnect (session mode).

pub mod demo;
pub mod proxy;
pub mod tui;
