//! Follows the request/response pairing of one client's traffic on one
//! server connection, so that the session knows when the server can go
//! back to the pool, and so that pgcat can answer some messages itself
//! (a Parse for a statement the server already has) or hide the replies
//! to messages it added (a Parse it injected before a Bind).
//!
//! Every message that gets a reply pushes one [`Expect`]; each reply pops
//! it. After an ErrorResponse in the extended protocol the server skips
//! everything until Sync, and so does the tracker.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::messages;

/// Why a reply is expected, and what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete. `swallow` hides it from the client (pgcat sent the
    /// Parse); `statement` names the server-side statement it creates.
    Parse {
        swallow: bool,
        statement: Option<u64>,
    },
    Bind,
    /// ParameterDescription + RowDescription/NoData for a statement, or
    /// RowDescription/NoData for a portal.
    Describe,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    Close {
        swallow: bool,
    },
    /// ReadyForQuery after a Sync.
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    Query,
    /// A reply pgcat writes itself when everything before it is answered.
    Synthetic(Synthetic),
    /// The client ended a COPY (CopyDone/CopyFail); no reply of its own.
    CopyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    Swallow,
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
    /// Statements whose Parse failed or was skipped after an error.
    failed: Vec<u64>,
    /// Statements whose Parse succeeded.
    prepared: Vec<u64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::with_capacity(8),
            status: b'I',
            unsynced: false,
            copy_in_extended: false,
            failed: Vec::new(),
            prepared: Vec::new(),
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts over for a new checkout, keeping the queue's allocation.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.status = b'I';
        self.unsynced = false;
        self.copy_in_extended = false;
        self.failed.clear();
        self.prepared.clear();
    }

    /// Records a client message forwarded unchanged. Messages with
    /// statement names that pgcat rewrites push their own [`Expect`].
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.queue.push_back(Expect::Query),
            b'P' => self.push_extended(Expect::Parse {
                swallow: false,
                statement: None,
            }),
            b'B' => self.push_extended(Expect::Bind),
            b'D' => self.push_extended(Expect::Describe),
            b'E' => self.push_extended(Expect::Execute),
            b'C' => self.push_extended(Expect::Close { swallow: false }),
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

    /// Records a server message; the caller forwards it or not, then calls
    /// [`Tracker::emit_due`].
    pub fn server_message(&mut self, tag: u8, body: &[u8]) -> Action {
        let head = self.queue.front().copied();
        match tag {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                self.copy_in_extended = false;
                while let Some(e) = self.queue.pop_front() {
                    match e {
                        Expect::Sync | Expect::Query => break,
                        Expect::Parse {
                            statement: Some(s), ..
                        } => self.failed.push(s),
                        _ => {}
                    }
                }
                Action::Forward
            }
            b'1' => match head {
                Some(Expect::Parse { swallow, statement }) => {
                    self.queue.pop_front();
                    if let Some(s) = statement {
                        self.prepared.push(s);
                    }
                    if swallow {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'2' => {
                self.pop_if(|e| e == Expect::Bind);
                Action::Forward
            }
            b'3' => match head {
                Some(Expect::Close { swallow }) => {
                    self.queue.pop_front();
                    if swallow {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'T' | b'n' => {
                self.pop_if(|e| e == Expect::Describe);
                Action::Forward
            }
            b'C' | b'I' | b's' => {
                self.pop_if(|e| e == Expect::Execute);
                Action::Forward
            }
            b'G' => {
                if head == Some(Expect::Execute) {
                    self.start_extended_copy_in();
                }
                Action::Forward
            }
            b'E' => {
                match head {
                    None | Some(Expect::Sync) | Some(Expect::Query) => {}
                    Some(Expect::Parse { swallow: true, .. }) => {
                        // An injected Parse failed: the client must see why.
                        self.skip_to_sync();
                    }
                    Some(_) => self.skip_to_sync(),
                }
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// Writes the replies pgcat owes the client that are now due, and
    /// drops markers that need no reply.
    pub fn emit_due(&mut self, out: &mut BytesMut) {
        while let Some(head) = self.queue.front() {
            match head {
                Expect::Synthetic(Synthetic::ParseComplete) => messages::parse_complete(out),
                Expect::Synthetic(Synthetic::CloseComplete) => messages::close_complete(out),
                Expect::CopyEnd => {}
                _ => break,
            }
            self.queue.pop_front();
        }
    }

    /// Whether the head of the queue needs no server reply: a synthetic
    /// reply or a marker that [`Tracker::emit_due`] handles.
    pub fn has_due(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Synthetic(_)) | Some(Expect::CopyEnd)
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
            .any(|e| !matches!(e, Expect::Synthetic(_) | Expect::CopyEnd))
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Statements the server does not have after all; drained by the
    /// session to correct its view of the server's statement cache.
    pub fn take_failed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.failed)
    }

    pub fn has_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Statements PostgreSQL accepted since the last call.
    pub fn take_prepared(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.prepared)
    }

    pub fn has_prepared(&self) -> bool {
        !self.prepared.is_empty()
    }

    fn pop_if(&mut self, f: impl Fn(Expect) -> bool) {
        if let Some(&head) = self.queue.front() {
            if f(head) {
                self.queue.pop_front();
            }
        }
    }

    /// After an error the server discards messages up to the next Sync.
    fn skip_to_sync(&mut self) {
        while let Some(&e) = self.queue.front() {
            match e {
                Expect::Sync | Expect::Query => break,
                Expect::Parse {
                    statement: Some(s), ..
                } => self.failed.push(s),
                _ => {}
            }
            self.queue.pop_front();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(t: &mut Tracker, tag: u8) -> Action {
        t.server_message(tag, if tag == b'Z' { b"I" } else { b"" })
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
        t.client_message(b'Q');
        t.server_message(b'C', b"");
        t.server_message(b'Z', b"T");
        assert!(!t.is_idle());
        assert_eq!(t.status(), b'T');
        t.client_message(b'Q');
        t.server_message(b'C', b"");
        t.server_message(b'Z', b"I");
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
    fn error_skips_to_sync_and_reports_lost_statements() {
        let mut t = Tracker::new();
        t.push_extended(Expect::Parse {
            swallow: false,
            statement: Some(1),
        });
        t.push_extended(Expect::Parse {
            swallow: true,
            statement: Some(2),
        });
        t.client_message(b'B');
        t.client_message(b'E');
        t.client_message(b'S');
        assert_eq!(server(&mut t, b'E'), Action::Forward);
        let mut failed = t.take_failed();
        failed.sort();
        assert_eq!(failed, vec![1, 2]);
        server(&mut t, b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn injected_parse_reply_is_swallowed_and_synthetic_replies_keep_order() {
        let mut t = Tracker::new();
        let mut out = BytesMut::new();
        // Client: Parse(known) Bind Execute Sync. The Parse is answered by
        // pgcat; it must come before BindComplete.
        t.push_extended(Expect::Synthetic(Synthetic::ParseComplete));
        t.emit_due(&mut out);
        assert_eq!(&out[..], &[b'1', 0, 0, 0, 4]);
        out.clear();
        // Then: Bind of a statement the server lacks, so pgcat injects a
        // Parse first.
        t.push_extended(Expect::Parse {
            swallow: true,
            statement: Some(7),
        });
        t.client_message(b'B');
        t.client_message(b'E');
        t.push_extended(Expect::Synthetic(Synthetic::CloseComplete));
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
        assert!(t.take_failed().is_empty());
        assert_eq!(t.take_prepared(), vec![7]);
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
}
