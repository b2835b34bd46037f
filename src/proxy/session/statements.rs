//! Transaction mode: messages that name prepared statements.
//!
//! A client's named statements live on servers under names derived from
//! their text (see `protocol::statements`); pgcat prepares them on
//! whichever server the client gets. The unnamed statement is the
//! client's own too: before a Bind or Describe of it, pgcat makes the
//! server's unnamed statement the client's (a Parse, or a Close when the
//! client has none), so no client ever binds another's.
//!
//! Every message pgcat injects or answers itself carries a ticket: when
//! the server reports what became of it (done, failed, skipped after an
//! error), `settle_tickets` brings pgcat's records (the server's
//! statements, the client's names, both unnamed statements) in line with
//! what the server really did.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::{FrameErrorOrMalformed, Outcome, Session};
use crate::proxy::protocol::codec::{client_limit, peek_header, HEADER_LEN};
use crate::proxy::protocol::effects::{deallocate, Deallocate, QueryHints};
use crate::proxy::protocol::messages::{self, read_cstr, Severity};
use crate::proxy::protocol::statements::{Prepared, StatementId, TooMany, Unnamed};
use crate::proxy::protocol::tracker::{Expect, Outcome as Ended, Synthetic};
use crate::proxy::server::Server;

/// The name under which pgcat has the server parse a statement it only
/// wants checked; closed right after. Never one of pgcat's statement names
/// (those have 32 hex digits).
const CHECK_NAME: &str = "pgcat_check";

/// Custom setting names one checkout collects for the readback.
const NAMES_PER_CHECKOUT: usize = 256;

/// What one ticketed expectation stands for.
#[derive(Debug)]
pub(super) enum Ticket {
    /// A Parse under pgcat's name went to the server, for `client`.
    ServerParse { id: StatementId, client: ParseFor },
    /// A Parse pgcat answered itself: the name goes if it was skipped.
    ClientParse(Box<[u8]>),
    /// A Parse of the client's unnamed statement that pgcat answered
    /// itself (`cache_unnamed_statements`, the server has the statement):
    /// the client's unnamed statement becomes this one if it was done,
    /// none if it failed.
    ClientUnnamed(Arc<Unnamed>),
    /// pgcat's check of such a Parse: when it failed, the client's Parse
    /// failed, and its unnamed statement is gone.
    UnnamedCheck,
    /// A Close pgcat answered itself: the name comes back if skipped.
    ClientClose(Box<[u8]>, Arc<Prepared>),
    /// A `DEALLOCATE` pgcat answered itself: the name comes back if it
    /// failed; the client's unnamed statement is gone either way.
    Deallocate(Box<[u8]>, Arc<Prepared>),
    /// A Bind of one of pgcat's statements: 26000 means the record of the
    /// server's statements drifted.
    Bind(StatementId),
    /// pgcat closed a statement to make room.
    Evict(StatementId),
    /// The server's unnamed statement becomes `value` (None: a Close or a
    /// simple query dropped it); the client's too when `client` (its own
    /// message rather than one pgcat injected).
    Unnamed {
        value: Option<Arc<Unnamed>>,
        client: bool,
    },
}

/// Whose Parse a Parse under pgcat's name is.
#[derive(Debug)]
pub(super) enum ParseFor {
    /// pgcat's own, to prepare a statement again: the reply is hidden.
    Pgcat,
    /// The client's Parse under this name of its own.
    Named(Box<[u8]>),
    /// The client's Parse of its unnamed statement, which runs as this
    /// statement under pgcat's name (`cache_unnamed_statements`).
    Unnamed(Arc<Unnamed>),
}

