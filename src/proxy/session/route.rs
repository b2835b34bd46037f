//! The session's side of routing: PgCat's commands answered without a
//! server, and the start of each transaction read for the router before
//! a server is checked out (see `proxy::router`).

use std::sync::Arc;

use super::Session;
use crate::proxy::pool::UserPool;
use crate::proxy::protocol::codec::{client_limit, peek_header, HEADER_LEN};
use crate::proxy::protocol::messages::read_cstr;
use crate::proxy::router::{self, commands, ClientRouter, Request, RoleRequest, RouterConfig};

impl Session {
    /// Whether the request at the head of the buffer may be one of PgCat's
    /// commands (a whole simple query starting with SET or SHOW): cheap,
    /// so every transaction can ask.
    pub(super) fn may_be_router_command(&self) -> bool {
        let Ok(Some(h)) = peek_header(&self.held.cbuf, client_limit) else {
            return false;
        };
        if h.tag != b'Q' || self.held.cbuf.len() < h.total {
            return false;
        }
        let body = &self.held.cbuf[HEADER_LEN..h.total];
        let start = body.iter().position(|&b| b != b' ').unwrap_or(body.len());
        body.get(start..start + 4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"set ") || w.eq_ignore_ascii_case(b"show"))
    }

    /// Whether a whole simple query is at the head of the buffer.
    pub(super) fn head_is_whole_query(&self) -> bool {
        matches!(peek_header(&self.held.cbuf, client_limit), Ok(Some(h)) if h.tag == b'Q' && self.held.cbuf.len() >= h.total)
    }

    /// PgCat's plugins on the simple query at the head of the buffer: true
    /// when they answered it (intercepted or refused) without a server.
    pub(super) fn plugins_answer(&mut self, pool: &UserPool) -> bool {
        let Some(plugins) = pool
            .settings
            .plugins
            .as_ref()
            .filter(|p| p.inspects_queries())
        else {
            return false;
        };
        let Ok(Some(h)) = peek_header(&self.held.cbuf, client_limit) else {
            return false;
        };
        let text = String::from_utf8_lossy(&self.held.cbuf[HEADER_LEN..h.total]).into_owned();
        if !plugins.on_query(
            &text,
            &self.info.db,
            &self.info.user,
            &mut self.held.to_client,
        ) {
            return false;
        }
        self.held.counts.queries += 1;
        let _ = self.held.cbuf.split_to(h.total);
        true
    }

    /// Answers one of PgCat's routing commands at the head of the buffer;
    /// false when it is not one.
    pub(super) fn router_command(&mut self, pool: &UserPool) -> bool {
        let Ok(Some(h)) = peek_header(&self.held.cbuf, client_limit) else {
            return false;
        };
        let Some(command) = commands::parse(&self.held.cbuf[HEADER_LEN..h.total]) else {
            return false;
        };
        let router = self.cs.router.get_or_insert_with(Box::default);
        router
            .state
            .command(command, &pool.settings.router, &mut self.held.to_client);
        self.held.counts.queries += 1;
        let _ = self.held.cbuf.split_to(h.total);
        true
    }

    /// Where the transaction at the head of the buffer goes: a shard (None:
    /// the pool's default) and a role. Reads only what routing needs; a
    /// pool with one shard and one server reads nothing.
    pub(super) fn route(&mut self, config: &Arc<RouterConfig>) -> (Option<usize>, RoleRequest) {
        if !config.active() {
            return (None, RoleRequest::Any);
        }
        let cbuf = &self.held.cbuf;
        let cs = &mut *self.cs;
        let binds = config.binds_matter();
        let mut request = Request::default();
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&cbuf[pos..], client_limit) {
            let complete = pos + h.total <= cbuf.len();
            let body = &cbuf[(pos + HEADER_LEN).min(cbuf.len())..(pos + h.total).min(cbuf.len())];
            let first = request.text.is_none();
            match h.tag {
                b'Q' => {
                    if first {
                        request.text = Some(body);
                        request.complete = complete;
                    }
                    break;
                }
                b'P' => {
                    if first {
                        // The text after the statement name.
                        if let Ok((_, rest)) = read_cstr(body, "Parse") {
                            let query = read_cstr(rest, "Parse").map_or(rest, |(q, _)| q);
                            request.text = Some(query);
                            request.complete = complete && query.len() < rest.len();
                        }
                    }
                    if !binds {
                        break;
                    }
                }
                b'B' => {
                    let names =
                        read_cstr(body, "Bind").and_then(|(_, rest)| read_cstr(rest, "Bind"));
                    let Ok((name, params)) = names else {
                        break;
                    };
                    if first {
                        // A statement prepared in an earlier transaction.
                        if name.is_empty() {
                            if let Some(u) = cs.unnamed.as_ref() {
                                let query =
                                    read_cstr(&u.body, "Parse").map_or(&u.body[..], |(q, _)| q);
                                request.text = Some(query);
                                request.complete = true;
                            }
                        } else if let Some(p) = cs.statements.get(name) {
                            request.text = Some(prepared_text(&p.parse));
                            request.complete = true;
                        }
                    }
                    if binds && complete {
                        request.bind = router::bind_values(params);
                    }
                    break;
                }
                b'D' | b'E' | b'C' | b'H' => {}
                _ => break,
            }
            if !complete {
                break;
            }
            pos += h.total;
        }
        let router: &mut ClientRouter = cs.router.get_or_insert_with(Box::default);
        router.route(config, &request)
    }
}

/// The query text of a whole Parse message (pgcat's own, with its
/// server-side name).
fn prepared_text(parse: &[u8]) -> &[u8] {
    let body = parse.get(HEADER_LEN..).unwrap_or_default();
    read_cstr(body, "Parse")
        .and_then(|(_, rest)| read_cstr(rest, "Parse"))
        .map_or(&[][..], |(q, _)| q)
}
