//! Routing: which shard and which server role a transaction goes to,
//! decided on its first statement before a server is checked out, and
//! kept for the whole transaction.
//!
//! - `commands`: PgCat's `SET SHARD`, `SET SHARDING KEY`, `SET SERVER
//!   ROLE`, `SET PRIMARY READS` and their `SHOW`s, answered here.
//! - `parser`: reads or writes, and sharding keys, from a real SQL parser.
//! - `sharding`: `pg_bigint_hash` (PostgreSQL's hash partitioning) and
//!   `sha1`.
//!
//! A client's router state (its shard, role and overrides) persists from
//! transaction to transaction, as in PgCat. Pools with one shard and no
//! replicas skip all of this but the commands.

pub mod commands;
pub mod parser;
pub mod plugins;
pub mod shape;
pub mod sharding;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use regex::Regex;

use self::commands::{Command, RoleSetting, ShardTarget};
use self::parser::{Inference, ParserConfig};
use crate::proxy::config::{DefaultRole, Pool, Role, ShardingFunction};
use crate::proxy::protocol::messages::{self, Severity};

/// The servers a transaction may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleRequest {
    Primary,
    /// Replicas only (`default_role = "replica"`, `SET SERVER ROLE TO
    /// 'replica'`): when none can take it the query fails, as in PgCat.
    Replica,
    /// A read the query parser found: replicas first, the primary when no
    /// replica can take it.
    Read,
    Any,
}

/// How a pool routes, from its config.
#[derive(Debug)]
pub struct RouterConfig {
    pub shards: usize,
    /// The pool has replicas or servers whose role is found at run time:
    /// reads and writes can go different ways.
    pub has_replicas: bool,
    pub sharding_function: ShardingFunction,
    pub shard_id_regex: Option<Regex>,
    pub sharding_key_regex: Option<Regex>,
    pub regex_search_limit: usize,
    pub parser_enabled: bool,
    pub read_write_splitting: bool,
    pub parser_max_length: Option<usize>,
    pub primary_reads: bool,
    pub default_role: DefaultRole,
    pub parser: ParserConfig,
    /// The parser's readings of texts seen lately, by text: a statement
    /// sent again (a parameterized query, a prepared statement) is parsed
    /// once per pool, not at every execution.
    pub readings: ReadingCache,
}

/// Readings by query text, bounded: past the bound it starts over.
#[derive(Debug, Default)]
pub struct ReadingCache {
    map: parking_lot::Mutex<HashMap<Box<[u8]>, Arc<Reading>>>,
}

/// Texts whose readings a pool keeps, and the longest text kept.
const READINGS_KEPT: usize = 4096;
const READING_TEXT_MAX: usize = 4096;

impl ReadingCache {
    /// The reading of `text`, parsed now if not seen lately. Keyed by
    /// the text's shape (literals blanked) unless sharding keys are read
    /// from texts, whose values matter.
    fn get(&self, config: &RouterConfig, text: &[u8]) -> Arc<Reading> {
        if text.len() > READING_TEXT_MAX {
            return Arc::new(infer_text(config, text));
        }
        let shaped = if config.parser.key.is_none() {
            shape::shape(text)
        } else {
            None
        };
        let key: &[u8] = shaped.as_deref().unwrap_or(text);
        if let Some(r) = self.map.lock().get(key) {
            return r.clone();
        }
        let reading = Arc::new(infer_text(config, text));
        let mut map = self.map.lock();
        if map.len() >= READINGS_KEPT {
            map.clear();
        }
        map.insert(key.into(), reading.clone());
        reading
    }
}

impl RouterConfig {
    /// Whether routing has anything to decide: more than one shard, more
    /// than one server role, or comments to read. A pool with one shard
    /// and one server skips the router (but for its commands).
    pub fn active(&self) -> bool {
        self.shards > 1 || self.has_replicas || self.needs_text()
    }

    /// Whether a Bind's parameters can name the shard.
    pub fn binds_matter(&self) -> bool {
        self.shards > 1 && self.parser.key.is_some()
    }