impl Session {
    pub(super) fn rewrite_client(
        &mut self,
        server: &mut Server,
        tag: u8,
        msg: &[u8],
    ) -> Result<(), Outcome> {
        let malformed = |what| Outcome::ClientProtocol(FrameErrorOrMalformed::Malformed(what));
        let body = &msg[HEADER_LEN..];
        match tag {
            b'P' => {
                self.held.counts.client_parses += 1;
                let (name, rest) = read_cstr(body, "Parse").map_err(|_| malformed("Parse"))?;
                let (query, types) = read_cstr(rest, "Parse").map_err(|_| malformed("Parse"))?;
                if name.is_empty() && self.limits.cache_unnamed() {
                    self.parse_unnamed_remapped(server, rest, query, types);
                    return Ok(());
                }
                if name.is_empty() {
                    self.held.counts.server_parses += 1;
                    let unnamed = match &self.cs.unnamed {
                        Some(u) if *u.body == *rest => u.clone(),
                        _ => Arc::new(Unnamed::new(rest, query)),
                    };
                    self.held.to_server.extend_from_slice(msg);
                    self.push_unnamed(
                        Expect::Parse {
                            swallow: false,
                            ticket: true,
                        },
                        Some(unnamed),
                        true,
                    );
                    return Ok(());
                }
                if self.cs.statements.contains(name) {
                    // PostgreSQL parses the text before it looks at the
                    // name: a statement that does not parse fails with
                    // its own error.
                    self.check_parse(query, types, None);
                    let msg = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    self.raise("42P05", &msg);
                    return Ok(());
                }
                let prepared = Arc::new(Prepared::new(rest, query, types));
                if let Err(TooMany(n)) = self.cs.statements.insert(
                    name,
                    prepared.clone(),
                    self.limits.max_prepared_statements(),
                ) {
                    let msg = format!(
                        "pgcat: too many prepared statements on this connection \
                         (max_prepared_statements = {n}); close some first"
                    );
                    self.raise("53400", &msg);
                    return Ok(());
                }
                if server.statements.contains(prepared.id) {
                    self.answer_parse(query, types, None, Ticket::ClientParse(name.into()));
                } else {
                    self.prepare_on_server(server, &prepared, ParseFor::Named(name.into()));
                }
            }
            b'B' => {
                self.held.counts.binds += 1;
                let (portal, rest) = read_cstr(body, "Bind").map_err(|_| malformed("Bind"))?;
                let (name, rest) = read_cstr(rest, "Bind").map_err(|_| malformed("Bind"))?;
                let prepared = self.statement_for(name);
                if name.is_empty() && prepared.is_none() {
                    self.ensure_unnamed();
                    if let Some(u) = &self.cs.unnamed {
                        if !u.hints.is_empty() {
                            let hints = u.hints.clone();
                            self.absorb(&hints);
                        }
                    }
                    self.forward_as_is(tag, msg);
                    return Ok(());
                }
                let Some(prepared) = prepared else {
                    // PostgreSQL's own 26000 names the client's statement.
                    self.forward_as_is(tag, msg);
                    return Ok(());
                };
                self.ensure_prepared(server, &prepared);
                if !prepared.hints.is_empty() {
                    self.absorb(&prepared.hints);
                }
                let at = messages::begin(&mut self.held.to_server, b'B');
                messages::put_cstr(&mut self.held.to_server, portal);
                messages::put_cstr(&mut self.held.to_server, prepared.name.as_bytes());
                self.held.to_server.put_slice(rest);
                messages::finish(&mut self.held.to_server, at);
                self.held
                    .tracker
                    .push_extended(Expect::Bind { ticket: true });
                self.held.tickets.push_back(Ticket::Bind(prepared.id));
            }
            b'D' => {
                let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Describe"))?;
                let (name, _) = read_cstr(rest, "Describe").map_err(|_| malformed("Describe"))?;
                if kind != b'S' {
                    self.forward_as_is(tag, msg);
                    return Ok(());
                }
                let prepared = self.statement_for(name);
                if name.is_empty() && prepared.is_none() {
                    self.ensure_unnamed();
                    self.forward_as_is(tag, msg);
                    return Ok(());
                }
                let Some(prepared) = prepared else {
                    self.forward_as_is(tag, msg);
                    return Ok(());
                };
                self.ensure_prepared(server, &prepared);
                let at = messages::begin(&mut self.held.to_server, b'D');
                self.held.to_server.put_u8(b'S');
                messages::put_cstr(&mut self.held.to_server, prepared.name.as_bytes());
                messages::finish(&mut self.held.to_server, at);
                self.held.tracker.push_extended(Expect::Describe);
            }
            b'C' => {
                let (&kind, rest) = body.split_first().ok_or_else(|| malformed("Close"))?;
                let (name, _) = read_cstr(rest, "Close").map_err(|_| malformed("Close"))?;
                if kind != b'S' {
                    self.forward_as_is(tag, msg);
                } else if name.is_empty() {
                    self.held.to_server.extend_from_slice(msg);
                    self.push_unnamed(
                        Expect::Close {
                            swallow: false,
                            ticket: true,
                        },
                        None,
                        true,
                    );
                } else if let Some(prepared) = self.cs.statements.remove(name) {
                    // The server keeps the statement for other clients;
                    // the client just forgets its name.
                    self.held
                        .tracker
                        .push_extended(Expect::Synthetic(Synthetic::CloseComplete, true));
                    self.held
                        .tickets
                        .push_back(Ticket::ClientClose(name.into(), prepared));
                    {
                        let h = &mut *self.held;
                        h.tracker.emit_due(&mut h.to_client);
                    }
                } else {
                    // Closing a statement that does not exist is no error.
                    self.held
                        .tracker
                        .push_extended(Expect::Synthetic(Synthetic::CloseComplete, false));
                    {
                        let h = &mut *self.held;
                        h.tracker.emit_due(&mut h.to_client);
                    }
                }
            }
            _ => self.forward_as_is(tag, msg),
        }
        Ok(())
    }

