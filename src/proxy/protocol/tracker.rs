//! Follows the request/response pairing of one client's traffic on one
//! server connection, so that the session knows when the server can go
//! back to the pool, and so that pgcat can answer some messages itself
//! (a Parse for a statement the server already has), hide the replies to
//! messages it added (a Parse it injected before a Bind), or put an error
//! of its own where PostgreSQL would have raised one.
//!
//! Every message that gets a reply pushes one [`Expect`]; each reply pops
//! it. After an ErrorResponse in the extended protocol the server skips
//! everything until Sync, and so does the tracker.
//!
//! Expectations pushed with a *ticket* report how they ended, in the order
//! they were pushed: done, failed (with the SQLSTATE) or skipped after an
//! earlier error. The session keeps what each ticket stands for (the
//! statement a Parse creates, a name it must forget if the Parse never
//! ran) and settles it from these outcomes; the tracker stays generic.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::messages;

/// Why a reply is expected, and what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete. `swallow` hides it from the client (pgcat sent the
    /// Parse).
    Parse {
        swallow: bool,
        ticket: bool,
    },
    Bind {
        ticket: bool,
    },
    /// ParameterDescription + RowDescription/NoData for a statement, or
    /// RowDescription/NoData for a portal.
    Describe,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    Close {
        swallow: bool,
        ticket: bool,
    },
    /// ReadyForQuery after a Sync.
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    Query {
        ticket: bool,
    },
    /// A reply pgcat writes itself when everything before it is answered.
    Synthetic(Synthetic, bool),
    /// pgcat injected a message that fails on purpose, so that the server
    /// aborts the pipeline exactly as PostgreSQL would have for a client
    /// message pgcat answers itself; the server's error is replaced by
    /// the next error queued with [`Tracker::raise`].
    Raise,
    /// The end of a COPY (CopyDone/CopyFail) sent while other requests
    /// were queued: keeps the queue in order, needs no reply of its own.
    CopyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
    /// A simple query `DEALLOCATE name` of a client's statement: its
    /// CommandComplete and ReadyForQuery, or in a failed transaction the
    /// error PostgreSQL would raise.
    Deallocate,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    Swallow,
}

/// How a ticketed expectation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The server answered this message with an error (SQLSTATE).
    Failed([u8; 5]),
    /// The server never ran it: an earlier error skipped it.
    Skipped,
}

