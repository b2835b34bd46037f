//! Prepared statements in transaction mode, without IO.
//!
//! A client's named statement lives on servers under a name derived from
//! a SHA-256 of its text and parameter types (and a secret of the
//! process), so every client preparing the same statement shares it on a
//! server, and two different statements can never meet under one name. [`ServerStatements`] is pgcat's record
//! of what one server connection has prepared; [`ClientStatements`] maps a
//! client's own names to statements, with a bound.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use bytes::BytesMut;
use sha2::{Digest, Sha256};

use super::effects::QueryHints;
use super::messages;

/// Identity of a statement: the first 128 bits of the SHA-256 of its query
/// text and parameter types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct StatementId(pub [u8; 16]);

/// Server-side names are this prefix and 32 hex digits.
pub const NAME_PREFIX: &str = "pgcat_";

/// A secret of this process mixed into every statement's identity, so a
/// client cannot compute the server-side name of another client's
/// statement (to prepare something else under it from a function, say).
fn name_secret() -> &'static [u8; 16] {
    static SECRET: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    SECRET.get_or_init(rand::random)
}

impl StatementId {
    /// `text_and_types` is the body of a Parse after the statement name.
    pub fn of(text_and_types: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(name_secret());
        hasher.update(text_and_types);
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        StatementId(id)
    }

    /// The statement's name on servers.
    pub fn server_name(&self) -> String {
        let mut s = String::with_capacity(NAME_PREFIX.len() + 32);
        s.push_str(NAME_PREFIX);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).expect("hex digit"));
            s.push(char::from_digit((b & 15) as u32, 16).expect("hex digit"));
        }
        s
    }

    /// The id behind a server-side name pgcat gave, if it is one.
    pub fn from_server_name(name: &str) -> Option<Self> {
        let hex = name.strip_prefix(NAME_PREFIX)?;
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(StatementId(id))
    }
}

/// Hashes a [`StatementId`] by taking 8 of its bytes: it is a SHA-256
/// already, and the hot path looks one up per Bind.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

type IdMap<V> = HashMap<StatementId, V, BuildHasherDefault<IdHasher>>;

/// FNV-1a for a client's own statement names: short, looked up per Bind,
/// and only ever the client's own (a client that picks colliding names
/// slows only its own lookups, within `max_prepared_statements`).
#[derive(Default)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A statement a client prepared under its own name, as pgcat prepares it
/// on servers.
#[derive(Debug)]
pub struct Prepared {
    pub id: StatementId,
    /// Its name on servers, written into every Bind and Describe.
    pub name: Box<str>,
    /// The whole Parse message with the server-side name.
    pub parse: Bytes,
    /// What running it may do to session state, read from its text once.
    pub hints: QueryHints,
}

impl Prepared {
    /// From the body of a client's Parse after the statement name.
    pub fn new(text_and_types: &[u8], query: &[u8], param_types: &[u8]) -> Self {
        let id = StatementId::of(text_and_types);
        let name = id.server_name();
        let mut parse = BytesMut::with_capacity(query.len() + param_types.len() + 48);
        messages::parse(&mut parse, &name, query, param_types);
        Prepared {
            id,
            name: name.into_boxed_str(),
            parse: parse.freeze(),
            hints: QueryHints::scan(query),
        }
    }
}

/// An unnamed statement: the body of its Parse after the (empty) name.
/// A client's unnamed statement is its own; pgcat compares it with the
/// server's before a Bind and prepares it again where it differs.
///
/// With `cache_unnamed_statements`, `remap` is the statement pgcat runs in
/// its place: the same text prepared under pgcat's name, which the
/// client's Binds and Describes of its unnamed statement name instead.
#[derive(Debug)]
pub struct Unnamed {
    pub body: Box<[u8]>,
    pub hints: QueryHints,
    pub remap: Option<Arc<Prepared>>,
}

impl Unnamed {
    pub fn new(text_and_types: &[u8], query: &[u8]) -> Self {
        Unnamed {
            body: text_and_types.into(),
            hints: QueryHints::scan(query),
            remap: None,
        }
    }

    /// An unnamed statement that runs as a statement under pgcat's name.
    pub fn remapped(text_and_types: &[u8], query: &[u8], param_types: &[u8]) -> Self {
        let prepared = Prepared::new(text_and_types, query, param_types);
        Unnamed {
            body: text_and_types.into(),
            hints: prepared.hints.clone(),
            remap: Some(Arc::new(prepared)),
        }
    }

    /// Stands for an unnamed statement pgcat does not know (a session-mode
    /// client left it): matches no client's.
    pub fn unknown() -> Arc<Unnamed> {
        Arc::new(Unnamed {
            body: Box::default(),
            hints: QueryHints::default(),
            remap: None,
        })
    }

    /// Whether two optional unnamed statements are the same statement.
    pub fn same(a: &Option<Arc<Unnamed>>, b: &Option<Arc<Unnamed>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || (!a.body.is_empty() && a.body == b.body),
            _ => false,
        }
    }
}

/// The statements pgcat prepared on one server connection, with a use
/// counter for LRU eviction.
#[derive(Debug, Default)]
pub struct ServerStatements {
    used: IdMap<u64>,
    clock: u64,
    /// Names the server holds something else under (a Parse met 42P05):
    /// closed before pgcat prepares its statement there again.
    taken: Vec<StatementId>,
}

