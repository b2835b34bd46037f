//! The hot path: while a client holds a server connection, one task moves
//! bytes both ways. Reads go into reusable buffers; only 5-byte headers
//! are parsed, plus the few bodies that matter (messages naming prepared
//! statements in transaction mode, simple query texts, CommandComplete
//! tags, ReadyForQuery, ParameterStatus); whole runs of messages are
//! forwarded with one write.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::{
    ClientWait, FrameErrorOrMalformed, Outcome, Session, HIGH_WATER, READ_SIZE, STREAM_THRESHOLD,
};
use crate::proxy::buffers;
use crate::proxy::config::PoolMode;
use crate::proxy::mirror::MirrorHandle;
use crate::proxy::pool::PooledServer;
use crate::proxy::protocol::codec::{
    client_limit, peek_header, FrameError, HEADER_LEN, MAX_MESSAGE_LEN,
};
use crate::proxy::protocol::effects::{deallocate, Deallocate, Effects, QueryHints};
use crate::proxy::protocol::messages;
use crate::proxy::protocol::tracker::Action;
use crate::proxy::server::Server;

/// A large message starts streaming once its header and this much of its
/// body are in: enough to see a simple query's first words.
const HEADER_LEN_PLUS_STREAM_PEEK: usize = HEADER_LEN + 64;

/// The portal and statement names at the start of a Bind whose header
/// starts `buf`, once both are there.
fn bind_names(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = buf.get(HEADER_LEN..)?;
    let end = body.iter().position(|&b| b == 0)?;
    let (portal, rest) = (&body[..end], &body[end + 1..]);
    let end = rest.iter().position(|&b| b == 0)?;
    Some((portal, &rest[..end]))
}

impl Session {
    /// Whether the buffer holds enough of the first message to act on: all
    /// of it, or enough of a large message to start streaming it.
    pub(super) fn first_message_ready(&self) -> bool {
        match peek_header(&self.held.cbuf, client_limit) {
            Ok(Some(h)) if self.held.cbuf.len() >= h.total => true,
            Ok(Some(h)) if h.total <= STREAM_THRESHOLD => false,
            Ok(Some(h)) if self.mode == PoolMode::Transaction && h.tag == b'B' => {
                bind_names(&self.held.cbuf).is_some()
            }
            // Held whole in transaction mode: one over the bound is
            // reported by the pump rather than read.
            Ok(Some(h)) if self.mode == PoolMode::Transaction && h.tag == b'P' => {
                h.total > self.limits.max_buffered_message()
            }
            Ok(Some(h)) => {
                self.can_stream_client(h.tag) && self.held.cbuf.len() >= HEADER_LEN_PLUS_STREAM_PEEK
            }
            Ok(None) => false,
            // Let the pump report it.
            Err(_) => true,
        }
    }