    /// Transaction mode: a Bind too large to hold whole (its parameters)
    /// streams. Its names are rewritten as for any Bind, from what is in
    /// `cbuf` (the start of the message); the rest passes as it arrives.
    pub(super) fn stream_bind(
        &mut self,
        server: &mut Server,
        total: usize,
        portal: &[u8],
        name: &[u8],
    ) {
        self.held.counts.binds += 1;
        let prefix = HEADER_LEN + portal.len() + 1 + name.len() + 1;
        let prepared = self.statement_for(name);
        match prepared {
            Some(p) => {
                self.ensure_prepared(server, &p);
                if !p.hints.is_empty() {
                    self.absorb(&p.hints);
                }
                let len = total - 1 - name.len() + p.name.len();
                self.held.to_server.put_u8(b'B');
                self.held.to_server.put_i32(len as i32);
                messages::put_cstr(&mut self.held.to_server, portal);
                messages::put_cstr(&mut self.held.to_server, p.name.as_bytes());
                {
                    let h = &mut *self.held;
                    h.to_server.extend_from_slice(&h.cbuf[prefix..]);
                }
                self.held
                    .tracker
                    .push_extended(Expect::Bind { ticket: true });
                self.held.tickets.push_back(Ticket::Bind(p.id));
            }
            None => {
                if name.is_empty() {
                    self.ensure_unnamed();
                }
                self.held.tracker.client_message(b'B');
                {
                    let h = &mut *self.held;
                    h.to_server.extend_from_slice(&h.cbuf);
                }
            }
        }
        {
            let h = &mut *self.held;
            h.client_left = total - h.cbuf.len();
        }
        self.held.cbuf.clear();
    }

    fn forward_as_is(&mut self, tag: u8, msg: &[u8]) {
        self.held.tracker.client_message(tag);
        self.held.to_server.extend_from_slice(msg);
    }

    /// A simple query `DEALLOCATE name` of one of the client's statements:
    /// the name goes, the server keeps the statement for others, and the
    /// client gets PostgreSQL's answer in its place in the pipeline.
    pub(super) fn deallocate_locally(&mut self, name: Vec<u8>) {
        self.held.counts.queries += 1;
        if let Some(prepared) = self.cs.statements.remove(&name) {
            self.held
                .tracker
                .push_synthetic_query(Synthetic::Deallocate, true);
            self.held
                .tickets
                .push_back(Ticket::Deallocate(name.into(), prepared));
            // A simple query drops the client's unnamed statement (not the
            // server's: the server never sees this one).
            self.cs.unnamed = None;
            self.held.client_unnamed_pending += 1;
            {
                let h = &mut *self.held;
                h.tracker.emit_due(&mut h.to_client);
            }
        }
    }