    /// From a pool's config (already validated: the regexes compile).
    pub fn from_pool(pool: &Pool) -> RouterConfig {
        let servers = || pool.shards.values().flat_map(|s| s.servers.iter());
        let regex = |r: &Option<String>| r.as_deref().and_then(|r| Regex::new(r).ok());
        let functions = &pool.query_parser_read_functions;
        RouterConfig {
            shards: pool.shards.len().max(1),
            has_replicas: servers().any(|s| s.2 != Role::Primary),
            sharding_function: pool.sharding_function,
            shard_id_regex: regex(&pool.shard_id_regex),
            sharding_key_regex: regex(&pool.sharding_key_regex),
            regex_search_limit: pool.regex_search_limit,
            parser_enabled: pool.query_parser_enabled,
            read_write_splitting: pool.query_parser_read_write_splitting,
            parser_max_length: pool.query_parser_max_length,
            primary_reads: pool.primary_reads_enabled,
            default_role: pool.default_role,
            readings: ReadingCache::default(),
            parser: ParserConfig {
                key: pool
                    .automatic_sharding_key
                    .as_deref()
                    .and_then(parser::ShardingKey::parse),
                all_functions_read: functions.iter().any(|f| f == "*"),
                read_functions: functions
                    .iter()
                    .filter(|f| *f != "*")
                    .map(|f| f.to_lowercase())
                    .collect(),
            },
        }
    }

    /// Whether the query text matters for routing at all.
    fn needs_text(&self) -> bool {
        self.shard_id_regex.is_some() || self.sharding_key_regex.is_some()
    }

    fn default_role(&self) -> Option<RoleRequest> {
        match self.default_role {
            DefaultRole::Primary => Some(RoleRequest::Primary),
            DefaultRole::Replica => Some(RoleRequest::Replica),
            DefaultRole::Any => None,
            // The parser decides; without it, the primary.
            DefaultRole::Auto => Some(RoleRequest::Primary),
        }
    }
}

/// A client's routing state, kept across transactions.
#[derive(Debug, Clone, Default)]
pub struct RouterState {
    /// Set by SET SHARD, SET SHARDING KEY, a comment or a key.
    pub shard: Option<usize>,
    /// The role asked for; None: any.
    pub role: Option<RoleRequest>,
    /// SET SERVER ROLE's say on the parser (None: the pool's).
    pub parser: Option<bool>,
    /// SET PRIMARY READS (None: the pool's).
    pub primary_reads: Option<bool>,
    /// Whether `role` has been set from the pool's default yet.
    started: bool,
}

/// The parser's reading of a text.
pub type Reading = Result<Inference, String>;

/// A client's router: its state, created on its first routed transaction
/// or routing command.
#[derive(Debug, Default)]
pub struct ClientRouter {
    pub state: RouterState,
}

/// The start of a transaction as the router needs it.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// The first statement's text (a simple query's, or a Parse's).
    pub text: Option<&'a [u8]>,
    /// The text is all there (false: a large message still arriving).
    pub complete: bool,
    /// The first Bind's integer parameters.
    pub bind: Option<Vec<Option<i64>>>,
}

impl ClientRouter {
    /// Where a transaction starting with `request` goes.
    pub fn route(
        &mut self,
        config: &RouterConfig,
        request: &Request,
    ) -> (Option<usize>, RoleRequest) {
        let parses = self.state.parser_on(config) && (config.has_replicas || config.shards > 1);
        let reading: Option<Arc<Reading>> = match request.text {
            Some(_) if parses && !request.complete => Some(Arc::new(Err(
                "the statement is still arriving: too large to read before routing".into(),
            ))),
            Some(text) if parses => Some(config.readings.get(config, text)),
            _ => None,
        };
        self.state.route(
            config,
            request.text,
            reading.as_deref(),
            request.bind.as_deref(),
        )
    }
}

impl RouterState {
    fn start(&mut self, config: &RouterConfig) {
        if !self.started {
            self.role = config.default_role();
            self.parser = (config.default_role == DefaultRole::Auto).then_some(true);
            self.started = true;
        }
    }