    /// Reads more from the client; false on EOF or error.
    pub(super) async fn read_client(&mut self) -> bool {
        // Unparked first: a parked slot comes back with its buffers.
        let held = &mut *self.held;
        if held.cbuf.capacity() == 0 {
            held.cbuf = buffers::take();
        } else if held.cbuf.capacity() - held.cbuf.len() < READ_SIZE / 4 {
            held.cbuf.reserve(READ_SIZE);
        }
        use tokio::io::AsyncReadExt;
        match self.client.read_buf(&mut held.cbuf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.held.counts.bytes_in += n as u64;
                true
            }
        }
    }

    fn can_stream_client(&self, tag: u8) -> bool {
        match tag {
            // Transaction mode reads these whole: they name statements.
            b'P' | b'B' | b'D' | b'C' => self.mode == PoolMode::Session,
            b'X' | b'S' | b'H' => false,
            _ => true,
        }
    }

    pub(super) async fn pump(&mut self, server: &mut PooledServer) -> Outcome {
        let (server, mirrors) = server.split();
        let held = &mut *self.held;
        for buf in [&mut held.to_server, &mut held.to_client, &mut held.sbuf] {
            if buf.capacity() == 0 {
                *buf = buffers::take();
            }
        }
        if let Err(o) = self.process_client(server, mirrors) {
            return o;
        }
        // A session-mode client holds its server between transactions; on
        // shutdown it is let go at the next transaction boundary.
        let rx = (self.mode == PoolMode::Session).then(|| self.shared.shutdown_rx());
        let mut shutdown = std::pin::pin!(async move {
            match rx {
                Some(mut rx) => {
                    let _ = rx.wait_for(|stopping| *stopping).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        let mut stopping = false;
        // Armed only while the pump waits on its client with a bound set:
        // a round trip that waits on the server never touches it.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut armed = (ClientWait::Nothing, 0u64);
        poll_fn(|cx| {
            if !stopping && shutdown.as_mut().poll(cx).is_ready() {
                stopping = true;
            }
            if stopping && self.at_boundary() {
                return Poll::Ready(Outcome::Shutdown);
            }
            if let Poll::Ready(o) = self.poll_pump(cx, server, mirrors) {
                return Poll::Ready(o);
            }
            let wait = self.client_wait();
            let limit = match wait {
                ClientWait::Nothing => None,
                ClientWait::Reading | ClientWait::Message => self.limits.stall(),
                ClientWait::InTransaction => self.limits.idle_in_transaction(),
            };
            let Some(limit) = limit else {
                armed.0 = ClientWait::Nothing;
                return Poll::Pending;
            };
            // Bytes moved to or from the client since the timer was set
            // are progress: the clock starts again.
            let moved = self
                .held
                .counts
                .bytes_in
                .wrapping_add(self.held.counts.bytes_out);
            if armed != (wait, moved) || timer.is_none() {
                let deadline = tokio::time::Instant::now() + limit;
                match timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                armed = (wait, moved);
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) if wait == ClientWait::InTransaction => {
                    Poll::Ready(Outcome::IdleInTransaction)
                }
                Some(Poll::Ready(())) => Poll::Ready(Outcome::Stalled),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Why a pump with nothing to do is waiting on its client, if it is.
    fn client_wait(&self) -> ClientWait {
        if !self.held.to_client.is_empty() && !self.holds_client() {
            // What is left after a write returned Pending: the client's
            // socket is full.
            return ClientWait::Reading;
        }
        if self.held.client_left > 0 {
            // The server cannot answer a message it has only part of.
            return ClientWait::Message;
        }
        if !self.held.to_server.is_empty() || self.held.tracker.awaiting_replies() {
            return ClientWait::Nothing;
        }
        if !self.held.cbuf.is_empty() {
            return ClientWait::Message;
        }
        if self.held.tracker.status() != b'I' || self.held.tracker.unsynced() {
            return ClientWait::InTransaction;
        }
        ClientWait::Nothing
    }

    /// Whether the replies in `to_client` wait for the server's (see
    /// `Held::hold_client`).
    fn holds_client(&self) -> bool {
        self.held.hold_client && self.held.to_client.len() < HIGH_WATER
    }

    fn release_ready(&self) -> bool {
        self.mode == PoolMode::Transaction && self.at_boundary()
    }

    /// Between transactions: nothing in flight either way.
    pub(super) fn at_boundary(&self) -> bool {
        self.held.tracker.is_idle()
            && self.held.to_server.is_empty()
            && self.held.client_left == 0
            && self.held.server_left == 0
            && self.held.sbuf.is_empty()
    }

    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        server: &mut Server,
        mirrors: &mut [MirrorHandle],
    ) -> Poll<Outcome> {
        // Each pass writes what is queued, then reads the server before
        // the client: a reply that completes the transaction releases
        // the server without another look at the client. Writes that
        // finish need no second pass (nothing they free is read before
        // the reads below); a read that brought bytes starts one.
        // Returning Pending means both reads (where allowed) and every
        // pending write registered for a wakeup in this pass.
        loop {
            while !self.held.to_server.is_empty() {
                match Pin::new(&mut server.stream).poll_write(cx, &self.held.to_server) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ServerFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => self.held.to_server.advance(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerFailed(e)),
                    Poll::Pending => break,
                }
            }
            while !self.held.to_client.is_empty() && !self.holds_client() {
                match Pin::new(&mut self.client).poll_write(cx, &self.held.to_client) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        self.held.counts.bytes_out += n as u64;
                        self.held.to_client.advance(n);
                    }
                    Poll::Pending => break,
                }
            }
            if self.release_ready() {
                return Poll::Ready(Outcome::Released);
            }
            if self.route_each
                && !self.held.cbuf.is_empty()
                && self.held.client_left == 0
                && !self.held.tracker.awaiting_replies()
            {
                // A held request, inside the transaction: same server.
                let before = self.held.cbuf.len();
                if let Err(o) = self.process_client(server, mirrors) {
                    return Poll::Ready(o);
                }
                if self.held.cbuf.len() != before {
                    continue;
                }
            }
            if self.held.to_client.len() < HIGH_WATER {
                if self.held.sbuf.capacity() - self.held.sbuf.len() < READ_SIZE / 4 {
                    self.held.sbuf.reserve(READ_SIZE);
                }
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut self.held.sbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ServerFailed(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        )))
                    }
                    Poll::Ready(Ok(_)) => {
                        if let Err(o) = self.process_server(server, mirrors) {
                            return Poll::Ready(o);
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerFailed(e)),
                    Poll::Pending => {}
                }
            }
            // Nor while replies pgcat writes itself (synthesized ones, for
            // a client that pipelines without reading) are waiting.
            if self.held.to_server.len() < HIGH_WATER && self.held.to_client.len() < HIGH_WATER {
                if self.held.cbuf.capacity() - self.held.cbuf.len() < READ_SIZE / 4 {
                    self.held.cbuf.reserve(READ_SIZE);
                }
                match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.held.cbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientGone)
                    }
                    Poll::Ready(Ok(n)) => {
                        self.held.counts.bytes_in += n as u64;
                        if let Err(o) = self.process_client(server, mirrors) {
                            return Poll::Ready(o);
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }

    /// Handles the client bytes in `cbuf`: every complete message, and the
    /// available part of a large one. Pass-through runs move to
    /// `to_server` in one piece (a buffer swap when nothing else is
    /// queued).
    pub(super) fn process_client(
        &mut self,
        server: &mut Server,
        mirrors: &mut [MirrorHandle],
    ) -> Result<(), Outcome> {
        let mirrored_from = self.held.to_server.len();
        let starts_transaction = self.held.tracker.is_idle();
        let replied = self.held.to_client.len();
        let result = self.process_client_messages(server);
        if self.held.to_client.len() > replied
            && (replied == 0 || self.held.hold_client)
            && self.held.tracker.awaiting_replies()
        {
            self.held.hold_client = true;
        }
        if !mirrors.is_empty() && self.held.to_server.len() > mirrored_from {
            let mut copy: Option<(Bytes, Instant)> = None;
            for m in mirrors.iter_mut() {
                if m.wants(starts_transaction) {
                    let (bytes, at) = copy.get_or_insert_with(|| {
                        (
                            Bytes::copy_from_slice(&self.held.to_server[mirrored_from..]),
                            Instant::now(),
                        )
                    });
                    m.data(bytes, *at, starts_transaction);
                }
            }
        }
        result
    }

    fn process_client_messages(&mut self, server: &mut Server) -> Result<(), Outcome> {
        let transaction = self.mode == PoolMode::Transaction;
        let mut pos = 0;
        if self.held.client_left > 0 {
            pos = self.held.client_left.min(self.held.cbuf.len());
            self.held.client_left -= pos;
        }
        if self.held.request_started.is_none() && self.held.client_left == 0 {
            self.note_query_text(pos);
        }
        while self.held.client_left == 0 {
            let rest = &self.held.cbuf[pos..];
            let h = match peek_header(rest, client_limit) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.move_client_run(pos);
                    return Err(Outcome::ClientProtocol(FrameErrorOrMalformed::Frame(e)));
                }
            };
            let available = rest.len();
            if available < h.total {
                if transaction && h.tag == b'P' && h.total > self.limits.max_buffered_message() {
                    self.move_client_run(pos);
                    return Err(Outcome::ClientProtocol(FrameErrorOrMalformed::Frame(
                        FrameError::TooLong {
                            tag: 'P',
                            len: h.total - 1,
                            limit: self.limits.max_buffered_message(),
                        },
                    )));
                }
                if transaction && h.tag == b'B' && h.total > STREAM_THRESHOLD {
                    if let Some((portal, name)) = bind_names(rest) {
                        let (portal, name) = (portal.to_vec(), name.to_vec());
                        self.move_client_run(pos);
                        self.stream_bind(server, h.total, &portal, &name);
                        pos = self.held.cbuf.len();
                    }
                    break;
                }
                if h.total > STREAM_THRESHOLD
                    && self.can_stream_client(h.tag)
                    && available >= HEADER_LEN_PLUS_STREAM_PEEK
                {
                    // Forwarded as it arrives. A simple query this large
                    // is scanned only for what its first part says.
                    if transaction && h.tag == b'Q' {
                        let head = rest[HEADER_LEN..].to_vec();
                        self.note_query(&head);
                    } else {
                        self.note_client(h.tag);
                    }
                    self.held.client_left = h.total - available;
                    pos = self.held.cbuf.len();
                }
                break;
            }
            if self.route_each
                && matches!(h.tag, b'Q' | b'P' | b'B')
                && self.held.tracker.awaiting_replies()
                && !self.held.tracker.unsynced()
            {
                // The start of the next request: held until this one is
                // answered, then routed anew if the transaction is over.
                break;
            }
            match h.tag {
                b'X' => {
                    self.move_client_run(pos);
                    return Err(Outcome::ClientGone);
                }
                b'P' | b'B' | b'D' | b'C' if transaction => {
                    self.move_client_run(pos);
                    pos = 0;
                    let msg = self.held.cbuf.split_to(h.total).freeze();
                    self.rewrite_client(server, h.tag, &msg)?;
                    // A reply pgcat gave at once may have ended a ticket
                    // that the next message depends on.
                    if self.held.tracker.has_outcomes() {
                        self.settle_tickets(server);
                    }
                }
                b'Q' if transaction => {
                    let body = &rest[HEADER_LEN..h.total];
                    if let Some(Deallocate::Name(name)) = deallocate(body) {
                        if self.cs.statements.contains(&name) {
                            // The client's own statement: pgcat answers.
                            self.move_client_run(pos);
                            pos = 0;
                            let _ = self.held.cbuf.split_to(h.total);
                            self.deallocate_locally(name);
                            if self.held.tracker.has_outcomes() {
                                self.settle_tickets(server);
                            }
                            continue;
                        }
                    }
                    let hints = QueryHints::scan(body);
                    self.absorb_hints(hints);
                    self.push_query();
                    pos += h.total;
                }
                tag => {
                    self.note_client(tag);
                    pos += h.total;
                }
            }
        }
        self.move_client_run(pos);
        if self.held.request_started.is_none() && self.held.tracker.awaiting_replies() {
            self.on_request();
        }
        Ok(())
    }

    /// Transaction mode: a simple query, scanned for what it may do to
    /// session state.
    fn note_query(&mut self, text: &[u8]) {
        self.absorb_hints(QueryHints::scan(text));
        self.push_query();
    }

    fn push_query(&mut self) {
        self.held.counts.queries += 1;
        let ticket = self.query_clears_unnamed();
        self.held.tracker.push_query(ticket);
    }

    /// A request may start with the message at `pos` of `cbuf`: the
    /// client's registry entry gets its query text (SHOW CLIENTS, the
    /// dashboard). Only messages that carry or name a query count; an
    /// unnamed statement's Bind keeps the text its Parse gave.
    fn note_query_text(&self, pos: usize) {
        let rest = &self.held.cbuf[pos..];
        let Some(&tag) = rest.first() else {
            return;
        };
        let body = rest.get(HEADER_LEN..).unwrap_or_default();
        let before_nul = |b: &[u8]| -> usize { b.iter().position(|&c| c == 0).unwrap_or(b.len()) };
        match tag {
            b'Q' => self.info.begin_query(&body[..before_nul(body)]),
            b'P' => {
                let after_name = before_nul(body) + 1;
                if let Some(q) = body.get(after_name..) {
                    self.info.begin_query(&q[..before_nul(q)]);
                }
            }
            b'B' => {
                let Some((_, name)) = bind_names(rest) else {
                    return;
                };
                if name.is_empty() {
                    return;
                }
                match self.cs.statements.get(name) {
                    Some(p) => {
                        // The Parse pgcat keeps: header, server name, text.
                        let b = p.parse.get(HEADER_LEN..).unwrap_or_default();
                        let q = b.get(before_nul(b) + 1..).unwrap_or_default();
                        self.info.begin_query(&q[..before_nul(q)]);
                    }
                    None => {
                        let mut shown = b"EXECUTE ".to_vec();
                        shown.extend_from_slice(name);
                        self.info.begin_query(&shown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Bookkeeping for a client message forwarded unchanged.
    fn note_client(&mut self, tag: u8) {
        self.held.tracker.client_message(tag);
        match tag {
            b'P' => {
                self.held.counts.client_parses += 1;
                self.held.counts.server_parses += 1;
            }
            b'B' => self.held.counts.binds += 1,
            b'Q' | b'E' => self.held.counts.queries += 1,
            _ => {}
        }
    }

    /// Moves the first `n` bytes of `cbuf` to `to_server`.
    pub(super) fn move_client_run(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let held = &mut *self.held;
        if held.to_server.is_empty() && n == held.cbuf.len() {
            std::mem::swap(&mut held.to_server, &mut held.cbuf);
        } else {
            held.to_server.extend_from_slice(&held.cbuf[..n]);
            held.cbuf.advance(n);
        }
    }

    /// Handles server bytes in `sbuf`, like `process_client` the other
    /// way: forwards runs to `to_client`, drops replies to messages pgcat
    /// injected, inserts replies pgcat owes, follows ParameterStatus and
    /// the command tags that say session state changed.
    fn process_server(
        &mut self,
        server: &mut Server,
        mirrors: &mut [MirrorHandle],
    ) -> Result<(), Outcome> {
        let transaction = self.mode == PoolMode::Transaction;
        let held = &mut *self.held;
        // The server is answering: what pgcat wrote itself goes out with
        // its replies.
        held.hold_client = false;
        let mut pos = 0;
        let mut run_start = 0;
        let mut ready = false;
        if held.server_left > 0 {
            pos = held.server_left.min(held.sbuf.len());
            held.server_left -= pos;
        }
        while held.server_left == 0 {
            let rest = &held.sbuf[pos..];
            let h = match peek_header(rest, |_| MAX_MESSAGE_LEN) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    return Err(Outcome::ServerFailed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    )))
                }
            };
            if rest.len() < h.total {
                if h.total > STREAM_THRESHOLD && !matches!(h.tag, b'Z' | b'S' | b'1' | b'3' | b'E')
                {
                    held.tracker.server_message(h.tag, &[], &mut held.to_client);
                    held.server_left = h.total - rest.len();
                    pos = held.sbuf.len();
                }
                break;
            }
            let body = &rest[HEADER_LEN..h.total];
            match h.tag {
                b'Z' => ready = true,
                b'C' if transaction => {
                    let effects = Effects::of_tag(body);
                    if effects.contains(Effects::CLIENT_STATEMENTS) {
                        // DEALLOCATE ALL, DISCARD ALL: the server has no
                        // named statement left, pgcat's included, from
                        // here on (later in this very transaction too).
                        self.cs.statements.clear();
                        server.statements.clear();
                    }
                    held.effects |= effects;
                }
                // Session mode only notes that settings changed, for the
                // reset at the end of the session.
                b'C' if Effects::of_tag(body).contains(Effects::SETTINGS) => {
                    held.effects |= Effects::SETTINGS;
                }
                b'S' => {
                    if let Ok((k, v)) = messages::parse_parameter_status(body) {
                        if k == "application_name" {
                            *self.info.application_name.lock() = v.as_str().into();
                            *server.info.application_name.lock() = v.clone();
                        }
                        server.params.set(&k, &v);
                        if self.cs.reported.differs(&k, &v) {
                            Arc::make_mut(&mut self.cs.reported).set(&k, &v);
                        }
                    }
                }
                _ => {}
            }
            // An error pgcat replaces goes after the run forwarded so far.
            if h.tag == b'E' {
                held.to_client.extend_from_slice(&held.sbuf[run_start..pos]);
                run_start = pos;
            }
            let action = held.tracker.server_message(
                h.tag,
                &held.sbuf[pos + HEADER_LEN..pos + h.total],
                &mut held.to_client,
            );
            match action {
                Action::Forward => pos += h.total,
                Action::Swallow => {
                    if h.tag != b'E' {
                        held.to_client.extend_from_slice(&held.sbuf[run_start..pos]);
                    }
                    pos += h.total;
                    run_start = pos;
                }
            }
            if held.tracker.has_due() {
                held.to_client.extend_from_slice(&held.sbuf[run_start..pos]);
                run_start = pos;
                held.tracker.emit_due(&mut held.to_client);
            }
        }
        if self.held.tracker.has_outcomes() {
            self.settle_tickets(server);
        }
        let held = &mut *self.held;
        if run_start == 0 && pos == held.sbuf.len() && held.to_client.is_empty() {
            std::mem::swap(&mut held.to_client, &mut held.sbuf);
        } else {
            held.to_client.extend_from_slice(&held.sbuf[run_start..pos]);
            held.sbuf.advance(pos);
        }
        if ready {
            self.on_ready_for_query();
            if self.held.tracker.is_idle() {
                for m in mirrors.iter_mut() {
                    m.boundary();
                }
            }
        }
        Ok(())
    }
}
