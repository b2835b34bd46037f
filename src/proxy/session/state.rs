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
    apply_sql, cleanup_sql, readback_settings_sql, readback_statements_sql, Settings,
    READBACK_SETTING, READBACK_STATEMENT,
};
use crate::proxy::protocol::statements::{StatementId, Unnamed};
use crate::proxy::server::{Rows, Server, ServerError};

/// The settings in the rows of a readback query.
pub(super) fn settings_from_rows(rows: &Rows) -> Settings {
    Settings::from_pairs(
        rows.iter()
            .filter_map(|r| match r.as_slice() {
                [Some(kind), Some(name), Some(value)] if kind == READBACK_SETTING => {
                    Some((name.clone(), value.clone()))
                }
                _ => None,
            })
            .collect(),
    )
}

/// pgcat's statements in the rows of a readback query.
fn statements_from_rows(rows: &Rows) -> Vec<StatementId> {
    rows.iter()
        .filter_map(|r| match r.as_slice() {
            [Some(kind), Some(name), _] if kind == READBACK_STATEMENT => {
                StatementId::from_server_name(name)
            }
            _ => None,
        })
        .collect()
}

impl Session {
    /// The client lands on `server`: starts this checkout's bookkeeping,
    /// gives the server the client's settings and tells the client of
    /// reported parameters that differ here.
    pub(super) async fn enter(&mut self, server: &mut PooledServer) -> Result<(), ServerError> {
        let held = &mut *self.held;
        held.tickets.clear();
        held.effects = Effects::NONE;
        held.names.clear();
        held.unnamed_latest = server.unnamed.clone();
        held.unnamed_pending = 0;
        held.unnamed_linked = false;
        if !Settings::same(&self.cs.settings, &server.settings) {
            if let Some(sql) = apply_sql(&server.settings, &self.cs.settings) {
                server.run(&sql, CLEANUP_TIMEOUT).await?;
            }
            server.settings = self.cs.settings.clone();
        }
        if self.cs.reported.digest() != server.params.digest() {
            let changed: Vec<(String, String)> = server
                .params
                .iter()
                .filter(|(k, v)| self.cs.reported.get(k) != Some(v))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for (k, v) in changed {
                messages::parameter_status(&mut self.to_client, &k, &v);
                self.cs.reported.set(&k, &v);
            }
        }
        Ok(())
    }

    /// Transaction mode, after a transaction whose effects say session
    /// state may have changed: cleans and reads back, in one query.
    pub(super) async fn settle_session_state(&mut self, server: &mut Server) {
        let effects = std::mem::take(&mut self.held.effects);
        let mut sql = String::new();
        if self.cleanup_server_connections {
            if let Some(clean) = cleanup_sql(
                effects.contains(Effects::LISTEN),
                effects.contains(Effects::CURSOR),
                effects.contains(Effects::ADVISORY),
                effects.contains(Effects::TEMP),
                effects.contains(Effects::SQL_PREPARE),
            ) {
                sql.push_str(&clean);
            }
        }
        let settings = effects.contains(Effects::SETTINGS);
        if settings {
            let names: Vec<&str> = self
                .cs
                .settings
                .custom_names()
                .chain(self.held.names.iter().map(|n| &**n))
                .collect();
            let mut names = names;
            names.sort_unstable();
            names.dedup();
            sql.push_str(&readback_settings_sql(&self.server_user, names.into_iter()));
            sql.push(';');
        }
        let statements = effects.contains(Effects::STATEMENTS);
        if statements {
            sql.push_str(&readback_statements_sql());
        }
        if sql.is_empty() {
            return;
        }
        match server.query_rows(&sql, CLEANUP_TIMEOUT).await {
            Ok(rows) => {
                if settings {
                    let s = Arc::new(settings_from_rows(&rows));
                    self.cs.settings = s.clone();
                    server.settings = s;
                }
                if statements {
                    server
                        .statements
                        .retain_present(&statements_from_rows(&rows));
                }
            }
            Err(e) => {
                // pgcat cannot vouch for its state: nobody else gets it.
                tracing::warn!(db = %self.db, user = %self.user, error = %e, "reading back session state failed; closing the server connection");
                server.broken = true;
            }
        }
    }

    /// Brings a server back to a clean state when the session ends while
    /// holding it, or leaves it marked broken.
    pub(super) async fn cleanup(&mut self, server: &mut PooledServer) {
        server.broken = true;
        let unsent = !self.to_server.is_empty() || self.client_left > 0;
        if unsent
            || self.tracker.awaiting_replies()
            || self.server_left > 0
            || !self.sbuf.is_empty()
        {
            // Mid-request: closing is the only safe way out; PostgreSQL
            // rolls back what was open.
            return;
        }
        if self.tracker.unsynced() {
            let mut out = BytesMut::new();
            messages::sync(&mut out);
            if server.exchange(&out, CLEANUP_TIMEOUT).await.is_err() {
                return;
            }
        }
        let rollback = self.tracker.status() != b'I';
        if rollback {
            if let Err(e) = server.run("ROLLBACK", CLEANUP_TIMEOUT).await {
                tracing::debug!(error = %e, "rollback failed; closing server connection");
                return;
            }
        }
        let discard = self.mode == PoolMode::Session;
        if discard {
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
        if rollback || discard || self.tracker.unsynced() {
            // The mirror connection gets the same reset, from its task.
            let (_, mirrors) = server.split();
            for m in mirrors {
                m.reset(discard);
            }
        }
        server.broken = false;
        self.tracker.reset();
    }
}