    fn parser_on(&self, config: &RouterConfig) -> bool {
        self.parser.unwrap_or(config.parser_enabled)
    }

    fn primary_reads_on(&self, config: &RouterConfig) -> bool {
        self.primary_reads.unwrap_or(config.primary_reads)
    }

    /// Answers one of PgCat's commands, writing the reply to `out`.
    pub fn command(&mut self, command: Command, config: &RouterConfig, out: &mut BytesMut) {
        self.start(config);
        match command {
            Command::SetShardingKey(key) => match key.parse::<i64>() {
                Ok(key) => {
                    self.shard = Some(sharding::shard_of(
                        config.sharding_function,
                        key,
                        config.shards,
                    ));
                    complete(out, "SET SHARDING KEY");
                }
                Err(_) => error(out, &format!("sharding key {key} is out of range")),
            },
            Command::SetShard(ShardTarget::Any) => {
                self.shard = Some(rand::random::<usize>() % config.shards.max(1));
                complete(out, "SET SHARD");
            }
            Command::SetShard(ShardTarget::Number(n)) => match n.parse::<usize>() {
                Ok(n) if n < config.shards => {
                    self.shard = Some(n);
                    complete(out, "SET SHARD");
                }
                _ => error(
                    out,
                    &format!(
                        "shard {n} is not configured {}, staying on shard {:?} (shard numbers start at 0)",
                        config.shards, self.shard
                    ),
                ),
            },
            Command::ShowShard => show(
                out,
                "shard",
                &self.shard.map_or("unset".into(), |s| s.to_string()),
            ),
            Command::SetServerRole(setting) => {
                match setting {
                    RoleSetting::Primary => (self.role, self.parser) = (Some(RoleRequest::Primary), Some(false)),
                    RoleSetting::Replica => (self.role, self.parser) = (Some(RoleRequest::Replica), Some(false)),
                    RoleSetting::Any => (self.role, self.parser) = (None, Some(false)),
                    RoleSetting::Auto => (self.role, self.parser) = (None, Some(true)),
                    RoleSetting::Default => {
                        self.started = false;
                        self.start(config);
                        if config.default_role != DefaultRole::Auto {
                            self.parser = None;
                        }
                    }
                }
                complete(out, "SET SERVER ROLE");
            }
            Command::ShowServerRole => {
                let role = match self.role {
                    Some(RoleRequest::Primary) => "primary",
                    Some(RoleRequest::Replica) => "replica",
                    _ if self.parser_on(config) => "auto",
                    _ => "any",
                };
                show(out, "server role", role);
            }
            Command::SetPrimaryReads(v) => {
                self.primary_reads = v;
                complete(out, "SET PRIMARY READS");
            }
            Command::ShowPrimaryReads => show(
                out,
                "primary reads",
                if self.primary_reads_on(config) { "on" } else { "off" },
            ),
        }
    }

    /// Routes a transaction whose first statement has `text` (a simple
    /// query or a Parse; None when the text is not at hand), with
    /// `inferred` the parser's reading of it if already known (a prepared
    /// statement's) and `bind` the parameters bound to it.
    pub fn route(
        &mut self,
        config: &RouterConfig,
        text: Option<&[u8]>,
        inferred: Option<&Result<Inference, String>>,
        bind: Option<&[Option<i64>]>,
    ) -> (Option<usize>, RoleRequest) {
        self.start(config);
        if let Some(text) = text.filter(|_| config.needs_text()) {
            self.comment_shard(config, text);
        }
        let parse = self.parser_on(config) && (config.has_replicas || config.shards > 1);
        if parse {
            let computed;
            let inference = match inferred {
                Some(i) => Some(i),
                None => match text {
                    Some(t) => {
                        computed = infer_text(config, t);
                        Some(&computed)
                    }
                    None => None,
                },
            };
            if let Some(inference) = inference {
                self.apply(config, inference, bind);
            }
        }
        let role = self.role.unwrap_or(RoleRequest::Any);
        (self.shard, role)
    }

