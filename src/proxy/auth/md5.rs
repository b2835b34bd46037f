//! PostgreSQL's md5 password scheme: the stored hash is
//! `"md5" + hex(md5(password + user))`, and on the wire the client sends
//! `"md5" + hex(md5(hex(md5(password + user)) + salt))`.

use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The stored form: `md5` followed by 32 hex digits.
pub fn stored_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// Whether `s` already is a stored md5 hash rather than a password.
pub fn is_stored_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The response to an AuthenticationMD5Password challenge, from the
/// stored hash (with its `md5` prefix).
pub fn salted_response(stored: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Compares in constant time (`subtle`), so a timing side channel does
/// not leak how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres() {
        // SELECT 'md5' || md5('secret' || 'alice');
        assert_eq!(
            stored_hash("alice", "secret"),
            "md54a0a68b43b6cd5cf266fa02f196e2371"
        );
        // A known vector: md5("postgrespostgres").
        assert_eq!(
            stored_hash("postgres", "postgres"),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
        assert!(is_stored_hash("md53175bce1d3201d16594cebf9d7eb3f9d"));
        assert!(!is_stored_hash("md5short"));
        assert!(!is_stored_hash("plain password of thirty-five chars"));
    }

    #[test]
    fn salted_response_depends_on_salt() {
        let stored = stored_hash("u", "p");
        let a = salted_response(&stored, [1, 2, 3, 4]);
        let b = salted_response(&stored, [1, 2, 3, 5]);
        assert_ne!(a, b);
        assert!(a.starts_with("md5") && a.len() == 35);
        assert!(constant_time_eq(a.as_bytes(), a.clone().as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
    }
}