    /// Has the server parse a statement under a throwaway name and close
    /// it again, both replies hidden: the client sees the errors PostgreSQL
    /// would raise for its Parse (bad text, a failed transaction), and
    /// nothing else.
    /// `ticket` stands for the check's Parse.
    fn check_parse(&mut self, query: &[u8], types: &[u8], ticket: Option<Ticket>) {
        messages::parse(&mut self.held.to_server, CHECK_NAME, query, types);
        self.held.tracker.push_extended(Expect::Parse {
            swallow: true,
            ticket: ticket.is_some(),
        });
        if let Some(t) = ticket {
            self.held.tickets.push_back(t);
        }
        messages::close(&mut self.held.to_server, b'S', CHECK_NAME);
        self.held.tracker.push_extended(Expect::Close {
            swallow: true,
            ticket: false,
        });
        self.held.counts.server_parses += 1;
    }

    /// Notes what a statement about to run may do to session state.
    pub(super) fn absorb(&mut self, hints: &QueryHints) {
        self.held.effects |= hints.effects;
        for name in &hints.names {
            if self.held.names.len() < NAMES_PER_CHECKOUT && !self.held.names.contains(name) {
                self.held.names.push(name.clone());
            }
        }
    }

    pub(super) fn absorb_hints(&mut self, hints: QueryHints) {
        if !hints.is_empty() {
            self.absorb(&hints);
        }
    }

    /// Answers the client's current message with a pgcat error at its
    /// place in the pipeline: a Bind that must fail makes the server skip
    /// to Sync (aborting the implicit transaction, as PostgreSQL would),
    /// and the tracker puts this error in place of the server's.
    fn raise(&mut self, code: &str, message: &str) {
        let mut error = BytesMut::new();
        messages::error_response(&mut error, Severity::Error, code, message);
        let at = messages::begin(&mut self.held.to_server, b'B');
        messages::put_cstr(&mut self.held.to_server, b"");
        // Never a statement: pgcat's names have 32 hex digits.
        messages::put_cstr(&mut self.held.to_server, b"pgcat_raise");
        self.held.to_server.put_i16(0);
        self.held.to_server.put_i16(0);
        self.held.to_server.put_i16(0);
        messages::finish(&mut self.held.to_server, at);
        self.held.tracker.raise(error.freeze());
    }

    /// Records a message that changes the server's unnamed statement (and
    /// the client's, when `client`).
    fn push_unnamed(&mut self, expect: Expect, value: Option<Arc<Unnamed>>, client: bool) {
        self.held.tracker.push_extended(expect);
        self.note_unnamed(value, client);
    }

    fn note_unnamed(&mut self, value: Option<Arc<Unnamed>>, client: bool) {
        self.held.tickets.push_back(Ticket::Unnamed {
            value: value.clone(),
            client,
        });
        if client {
            self.cs.unnamed = value.clone();
            self.held.client_unnamed_pending += 1;
        }
        self.held.unnamed_latest = value;
        self.held.unnamed_pending += 1;
    }

    /// Before a Bind or Describe of the unnamed statement: makes the
    /// server's unnamed statement the client's.
    fn ensure_unnamed(&mut self) {
        if Unnamed::same(&self.cs.unnamed, &self.held.unnamed_latest) {
            return;
        }
        match self.cs.unnamed.clone() {
            Some(u) => {
                let at = messages::begin(&mut self.held.to_server, b'P');
                self.held.to_server.put_u8(0);
                self.held.to_server.put_slice(&u.body);
                messages::finish(&mut self.held.to_server, at);
                self.held.counts.server_parses += 1;
                self.push_unnamed(
                    Expect::Parse {
                        swallow: true,
                        ticket: true,
                    },
                    Some(u),
                    false,
                );
            }
            None => {
                // The client has none: the server must not have one
                // either, so the Bind fails as it would on a direct
                // connection.
                messages::close(&mut self.held.to_server, b'S', "");
                self.push_unnamed(
                    Expect::Close {
                        swallow: true,
                        ticket: true,
                    },
                    None,
                    false,
                );
            }
        }
    }