    fn apply(
        &mut self,
        config: &RouterConfig,
        inference: &Result<Inference, String>,
        bind: Option<&[Option<i64>]>,
    ) {
        match inference {
            Err(_) => {
                // Not understood: the primary can run anything.
                if config.read_write_splitting {
                    self.role = Some(RoleRequest::Primary);
                }
            }
            Ok(inf) => {
                if config.read_write_splitting {
                    self.role = Some(if inf.write {
                        RoleRequest::Primary
                    } else if self.primary_reads_on(config) {
                        RoleRequest::Any
                    } else {
                        RoleRequest::Read
                    });
                }
                if config.shards > 1 && inf.key_error.is_none() {
                    let mut keys = inf.keys.clone();
                    if let Some(bind) = bind {
                        keys.extend(
                            inf.placeholders
                                .iter()
                                .filter_map(|&n| bind.get(n.wrapping_sub(1)).copied().flatten()),
                        );
                    }
                    let mut shards = keys
                        .iter()
                        .map(|&k| sharding::shard_of(config.sharding_function, k, config.shards));
                    if let Some(first) = shards.next() {
                        if shards.all(|s| s == first) {
                            self.shard = Some(first);
                        }
                    }
                }
            }
        }
    }

    /// `shard_id_regex` and `sharding_key_regex` over the start of the
    /// text (`regex_search_limit` bytes).
    fn comment_shard(&mut self, config: &RouterConfig, text: &[u8]) {
        let text = &text[..text.len().min(config.regex_search_limit)];
        let text = String::from_utf8_lossy(text);
        let group = |r: &Option<Regex>| {
            r.as_ref()
                .and_then(|r| r.captures(&text))
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_string())
        };
        if let Some(id) = group(&config.shard_id_regex).and_then(|s| s.parse::<usize>().ok()) {
            self.shard = Some(id);
        } else if let Some(key) =
            group(&config.sharding_key_regex).and_then(|s| s.parse::<i64>().ok())
        {
            self.shard = Some(sharding::shard_of(
                config.sharding_function,
                key,
                config.shards,
            ));
        }
    }
}

/// The parser's reading of a text, bounded by `query_parser_max_length`.
pub fn infer_text(config: &RouterConfig, text: &[u8]) -> Result<Inference, String> {
    if let Some(max) = config.parser_max_length {
        if text.len() > max {
            return Err(format!("Query too long for parser: {} > {max}", text.len()));
        }
    }
    let text = text.strip_suffix(b"\0").unwrap_or(text);
    let sql = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    parser::infer(sql, &config.parser)
}

/// The integer values of a Bind's parameters (text or binary int2/4/8),
/// by position; None where a parameter is not one. `body` starts after
/// the two names.
pub fn bind_values(body: &[u8]) -> Option<Vec<Option<i64>>> {
    let mut b = body;
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h.to_vec())
    };
    let nformats = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?) as usize;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?));
    }
    let nparams = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?) as usize;
    if formats.len() > 1 && formats.len() != nparams {
        return None;
    }
    let mut out = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let len = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = take(&mut b, len as usize)?;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        out.push(if format == 0 {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        } else {
            match v.len() {
                2 => Some(i16::from_be_bytes(v.try_into().ok()?) as i64),
                4 => Some(i32::from_be_bytes(v.try_into().ok()?) as i64),
                8 => Some(i64::from_be_bytes(v.try_into().ok()?)),
                _ => None,
            }
        });
    }
    Some(out)
}

fn complete(out: &mut BytesMut, tag: &str) {
    messages::command_complete(out, tag);
    messages::ready_for_query(out, b'I');
}

/// PgCat's own errors are 58000.
fn error(out: &mut BytesMut, message: &str) {
    messages::error_response(out, Severity::Error, "58000", message);
    messages::ready_for_query(out, b'I');
}