impl ServerStatements {
    /// Whether the server has the statement; marks it used.
    pub fn contains(&mut self, id: StatementId) -> bool {
        self.clock += 1;
        match self.used.get_mut(&id) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records a statement; returns the least recently used one to close
    /// when the cache is over `capacity`.
    pub fn insert(&mut self, id: StatementId, capacity: usize) -> Option<StatementId> {
        self.clock += 1;
        self.used.insert(id, self.clock);
        if self.used.len() > capacity.max(1) {
            let (&oldest, _) = self
                .used
                .iter()
                .filter(|(&h, _)| h != id)
                .min_by_key(|(_, &t)| t)?;
            self.used.remove(&oldest);
            return Some(oldest);
        }
        None
    }

    /// Records a statement the server turned out to have, without
    /// evicting anything.
    pub fn restore(&mut self, id: StatementId) {
        self.clock += 1;
        self.used.entry(id).or_insert(self.clock);
    }

    pub fn remove(&mut self, id: StatementId) {
        self.used.remove(&id);
    }

    /// The server has a statement under this name that pgcat did not put
    /// there (42P05): it must be closed before pgcat's goes in.
    pub fn mark_taken(&mut self, id: StatementId) {
        self.used.remove(&id);
        if !self.taken.contains(&id) {
            self.taken.push(id);
        }
    }

    /// Whether the name must be closed first; forgets it.
    pub fn take_taken(&mut self, id: StatementId) -> bool {
        match self.taken.iter().position(|t| *t == id) {
            Some(i) => {
                self.taken.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        self.used.clear();
        self.taken.clear();
    }

    /// Keeps exactly the statements the server reports having.
    pub fn retain_present(&mut self, present: &[StatementId]) {
        self.used.retain(|id, _| present.contains(id));
        for id in present {
            self.restore(*id);
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// A client's named statements, by its own names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<Prepared>, BuildHasherDefault<NameHasher>>,
}

/// A client asked for more statements than `max_prepared_statements`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany(pub usize);

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    /// Adds a new name; refused past `limit` names (0: no limit).
    pub fn insert(
        &mut self,
        name: &[u8],
        prepared: Arc<Prepared>,
        limit: usize,
    ) -> Result<(), TooMany> {
        if limit > 0 && self.by_name.len() >= limit && !self.by_name.contains_key(name) {
            return Err(TooMany(limit));
        }
        self.by_name.insert(name.into(), prepared);
        Ok(())
    }

    /// Puts back a name whose Parse or Close never ran.
    pub fn restore(&mut self, name: Box<[u8]>, prepared: Option<Arc<Prepared>>) {
        match prepared {
            Some(p) => {
                self.by_name.insert(name, p);
            }
            None => {
                self.by_name.remove(&name);
            }
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Prepared>> {
        self.by_name.remove(name)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> StatementId {
        StatementId([n; 16])
    }

    #[test]
    fn names_are_valid_identifiers_and_round_trip() {
        let a = StatementId::of(b"SELECT 1\0\0\0");
        let name = a.server_name();
        assert_eq!(name.len(), 38);
        assert!(name.len() < 64);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert_eq!(StatementId::from_server_name(&name), Some(a));
        assert_eq!(StatementId::from_server_name("pgcat_zz"), None);
        assert_eq!(StatementId::from_server_name("s1"), None);
    }

    #[test]
    fn text_and_types_both_make_the_identity() {
        let a = StatementId::of(b"SELECT $1\0\0\x01\0\0\0\x17");
        let b = StatementId::of(b"SELECT $1\0\0\x01\0\0\0\x19");
        let c = StatementId::of(b"SELECT $2\0\0\x01\0\0\0\x17");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, StatementId::of(b"SELECT $1\0\0\x01\0\0\0\x17"));
    }

    #[test]
    fn server_cache_evicts_least_recently_used() {
        let mut s = ServerStatements::default();
        assert_eq!(s.insert(id(1), 2), None);
        assert_eq!(s.insert(id(2), 2), None);
        assert!(s.contains(id(1)));
        assert_eq!(s.insert(id(3), 2), Some(id(2)));
        assert!(s.contains(id(1)) && s.contains(id(3)) && !s.contains(id(2)));
        s.remove(id(1));
        assert_eq!(s.len(), 1);
        s.retain_present(&[id(5)]);
        assert!(!s.contains(id(3)) && s.contains(id(5)));
    }

    #[test]
    fn client_statements_are_bounded() {
        let mut c = ClientStatements::default();
        let p = Arc::new(Prepared::new(b"SELECT 1\0\0\0", b"SELECT 1", b"\0\0"));
        c.insert(b"a", p.clone(), 2).unwrap();
        c.insert(b"b", p.clone(), 2).unwrap();
        assert_eq!(c.insert(b"c", p.clone(), 2), Err(TooMany(2)));
        // Replacing an existing name is not growth.
        c.insert(b"a", p.clone(), 2).unwrap();
        c.remove(b"a");
        c.insert(b"c", p, 2).unwrap();
        assert_eq!(c.len(), 2);
    }
}