    /// A simple query drops the unnamed statement; returns whether the
    /// query needs a ticket to say when it did.
    pub(super) fn query_clears_unnamed(&mut self) -> bool {
        if self.cs.unnamed.is_none()
            && self.held.unnamed_latest.is_none()
            && self.held.unnamed_pending == 0
        {
            return false;
        }
        self.note_unnamed(None, true);
        true
    }

    fn ensure_prepared(&mut self, server: &mut Server, prepared: &Prepared) {
        if !server.statements.contains(prepared.id) {
            self.prepare_on_server(server, prepared, ParseFor::Pgcat);
        }
    }

    /// The statement under pgcat's name that a Bind or Describe of the
    /// client's statement `name` runs: one of its named statements, or,
    /// for the empty name, what its unnamed statement runs as when it was
    /// parsed with `cache_unnamed_statements`.
    fn statement_for(&self, name: &[u8]) -> Option<Arc<Prepared>> {
        if name.is_empty() {
            self.cs.unnamed.as_ref().and_then(|u| u.remap.clone())
        } else {
            self.cs.statements.get(name).cloned()
        }
    }

    /// `cache_unnamed_statements`: the client's Parse of its unnamed
    /// statement becomes a Parse of the same text under pgcat's name, or
    /// is answered by pgcat when the server already has that statement;
    /// the client's Binds and Describes of its unnamed statement then
    /// name it. PostgreSQL plans it once per server connection.
    fn parse_unnamed_remapped(
        &mut self,
        server: &mut Server,
        rest: &[u8],
        query: &[u8],
        types: &[u8],
    ) {
        let unnamed = match &self.cs.unnamed {
            Some(u) if u.remap.is_some() && *u.body == *rest => u.clone(),
            _ => Arc::new(Unnamed::remapped(rest, query, types)),
        };
        let Some(prepared) = unnamed.remap.clone() else {
            unreachable!("a remapped statement has its remap");
        };
        if server.statements.contains(prepared.id) {
            // A failure of the check is the client's Parse failing: its
            // unnamed statement is gone, as in PostgreSQL.
            self.answer_parse(
                query,
                types,
                Some(Ticket::UnnamedCheck),
                Ticket::ClientUnnamed(unnamed.clone()),
            );
        } else {
            self.prepare_on_server(server, &prepared, ParseFor::Unnamed(unnamed.clone()));
        }
        self.cs.unnamed = Some(unnamed);
        self.held.client_unnamed_pending += 1;
    }

    /// Answers the client's Parse of a statement the server has, with
    /// `ticket`: a ParseComplete at its place in the pipeline. Where the
    /// server may be in a failed transaction (PostgreSQL refuses a Parse
    /// there) it checks the text first, the check carrying `check`.
    fn answer_parse(&mut self, query: &[u8], types: &[u8], check: Option<Ticket>, ticket: Ticket) {
        if self.held.tracker.status() != b'I' || self.held.tracker.awaiting_replies() {
            self.check_parse(query, types, check);
        }
        self.held
            .tracker
            .push_extended(Expect::Synthetic(Synthetic::ParseComplete, true));
        self.held.tickets.push_back(ticket);
        let h = &mut *self.held;
        h.tracker.emit_due(&mut h.to_client);
    }

    /// Sends a Parse under pgcat's name; its reply goes to the client
    /// when `client` is the client's Parse.
    fn prepare_on_server(&mut self, server: &mut Server, prepared: &Prepared, client: ParseFor) {
        if server.statements.take_taken(prepared.id) {
            messages::close(&mut self.held.to_server, b'S', &prepared.name);
            self.held.tracker.push_extended(Expect::Close {
                swallow: true,
                ticket: false,
            });
        }
        self.held.to_server.extend_from_slice(&prepared.parse);
        self.held.tracker.push_extended(Expect::Parse {
            swallow: matches!(client, ParseFor::Pgcat),
            ticket: true,
        });
        self.held.tickets.push_back(Ticket::ServerParse {
            id: prepared.id,
            client,
        });
        self.held.counts.server_parses += 1;
        if let Some(evicted) = server
            .statements
            .insert(prepared.id, self.limits.statement_cache_size())
        {
            messages::close(&mut self.held.to_server, b'S', &evicted.server_name());
            self.held.tracker.push_extended(Expect::Close {
                swallow: true,
                ticket: true,
            });
            self.held.tickets.push_back(Ticket::Evict(evicted));
        }
    }