fn show(out: &mut BytesMut, column: &str, value: &str) {
    messages::row_description_text(out, &[column]);
    messages::data_row_text(out, &[Some(value)]);
    messages::command_complete(out, "SELECT 1");
    messages::ready_for_query(out, b'I');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(shards: usize) -> RouterConfig {
        RouterConfig {
            shards,
            has_replicas: true,
            sharding_function: ShardingFunction::PgBigintHash,
            shard_id_regex: Regex::new(r"/\* shard_id: (\d+) \*/").ok(),
            sharding_key_regex: Regex::new(r"/\* sharding_key: (\d+) \*/").ok(),
            regex_search_limit: 1000,
            parser_enabled: true,
            read_write_splitting: true,
            parser_max_length: None,
            primary_reads: false,
            default_role: DefaultRole::Any,
            readings: ReadingCache::default(),
            parser: ParserConfig {
                key: parser::ShardingKey::parse("data.id"),
                ..Default::default()
            },
        }
    }

    #[test]
    fn reads_go_to_replicas_writes_to_the_primary() {
        let c = config(1);
        let mut s = RouterState::default();
        assert_eq!(
            s.route(&c, Some(b"SELECT 1\0"), None, None).1,
            RoleRequest::Read
        );
        assert_eq!(
            s.route(&c, Some(b"UPDATE t SET a = 1\0"), None, None).1,
            RoleRequest::Primary
        );
        assert_eq!(
            s.route(&c, Some(b"SELEC nonsense\0"), None, None).1,
            RoleRequest::Primary
        );
        s.primary_reads = Some(true);
        assert_eq!(
            s.route(&c, Some(b"SELECT 1\0"), None, None).1,
            RoleRequest::Any
        );
        let mut c2 = config(1);
        c2.parser_max_length = Some(5);
        let mut s = RouterState::default();
        assert_eq!(
            s.route(&c2, Some(b"SELECT 1\0"), None, None).1,
            RoleRequest::Primary
        );
    }

    #[test]
    fn shards_from_comments_keys_and_binds() {
        let c = config(3);
        let mut s = RouterState::default();
        assert_eq!(
            s.route(&c, Some(b"/* shard_id: 2 */ SELECT 1"), None, None)
                .0,
            Some(2)
        );
        assert_eq!(
            s.route(&c, Some(b"/* sharding_key: 3 */ SELECT 1"), None, None)
                .0,
            Some(1)
        );
        assert_eq!(
            s.route(&c, Some(b"SELECT * FROM data WHERE id = 5"), None, None)
                .0,
            Some(2)
        );
        let bind = [Some(6)];
        assert_eq!(
            s.route(
                &c,
                Some(b"SELECT * FROM data WHERE id = $1"),
                None,
                Some(&bind)
            )
            .0,
            Some(0)
        );
    }

    #[test]
    fn commands_answer_as_pgcat() {
        let c = config(3);
        let mut s = RouterState::default();
        let mut out = BytesMut::new();
        s.command(
            Command::SetShard(ShardTarget::Number("7".into())),
            &c,
            &mut out,
        );
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("shard 7 is not configured 3, staying on shard None"),
            "{text}"
        );
        out.clear();
        s.command(Command::SetShardingKey("3".into()), &c, &mut out);
        assert_eq!(s.shard, Some(1));
        s.command(Command::SetServerRole(RoleSetting::Auto), &c, &mut out);
        assert_eq!((s.role, s.parser), (None, Some(true)));
        out.clear();
        s.command(Command::ShowServerRole, &c, &mut out);
        assert!(String::from_utf8_lossy(&out).contains("auto"));
    }

    #[test]
    fn bind_values_in_text_and_binary() {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"42");
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&(-7i64).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(bind_values(&b), None, "three params, two formats");
        let mut ok = Vec::new();
        ok.extend_from_slice(&0u16.to_be_bytes());
        ok.extend_from_slice(&2u16.to_be_bytes());
        ok.extend_from_slice(&2i32.to_be_bytes());
        ok.extend_from_slice(b"42");
        ok.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(bind_values(&ok), Some(vec![Some(42), None]));
        assert_eq!(bind_values(&[0, 1]), None);
    }
}
