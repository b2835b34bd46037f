//! The client's session state on the servers it lands on.
//!
//! - On checkout (`enter`): the server gets the client's settings (the
//!   difference only, usually nothing: one pointer or digest comparison),
//!   and the client is told of reported parameters that differ there.
//! - After a transaction that may have changed session state
//!   (`settle_session_state`): what another client must not see (LISTEN,
//!   session advisory locks, temporary tables, WITH HOLD cursors,
//!   SQL-level PREPARE) is cleaned, and settings and statements are read
//!   back from the server, which is the source of truth. All in one round
//!   trip, after the client has its answer.
//! - When the session ends holding a server (`cleanup`): the server is
//!   brought back to a clean state, or closed.

use std::sync::Arc;

use bytes::BytesMut;

use super::{Session, CLEANUP_TIMEOUT};
use crate::proxy::config::PoolMode;
use crate::proxy::pool::PooledServer;
use crate::proxy::protocol::effects::Effects;
use crate::proxy::protocol::messages;
use crate::proxy::protocol::settings::{
    apply_sql, cleanup_sql, parse_readback, readback_sql, Settings,
};
use crate::proxy::protocol::statements::{StatementId, Unnamed};
use crate::proxy::server::{Rows, Server, ServerError};

/// Times one of pgcat's own queries is tried when a client's tiny
/// `statement_timeout`, still set on the server, cancels it.
const OWN_QUERY_TRIES: usize = 5;

/// Runs a query pgcat sends on its own behalf. Each is one implicit
/// transaction whose first statement makes the client's timeout
/// irrelevant, so a cancel (57014) before that point changed nothing and
/// the query is simply run again.
pub(super) async fn own_query(server: &mut Server, sql: &str) -> Result<Rows, ServerError> {
    let mut tries = 1;
    loop {
        match server.query_rows(sql, CLEANUP_TIMEOUT).await {
            Err(ServerError::Postgres(f)) if f.code == "57014" && tries < OWN_QUERY_TRIES => {
                tries += 1;
            }
            r => return r,
        }
    }
}

impl Session {
    /// The client lands on `server`: starts this checkout's bookkeeping,
    /// gives the server the client's settings and tells the client of
    /// reported parameters that differ here.
    pub(super) async fn enter(&mut self, server: &mut PooledServer) -> Result<(), ServerError> {
        if !Settings::same(&self.cs.settings, &server.settings) {
            if let Some(sql) = apply_sql(&server.settings, &self.cs.settings) {
                // Boxed: kept out of every checkout's future.
                Box::pin(own_query(server, &sql)).await?;
            }
            server.settings = self.cs.settings.clone();
        }
        // After pgcat's own query, which dropped the unnamed statement.
        let held = &mut *self.held;
        held.tickets.clear();
        held.effects = Effects::NONE;
        held.names.clear();
        held.unnamed_latest = server.unnamed.clone();
        held.unnamed_pending = 0;
        held.client_unnamed = self.cs.unnamed.clone();
        held.client_unnamed_pending = 0;
        if self.cs.reported.digest() != server.params.digest() {
            let changed: Vec<(String, String)> = server
                .params
                .iter()
                .filter(|(k, v)| self.cs.reported.get(k) != Some(v))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let reported = Arc::make_mut(&mut self.cs.reported);
            for (k, v) in changed {
                messages::parameter_status(&mut self.held.to_client, &k, &v);
                reported.set(&k, &v);
            }
        }
        Ok(())
    }