    /// Brings pgcat's records in line with what the server did with each
    /// ticketed message.
    pub(super) fn settle_tickets(&mut self, server: &mut Server) {
        let mut outcomes = std::mem::take(&mut self.held.outcomes);
        self.held.tracker.take_outcomes(&mut outcomes);
        // A failed message and those its error skipped are undone last
        // first, so each name ends as it was before the first of them
        // that touched it.
        let mut undo = Vec::new();
        for &outcome in &outcomes {
            let Some(ticket) = self.held.tickets.pop_front() else {
                debug_assert!(false, "an outcome without a ticket");
                break;
            };
            if outcome != Ended::Done {
                undo.push((ticket, outcome));
                continue;
            }
            while let Some((t, o)) = undo.pop() {
                self.settle(server, t, o);
            }
            self.settle(server, ticket, outcome);
        }
        while let Some((t, o)) = undo.pop() {
            self.settle(server, t, o);
        }
        self.held.outcomes = outcomes;
        if self.held.unnamed_pending == 0 {
            self.held.unnamed_latest = server.unnamed.clone();
        }
        if self.held.client_unnamed_pending == 0 {
            self.cs.unnamed = self.held.client_unnamed.clone();
        }
    }

    fn settle(&mut self, server: &mut Server, ticket: Ticket, outcome: Ended) {
        match ticket {
            Ticket::ServerParse { id, client } => {
                match outcome {
                    Ended::Done => {
                        let mut known = self.state.known_statements.lock();
                        if known.len() > 10 * self.limits.statement_cache_size().max(1) {
                            known.clear();
                        }
                        known.insert(id);
                    }
                    Ended::Failed(code) if &code == b"42P05" => {
                        // Something is there under pgcat's name, put
                        // there behind its back: closed and prepared
                        // again next time, so that what runs is ours.
                        server.statements.mark_taken(id);
                    }
                    Ended::Failed(_) | Ended::Skipped => server.statements.remove(id),
                }
                match client {
                    ParseFor::Pgcat => {}
                    ParseFor::Named(name) => {
                        if outcome != Ended::Done {
                            self.cs.statements.restore(name, None);
                        }
                    }
                    ParseFor::Unnamed(value) => self.settle_client_unnamed(value, outcome),
                }
            }
            Ticket::ClientParse(name) => {
                if outcome != Ended::Done {
                    self.cs.statements.restore(name, None);
                }
            }
            Ticket::ClientUnnamed(value) => self.settle_client_unnamed(value, outcome),
            Ticket::UnnamedCheck => {
                if let Ended::Failed(_) = outcome {
                    self.held.client_unnamed = None;
                }
            }
            Ticket::ClientClose(name, prepared) => {
                if outcome != Ended::Done {
                    self.cs.statements.restore(name, Some(prepared));
                }
            }
            Ticket::Deallocate(name, prepared) => {
                if outcome != Ended::Done {
                    self.cs.statements.restore(name, Some(prepared));
                }
                self.held.client_unnamed_pending -= 1;
                self.held.client_unnamed = None;
            }
            Ticket::Bind(id) => match outcome {
                // The server lost it: prepare it again next time.
                Ended::Failed(code) if &code == b"26000" => server.statements.remove(id),
                // "cached plan must not change result type": a table
                // the statement reads changed its columns since the
                // server prepared it. Closed and prepared again next
                // time (PostgreSQL itself never replans into another
                // result type; a direct client would prepare anew).
                Ended::Failed(code) if &code == b"0A000" => server.statements.mark_taken(id),
                _ => {}
            },
            Ticket::Evict(id) => {
                if outcome != Ended::Done {
                    server.statements.restore(id);
                }
            }
            Ticket::Unnamed { value, client } => {
                self.held.unnamed_pending -= 1;
                if client {
                    self.held.client_unnamed_pending -= 1;
                }
                let value = match outcome {
                    Ended::Skipped => return,
                    Ended::Done => value,
                    // A failed Parse has already dropped the old one.
                    Ended::Failed(_) => None,
                };
                if client {
                    self.held.client_unnamed = value.clone();
                }
                server.unnamed = value;
            }
        }
    }