#[derive(Debug)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Transaction status from the last ReadyForQuery: b'I', b'T' or b'E'.
    status: u8,
    /// Extended-protocol messages were sent since the last Sync: the
    /// server holds state (an unnamed statement or portal, an implicit
    /// transaction) that the next Sync settles.
    unsynced: bool,
    /// The server is in copy-in mode started by an Execute; it ignores
    /// Syncs until the client sends CopyDone or CopyFail.
    copy_in_extended: bool,
    /// Outcomes of ticketed expectations, oldest first.
    outcomes: Vec<Outcome>,
    /// ErrorResponses for the queued [`Expect::Raise`], in order.
    raised: VecDeque<Bytes>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::with_capacity(8),
            status: b'I',
            unsynced: false,
            copy_in_extended: false,
            outcomes: Vec::new(),
            raised: VecDeque::new(),
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the tracker is as [`Tracker::new`] leaves it.
    pub fn is_clear(&self) -> bool {
        self.queue.is_empty()
            && self.status == b'I'
            && !self.unsynced
            && !self.copy_in_extended
            && self.outcomes.is_empty()
            && self.raised.is_empty()
    }

    /// Starts over for a new checkout, keeping the queue's allocation.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.status = b'I';
        self.unsynced = false;
        self.copy_in_extended = false;
        self.outcomes.clear();
        self.raised.clear();
    }

    /// Records a client message forwarded unchanged. Messages that pgcat
    /// rewrites push their own [`Expect`].
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.queue.push_back(Expect::Query { ticket: false }),
            b'P' => self.push_extended(Expect::Parse {
                swallow: false,
                ticket: false,
            }),
            b'B' => self.push_extended(Expect::Bind { ticket: false }),
            b'D' => self.push_extended(Expect::Describe),
            b'E' => self.push_extended(Expect::Execute),
            b'C' => self.push_extended(Expect::Close {
                swallow: false,
                ticket: false,
            }),
            b'S' => {
                self.unsynced = false;
                if !self.copy_in_extended {
                    self.queue.push_back(Expect::Sync);
                }
            }
            b'c' | b'f' => {
                if self.copy_in_extended {
                    self.copy_in_extended = false;
                } else if !self.queue.is_empty() {
                    self.queue.push_back(Expect::CopyEnd);
                }
            }
            _ => {}
        }
    }

    /// Pushes the expectation of an extended-protocol message.
    pub fn push_extended(&mut self, expect: Expect) {
        self.unsynced = true;
        self.queue.push_back(expect);
    }

    /// Pushes the expectation of a simple Query pgcat forwards.
    pub fn push_query(&mut self, ticket: bool) {
        self.queue.push_back(Expect::Query { ticket });
    }

    /// Pushes a simple query pgcat answers itself.
    pub fn push_synthetic_query(&mut self, kind: Synthetic, ticket: bool) {
        self.queue.push_back(Expect::Synthetic(kind, ticket));
    }

    /// Queues `error` (a whole ErrorResponse) to replace the server's
    /// error for the failing message pgcat injects now.
    pub fn raise(&mut self, error: Bytes) {
        self.raised.push_back(error);
        self.push_extended(Expect::Raise);
    }

    fn settle(&mut self, expect: Expect, outcome: Outcome) {
        let ticketed = match expect {
            Expect::Parse { ticket, .. }
            | Expect::Bind { ticket }
            | Expect::Close { ticket, .. }
            | Expect::Query { ticket }
            | Expect::Synthetic(_, ticket) => ticket,
            Expect::Raise => {
                self.raised.pop_front();
                false
            }
            _ => false,
        };
        if ticketed {
            self.outcomes.push(outcome);
        }
    }

    fn pop_done(&mut self) {
        if let Some(e) = self.queue.pop_front() {
            self.settle(e, Outcome::Done);
        }
    }

    /// Records a server message; the caller forwards it or not, then calls
    /// [`Tracker::emit_due`]. An ErrorResponse for an [`Expect::Raise`] is
    /// swallowed and its replacement written to `out` in its place.
    pub fn server_message(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Action {
        let head = self.queue.front().copied();
        match tag {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                self.copy_in_extended = false;
                while let Some(e) = self.queue.pop_front() {
                    match e {
                        Expect::Sync => break,
                        Expect::Query { .. } => {
                            self.settle(e, Outcome::Done);
                            break;
                        }
                        _ => self.settle(e, Outcome::Skipped),
                    }
                }
                Action::Forward
            }
            b'1' => match head {
                Some(Expect::Parse { swallow, .. }) => {
                    self.pop_done();
                    if swallow {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'2' => {
                if matches!(head, Some(Expect::Bind { .. })) {
                    self.pop_done();
                }
                Action::Forward
            }
            b'3' => match head {
                Some(Expect::Close { swallow, .. }) => {
                    self.pop_done();
                    if swallow {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'T' | b'n' => {
                if head == Some(Expect::Describe) {
                    self.pop_done();
                }
                Action::Forward
            }
            b'C' | b'I' | b's' => {
                if head == Some(Expect::Execute) {
                    self.pop_done();
                }
                Action::Forward
            }
            b'G' => {
                if head == Some(Expect::Execute) {
                    self.start_extended_copy_in();
                }
                Action::Forward
            }
            b'E' => match head {
                None | Some(Expect::Sync) | Some(Expect::Query { .. }) => Action::Forward,
                Some(Expect::Raise) => {
                    if let Some(error) = self.raised.front() {
                        out.extend_from_slice(error);
                    }
                    self.skip_to_sync(sqlstate(body));
                    Action::Swallow
                }
                Some(_) => {
                    // Including an injected Parse: the client must see why.
                    self.skip_to_sync(sqlstate(body));
                    Action::Forward
                }
            },
            _ => Action::Forward,
        }
    }

    /// Writes the replies pgcat owes the client that are now due, and
    /// drops markers that need no reply.
    pub fn emit_due(&mut self, out: &mut BytesMut) {
        while let Some(&head) = self.queue.front() {
            match head {
                Expect::Synthetic(Synthetic::ParseComplete, _) => messages::parse_complete(out),
                Expect::Synthetic(Synthetic::CloseComplete, _) => messages::close_complete(out),
                Expect::Synthetic(Synthetic::Deallocate, _) if self.status == b'E' => {
                    messages::error_response(
                        out,
                        messages::Severity::Error,
                        "25P02",
                        "current transaction is aborted, commands ignored until end of transaction block",
                    );
                    messages::ready_for_query(out, b'E');
                    self.queue.pop_front();
                    self.settle(head, Outcome::Failed(*b"25P02"));
                    continue;
                }
                Expect::Synthetic(Synthetic::Deallocate, _) => {
                    messages::command_complete(out, "DEALLOCATE");
                    messages::ready_for_query(out, self.status);
                }
                Expect::CopyEnd => {}
                _ => break,
            }
            self.pop_done();
        }
    }

    /// Whether the head of the queue needs no server reply: a synthetic
    /// reply or a marker that [`Tracker::emit_due`] handles.
    pub fn has_due(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Synthetic(..)) | Some(Expect::CopyEnd)
        )
    }

    /// Whether the server can be handed to another client: every request
    /// answered, nothing unsynced, no transaction open.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unsynced && self.status == b'I'
    }

    /// Whether replies are still expected from the server.
    pub fn awaiting_replies(&self) -> bool {
        self.queue
            .iter()
            .any(|e| !matches!(e, Expect::Synthetic(..) | Expect::CopyEnd))
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether ticketed expectations have ended since the last
    /// [`Tracker::take_outcomes`].
    pub fn has_outcomes(&self) -> bool {
        !self.outcomes.is_empty()
    }

    /// The outcomes of ticketed expectations, in the order they were
    /// pushed. `into` is cleared first; swapping buffers keeps both
    /// allocations.
    pub fn take_outcomes(&mut self, into: &mut Vec<Outcome>) {
        into.clear();
        std::mem::swap(into, &mut self.outcomes);
    }

    /// After an error the server discards messages up to the next Sync:
    /// the head failed, the rest is skipped.
    fn skip_to_sync(&mut self, code: [u8; 5]) {
        let mut first = true;
        while let Some(&e) = self.queue.front() {
            if matches!(e, Expect::Sync | Expect::Query { .. }) {
                break;
            }
            self.queue.pop_front();
            let outcome = if first {
                Outcome::Failed(code)
            } else {
                Outcome::Skipped
            };
            first = false;
            self.settle(e, outcome);
        }
    }

    /// A COPY FROM STDIN started by Execute: Syncs the client sent before
    /// ending the copy are ignored by the server, so they get no reply.
    fn start_extended_copy_in(&mut self) {
        let mut ended = false;
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Expect::CopyEnd => {
                    ended = true;
                    break;
                }
                Expect::Sync => {
                    self.queue.remove(i);
                }
                _ => i += 1,
            }
        }
        self.copy_in_extended = !ended;
    }
}

/// The SQLSTATE of an ErrorResponse body ("XX000" when absent).
pub fn sqlstate(body: &[u8]) -> [u8; 5] {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if field == b'C' && end == 5 {
            let mut code = [0u8; 5];
            code.copy_from_slice(&tail[..5]);
            return code;
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    *b"XX000"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(t: &mut Tracker, tag: u8) -> Action {
        let mut out = BytesMut::new();
        t.server_message(tag, if tag == b'Z' { b"I" } else { b"" }, &mut out)
    }

    fn error(code: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        messages::error_response(&mut b, messages::Severity::Error, code, "boom");
        b[5..].to_vec()
    }

    fn outcomes(t: &mut Tracker) -> Vec<Outcome> {
        let mut v = Vec::new();
        t.take_outcomes(&mut v);
        v
    }

    #[test]
    fn simple_query_cycle() {
        let mut t = Tracker::new();
        t.client_message(b'Q');
        assert!(!t.is_idle());
        for tag in [b'T', b'D', b'C', b'T', b'D', b'C'] {
            assert_eq!(server(&mut t, tag), Action::Forward);
            assert!(!t.is_idle());
        }
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn transaction_keeps_server_until_idle_status() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        t.client_message(b'Q');
        t.server_message(b'C', b"", &mut out);
        t.server_message(b'Z', b"T", &mut out);
        assert!(!t.is_idle());
        assert_eq!(t.status(), b'T');
        t.client_message(b'Q');
        t.server_message(b'C', b"", &mut out);
        t.server_message(b'Z', b"I", &mut out);
        assert!(t.is_idle());
    }

    #[test]
    fn pipelined_syncs_wait_for_every_ready_for_query() {
        let mut t = Tracker::new();
        for _ in 0..3 {
            for tag in [b'P', b'B', b'E', b'S'] {
                t.client_message(tag);
            }
        }
        for i in 0..3 {
            for tag in [b'1', b'2', b'C'] {
                server(&mut t, tag);
            }
            server(&mut t, b'Z');
            assert_eq!(t.is_idle(), i == 2);
        }
    }

    #[test]
    fn flush_without_sync_is_not_idle() {
        let mut t = Tracker::new();
        t.client_message(b'P');
        t.client_message(b'H');
        server(&mut t, b'1');
        assert!(!t.awaiting_replies());
        assert!(!t.is_idle());
        t.client_message(b'S');
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn error_fails_the_head_and_skips_the_rest_to_sync() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        t.push_extended(Expect::Parse {
            swallow: false,
            ticket: true,
        });
        t.push_extended(Expect::Parse {
            swallow: true,
            ticket: true,
        });
        t.push_extended(Expect::Bind { ticket: true });
        t.client_message(b'E');
        t.client_message(b'S');
        t.push_extended(Expect::Parse {
            swallow: false,
            ticket: true,
        });
        t.client_message(b'S');
        assert_eq!(server(&mut t, b'1'), Action::Forward);
        let e = error("42601");
        assert_eq!(t.server_message(b'E', &e, &mut out), Action::Forward);
        assert_eq!(
            outcomes(&mut t),
            vec![Outcome::Done, Outcome::Failed(*b"42601"), Outcome::Skipped]
        );
        server(&mut t, b'Z');
        assert!(!t.is_idle());
        server(&mut t, b'1');
        server(&mut t, b'Z');
        assert!(t.is_idle());
        assert_eq!(outcomes(&mut t), vec![Outcome::Done]);
    }

    #[test]
    fn injected_parse_reply_is_swallowed_and_synthetic_replies_keep_order() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        // Client: Parse(known) Bind Execute Sync. The Parse is answered by
        // pgcat; it must come before BindComplete.
        t.push_extended(Expect::Synthetic(Synthetic::ParseComplete, true));
        t.emit_due(&mut out);
        assert_eq!(&out[..], &[b'1', 0, 0, 0, 4]);
        out.clear();
        // Then: Bind of a statement the server lacks, so pgcat injects a
        // Parse first.
        t.push_extended(Expect::Parse {
            swallow: true,
            ticket: true,
        });
        t.client_message(b'B');
        t.client_message(b'E');
        t.push_extended(Expect::Synthetic(Synthetic::CloseComplete, false));
        t.client_message(b'S');
        t.emit_due(&mut out);
        assert!(out.is_empty(), "close reply must wait for Execute's reply");
        assert_eq!(server(&mut t, b'1'), Action::Swallow);
        assert_eq!(server(&mut t, b'2'), Action::Forward);
        assert_eq!(server(&mut t, b'D'), Action::Forward);
        assert_eq!(server(&mut t, b'C'), Action::Forward);
        t.emit_due(&mut out);
        assert_eq!(&out[..], &[b'3', 0, 0, 0, 4]);
        server(&mut t, b'Z');
        assert!(t.is_idle());
        assert_eq!(outcomes(&mut t), vec![Outcome::Done, Outcome::Done]);
    }

    #[test]
    fn synthetic_replies_after_an_error_are_skipped() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        t.client_message(b'B');
        t.client_message(b'E');
        t.push_extended(Expect::Synthetic(Synthetic::CloseComplete, true));
        t.client_message(b'S');
        t.emit_due(&mut out);
        assert!(out.is_empty());
        t.server_message(b'E', &error("26000"), &mut out);
        t.emit_due(&mut out);
        assert!(out.is_empty(), "no CloseComplete after the error");
        server(&mut t, b'Z');
        assert_eq!(outcomes(&mut t), vec![Outcome::Skipped]);
    }

    #[test]
    fn raise_replaces_the_servers_error_with_pgcats() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        let mut mine = BytesMut::new();
        messages::error_response(
            &mut mine,
            messages::Severity::Error,
            "42P05",
            "prepared statement \"s1\" already exists",
        );
        let mine = mine.freeze();
        t.client_message(b'B');
        t.client_message(b'E');
        t.raise(mine.clone());
        t.client_message(b'B');
        t.client_message(b'S');
        server(&mut t, b'2');
        server(&mut t, b'C');
        assert_eq!(
            t.server_message(b'E', &error("26000"), &mut out),
            Action::Swallow
        );
        assert_eq!(&out[..], &mine[..]);
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn a_raise_skipped_by_an_earlier_error_says_nothing() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        t.client_message(b'B');
        t.raise(Bytes::from_static(b"never"));
        t.client_message(b'S');
        assert_eq!(
            t.server_message(b'E', &error("22012"), &mut out),
            Action::Forward
        );
        server(&mut t, b'Z');
        assert!(out.is_empty());
        assert!(t.raised.is_empty());
        assert!(t.is_idle());
    }

    #[test]
    fn a_synthetic_deallocate_answers_in_order_and_fails_in_a_failed_transaction() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        t.client_message(b'Q');
        t.push_synthetic_query(Synthetic::Deallocate, true);
        t.emit_due(&mut out);
        assert!(out.is_empty(), "waits for the query before it");
        t.server_message(b'E', &error("22012"), &mut out);
        t.server_message(b'Z', b"E", &mut out);
        out.clear();
        t.emit_due(&mut out);
        assert_eq!(out[0], b'E');
        assert_eq!(&out[out.len() - 6..], &[b'Z', 0, 0, 0, 5, b'E']);
        assert_eq!(outcomes(&mut t), vec![Outcome::Failed(*b"25P02")]);
        t.push_synthetic_query(Synthetic::Deallocate, true);
        t.status = b'T';
        out.clear();
        t.emit_due(&mut out);
        assert_eq!(out[0], b'C');
        assert_eq!(&out[out.len() - 6..], &[b'Z', 0, 0, 0, 5, b'T']);
        assert_eq!(outcomes(&mut t), vec![Outcome::Done]);
    }

    #[test]
    fn describe_statement_pops_on_row_description() {
        let mut t = Tracker::new();
        t.client_message(b'P');
        t.client_message(b'D');
        t.client_message(b'S');
        server(&mut t, b'1');
        server(&mut t, b't');
        assert!(t.awaiting_replies());
        server(&mut t, b'T');
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn query_tickets_settle_at_ready_for_query() {
        let mut t = Tracker::new();
        t.push_query(true);
        server(&mut t, b'C');
        assert!(!t.has_outcomes());
        server(&mut t, b'Z');
        assert_eq!(outcomes(&mut t), vec![Outcome::Done]);
    }

    #[test]
    fn extended_copy_in_ignores_early_sync() {
        // tokio-postgres: Bind Execute Sync, (CopyInResponse), CopyData*,
        // CopyDone Sync. The first Sync is ignored by the server.
        let mut t = Tracker::new();
        t.client_message(b'B');
        t.client_message(b'E');
        t.client_message(b'S');
        server(&mut t, b'2');
        server(&mut t, b'G');
        t.client_message(b'd');
        t.client_message(b'd');
        t.client_message(b'c');
        t.client_message(b'S');
        server(&mut t, b'C');
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn extended_copy_in_pipelined_end() {
        let mut t = Tracker::new();
        for tag in [b'B', b'E', b'S', b'd', b'c', b'S'] {
            t.client_message(tag);
        }
        server(&mut t, b'2');
        server(&mut t, b'G');
        server(&mut t, b'C');
        let mut out = BytesMut::new();
        t.emit_due(&mut out);
        assert!(!t.is_idle());
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn simple_copy_in_cycle() {
        let mut t = Tracker::new();
        t.client_message(b'Q');
        server(&mut t, b'G');
        t.client_message(b'd');
        t.client_message(b'c');
        server(&mut t, b'C');
        server(&mut t, b'Z');
        let mut out = BytesMut::new();
        t.emit_due(&mut out);
        assert!(t.is_idle());
    }

    #[test]
    fn unexpected_replies_are_forwarded_without_panic() {
        let mut t = Tracker::new();
        for tag in [b'1', b'2', b'3', b'T', b'C', b'E', b'N', b'A', b'S'] {
            assert_eq!(server(&mut t, tag), Action::Forward);
        }
        assert!(t.is_idle());
    }

    #[test]
    fn sqlstate_is_read_from_the_error_fields() {
        assert_eq!(sqlstate(&error("42P05")), *b"42P05");
        assert_eq!(sqlstate(b"\0"), *b"XX000");
        assert_eq!(sqlstate(b"Cxx\0\0"), *b"XX000");
    }
}