    /// Transaction mode, after a transaction whose effects say session
    /// state may have changed: cleans and reads back, in one query.
    pub(super) async fn settle_session_state(&mut self, server: &mut Server) {
        let effects = std::mem::take(&mut self.held.effects);
        let cleanup = if self.cleanup_server_connections {
            cleanup_sql(
                effects.contains(Effects::LISTEN),
                effects.contains(Effects::CURSOR),
                effects.contains(Effects::ADVISORY),
                effects.contains(Effects::TEMP),
                effects.contains(Effects::SQL_PREPARE),
            )
        } else {
            None
        };
        let statements = effects.contains(Effects::STATEMENTS);
        if cleanup.is_none() && !statements && !effects.contains(Effects::SETTINGS) {
            return;
        }
        let mut names: Vec<&str> = self
            .cs
            .settings
            .custom_names()
            .chain(self.held.names.iter().map(|n| &**n))
            .collect();
        names.sort_unstable();
        names.dedup();
        let sql = readback_sql(
            &self.server_user,
            names.into_iter(),
            cleanup.as_deref(),
            statements,
        );
        match own_query(server, &sql).await {
            Ok(rows) => {
                let read = parse_readback(&rows);
                let mine = Settings::overlay(&self.cs.startup, read.settings.clone());
                let actual = Arc::new(read.settings);
                self.cs.settings = if *actual == mine {
                    actual.clone()
                } else {
                    Arc::new(mine)
                };
                server.settings = actual;
                if statements {
                    let present: Vec<StatementId> = read
                        .statements
                        .iter()
                        .filter_map(|n| StatementId::from_server_name(n))
                        .collect();
                    server.statements.retain_present(&present);
                }
            }
            Err(e) => {
                // pgcat cannot vouch for its state: nobody else gets it.
                tracing::warn!(db = %self.info.db, user = %self.info.user, error = %e, "reading back session state failed; closing the server connection");
                server.broken = true;
            }
        }
    }

    /// Brings a server back to a clean state when the session ends while
    /// holding it, or leaves it marked broken.
    pub(super) async fn cleanup(&mut self, server: &mut PooledServer) {
        server.broken = true;
        let unsent = !self.held.to_server.is_empty() || self.held.client_left > 0;
        if unsent
            || self.held.tracker.awaiting_replies()
            || self.held.server_left > 0
            || !self.held.sbuf.is_empty()
        {
            // Mid-request: closing is the only safe way out; PostgreSQL
            // rolls back what was open.
            return;
        }
        if self.held.tracker.unsynced() {
            let mut out = BytesMut::new();
            messages::sync(&mut out);
            if server.exchange(&out, CLEANUP_TIMEOUT).await.is_err() {
                return;
            }
        }
        let rollback = self.held.tracker.status() != b'I';
        if rollback {
            if let Err(e) = server.run("ROLLBACK", CLEANUP_TIMEOUT).await {
                tracing::debug!(error = %e, "rollback failed; closing server connection");
                return;
            }
        }
        let discard = self.mode == PoolMode::Session;
        if discard {
            // DISCARD ALL resets every setting too. `RESET ROLE; RESET ALL`
            // first, when the session changed settings, is what PgCat
            // sends there, and what its users (and its test suite) count
            // in pg_stat_statements.
            if std::mem::take(&mut self.held.effects).contains(Effects::SETTINGS) {
                if let Err(e) = server.run("RESET ROLE; RESET ALL", CLEANUP_TIMEOUT).await {
                    tracing::debug!(error = %e, "RESET ALL failed; closing server connection");
                    return;
                }
            }
            if let Err(e) = server.run("DISCARD ALL", CLEANUP_TIMEOUT).await {
                tracing::debug!(error = %e, "DISCARD ALL failed; closing server connection");
                return;
            }
            server.statements.clear();
            server.settings = Settings::empty();
            // Session mode never tracked it.
            server.unnamed = Some(Unnamed::unknown());
        } else if !self.held.effects.is_empty() {
            server.broken = false;
            self.settle_session_state(server).await;
            if server.broken {
                return;
            }
        }
        if rollback || discard || self.held.tracker.unsynced() {
            // The mirror connection gets the same reset, from its task.
            let (_, mirrors) = server.split();
            for m in mirrors {
                m.reset(discard);
            }
        }
        server.broken = false;
        self.held.tracker.reset();
    }
}