    /// What became of a Parse of the client's unnamed statement that does
    /// not change the server's (a remapped one): a failed Parse drops the
    /// client's unnamed statement, as PostgreSQL's does; a skipped one
    /// leaves the one before.
    fn settle_client_unnamed(&mut self, value: Arc<Unnamed>, outcome: Ended) {
        self.held.client_unnamed_pending -= 1;
        match outcome {
            Ended::Done => self.held.client_unnamed = Some(value),
            Ended::Failed(_) => self.held.client_unnamed = None,
            Ended::Skipped => {}
        }
    }

    /// Transaction mode, no server held: a batch of nothing but Parse
    /// messages for statements this pool's servers already accepted,
    /// closed by Sync (what libpq's PQprepare sends), is answered here, and
    /// so is a lone `DEALLOCATE` of one of the client's statements.
    /// Besides saving a round trip, this matters to clients that block on
    /// a prepare while their other sessions hold every server (pgbench
    /// -M prepared with several clients per thread).
    pub(super) fn prepare_locally(&mut self) -> bool {
        if let Ok(Some(h)) = peek_header(&self.held.cbuf, client_limit) {
            if h.tag == b'Q' && h.total == self.held.cbuf.len() {
                if let Some(Deallocate::Name(name)) = deallocate(&self.held.cbuf[HEADER_LEN..]) {
                    if self.cs.statements.remove(&name).is_some() {
                        self.held.counts.queries += 1;
                        self.cs.unnamed = None;
                        messages::command_complete(&mut self.held.to_client, "DEALLOCATE");
                        messages::ready_for_query(&mut self.held.to_client, b'I');
                        self.held.cbuf.clear();
                        return true;
                    }
                }
                return false;
            }
        }
        let mut pos = 0;
        let mut batch: Vec<(usize, usize)> = Vec::new();
        loop {
            let Ok(Some(h)) = peek_header(&self.held.cbuf[pos..], client_limit) else {
                return false;
            };
            if self.held.cbuf.len() < pos + h.total {
                return false;
            }
            match h.tag {
                // An unnamed statement is never answered here.
                b'P' if self
                    .held
                    .cbuf
                    .get(pos + HEADER_LEN)
                    .is_some_and(|&b| b != 0) =>
                {
                    batch.push((pos + HEADER_LEN, pos + h.total))
                }
                b'S' if pos + h.total == self.held.cbuf.len() && !batch.is_empty() => break,
                _ => return false,
            }
            pos += h.total;
        }
        let limit = self.limits.max_prepared_statements();
        if limit > 0 && self.cs.statements.len() + batch.len() > limit {
            return false;
        }
        let mut parsed = Vec::with_capacity(batch.len());
        {
            let known = self.state.known_statements.lock();
            for &(from, to) in &batch {
                let body = &self.held.cbuf[from..to];
                let Ok((name, rest)) = read_cstr(body, "Parse") else {
                    return false;
                };
                let Ok((query, types)) = read_cstr(rest, "Parse") else {
                    return false;
                };
                // Duplicates get PostgreSQL's error from the server path.
                if name.is_empty()
                    || self.cs.statements.contains(name)
                    || parsed.iter().any(|(n, _): &(&[u8], _)| *n == name)
                {
                    return false;
                }
                let prepared = Prepared::new(rest, query, types);
                if !known.contains(&prepared.id) {
                    return false;
                }
                parsed.push((name, prepared));
            }
        }
        let parsed: Vec<(Box<[u8]>, Prepared)> =
            parsed.into_iter().map(|(n, p)| (n.into(), p)).collect();
        for (name, prepared) in parsed {
            // Within the limit, checked above.
            let _ = self.cs.statements.insert(&name, Arc::new(prepared), 0);
            self.held.counts.client_parses += 1;
            messages::parse_complete(&mut self.held.to_client);
        }
        messages::ready_for_query(&mut self.held.to_client, b'I');
        self.held.cbuf.clear();
        true
    }
}
