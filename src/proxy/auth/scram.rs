//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: the server
//! side that authenticates clients, and the client side that logs in to
//! PostgreSQL. Over TLS, clients are also offered SCRAM-SHA-256-PLUS with
//! `tls-server-end-point` channel binding (RFC 5929), as PostgreSQL does.
//! The client side can log in with a password or with the keys a client
//! proved it holds (auth_query pass-through, as PgBouncer does).

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::proxy::secret::Secret;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL (and pgcat) supports.
pub const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";
/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    #[error("SCRAM channel binding negotiation error: the client supports channel binding, and the server offered it")]
    Downgrade,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("SCRAM proof does not match")]
    BadProof,
    #[error("server signature does not match")]
    BadServerSignature,
    #[error("server rejected SCRAM authentication: {0}")]
    Rejected(String),
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// PBKDF2 with 4096 rounds costs about a millisecond; PostgreSQL keeps the
/// same salt for a role, so reconnects reuse the result.
fn cached_salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    type Key = (Vec<u8>, Vec<u8>, u32);
    static CACHE: OnceLock<Mutex<HashMap<Key, [u8; 32]>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (password.to_vec(), salt.to_vec(), iterations);
    if let Some(v) = cache.lock().get(&key) {
        return *v;
    }
    let v = salted_password(password, salt, iterations);
    let mut cache = cache.lock();
    if cache.len() > 1024 {
        cache.clear();
    }
    cache.insert(key, v);
    v
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

/// What the server stores for a user: enough to verify a proof, not
/// enough to log in elsewhere (but enough to impersonate the server, so
/// its `Debug` shows only the parameters).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl ScramSecret {
    /// A secret no password matches, for a user pgcat does not know: the
    /// exchange runs as for any user and fails with the same error, so an
    /// unauthenticated client cannot tell which users exist. The salt is
    /// the same for the same name within a process, as a real one is.
    pub fn mock(user: &str) -> Self {
        static KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = KEY.get_or_init(rand::random);
        ScramSecret {
            iterations: ITERATIONS,
            salt: hmac(key, user.as_bytes())[..16].to_vec(),
            stored_key: hmac(key, b"stored"),
            server_key: hmac(key, b"server"),
        }
    }

    /// Derives a secret from a plaintext password with a fresh salt.
    pub fn from_password(password: &str) -> Self {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::derive(password, salt, ITERATIONS)
    }

    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses PostgreSQL's verifier format
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(verifier: &str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// Splits `key=value` attributes of a SCRAM message.
fn attributes(msg: &str) -> impl Iterator<Item = (char, &str)> {
    msg.split(',').filter_map(|part| {
        let mut chars = part.chars();
        let key = chars.next()?;
        let rest = chars.as_str().strip_prefix('=')?;
        Some((key, rest))
    })
}

/// The server side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    gs2_header: String,
    /// With SCRAM-SHA-256-PLUS: the `tls-server-end-point` data the client
    /// must echo after its GS2 header.
    binding_data: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first-message; returns the state and the
    /// server-first-message to send. Without TLS there is no channel to
    /// bind to (see `start_bound`).
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        Self::start_bound(secret, client_first, Binding::Unavailable)
    }

    /// As `start`, with what the channel offers: `Offered(data)` when the
    /// client was offered SCRAM-SHA-256-PLUS and chose plain SCRAM, and
    /// `Selected(data)` when it chose the -PLUS mechanism.
    pub fn start_bound(
        secret: ScramSecret,
        client_first: &[u8],
        binding: Binding<'_>,
    ) -> Result<(Self, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf8"))?;
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let binding_data = match (flag, binding) {
            ("n", Binding::Selected(_)) | ("y", Binding::Selected(_)) => {
                return Err(ScramError::ChannelBindingMismatch)
            }
            ("n", _) | ("y", Binding::Unavailable) => Vec::new(),
            // "y": the client could bind but believes we cannot; we offered
            // it, so someone removed it on the way (RFC 5802 section 6).
            ("y", Binding::Offered) => return Err(ScramError::Downgrade),
            (f, Binding::Selected(data)) if f.strip_prefix("p=") == Some(CHANNEL_BINDING_TYPE) => {
                data.to_vec()
            }
            (f, _) if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 flag")),
        };
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let gs2_header = msg[..msg.len() - bare.len()].to_string();
        let client_nonce = attributes(bare)
            .find(|(k, _)| *k == 'r')
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
            .ok_or(ScramError::Malformed("client nonce"))?;
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ScramServer {
                secret,
                gs2_header,
                binding_data,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Verifies the client-final-message; returns the server-final-message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        self.finish_with_key(client_final).map(|(v, _)| v)
    }

    /// As `finish`, also returning the ClientKey the proof revealed, with
    /// which pgcat can log in to PostgreSQL as the same user (auth_query).
    pub fn finish_with_key(self, client_final: &[u8]) -> Result<(String, ClientKeys), ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf8"))?;
        let proof_at = msg
            .rfind(",p=")
            .ok_or(ScramError::Malformed("client proof"))?;
        let without_proof = &msg[..proof_at];
        let proof = B64
            .decode(&msg[proof_at + 3..])
            .map_err(|_| ScramError::Malformed("client proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for (k, v) in attributes(without_proof) {
            match k {
                'c' => binding = Some(v),
                'r' => nonce = Some(v),
                _ => {}
            }
        }
        let binding = B64
            .decode(binding.ok_or(ScramError::Malformed("channel binding"))?)
            .map_err(|_| ScramError::Malformed("channel binding"))?;
        let mut want = self.gs2_header.as_bytes().to_vec();
        want.extend_from_slice(&self.binding_data);
        if !bool::from(binding.ct_eq(&want)) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        if !bool::from(sha256(&client_key).ct_eq(&self.secret.stored_key)) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        let keys = ClientKeys {
            client_key,
            server_key: self.secret.server_key,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

/// What the channel offers a SCRAM exchange.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// No TLS: plain SCRAM only.
    Unavailable,
    /// TLS, SCRAM-SHA-256-PLUS offered, the client chose SCRAM-SHA-256.
    Offered,
    /// The client chose SCRAM-SHA-256-PLUS; the server certificate's hash.
    Selected(&'a [u8]),
}

/// The keys a SCRAM login needs without the password: ClientKey to build
/// a proof, ServerKey to check the server's signature.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeys { <redacted> }")
    }
}

impl ClientKeys {
    /// Whether these keys belong to `secret` (its StoredKey is the hash of
    /// ClientKey).
    pub fn matches(&self, secret: &ScramSecret) -> bool {
        bool::from(sha256(&self.client_key).ct_eq(&secret.stored_key))
            && bool::from(self.server_key.ct_eq(&secret.server_key))
    }
}

/// The client side of one SCRAM exchange, used to log in to PostgreSQL.
pub struct ScramClient {
    credential: ClientCredential,
    nonce: String,
    auth_message: String,
    server_key: [u8; 32],
}

enum ClientCredential {
    Password(Secret),
    Keys(ClientKeys),
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramClient { .. }")
    }
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        ScramClient {
            credential: ClientCredential::Password(password.into()),
            nonce: nonce(),
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    /// Logs in with keys learnt from a client's proof instead of a
    /// password. Works when the server stores the verifier those keys
    /// came from (same salt and iterations).
    pub fn with_keys(keys: ClientKeys) -> Self {
        ScramClient {
            credential: ClientCredential::Keys(keys),
            nonce: nonce(),
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    /// The client-first-message. PostgreSQL takes the user name from the
    /// startup packet, so `n=` stays empty.
    pub fn client_first(&self) -> String {
        format!("n,,n=,r={}", self.nonce)
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("utf8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for (k, v) in attributes(msg) {
            match k {
                'r' => nonce = Some(v),
                's' => salt = Some(v),
                'i' => iterations = Some(v),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("server nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("salt"))?)
            .map_err(|_| ScramError::Malformed("salt"))?;
        let iterations: u32 = iterations
            .and_then(|i| i.parse().ok())
            .filter(|&i| i > 0)
            .ok_or(ScramError::Malformed("iterations"))?;
        let client_key = match &self.credential {
            ClientCredential::Password(password) => {
                let salted = cached_salted_password(password.as_bytes(), &salt, iterations);
                self.server_key = hmac(&salted, b"Server Key");
                hmac(&salted, b"Client Key")
            }
            ClientCredential::Keys(keys) => {
                self.server_key = keys.server_key;
                keys.client_key
            }
        };
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("n=,r={},{msg},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message, proving the server knew the secret.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("utf8"))?;
        for (k, v) in attributes(msg) {
            match k {
                'e' => return Err(ScramError::Rejected(v.to_string())),
                'v' => {
                    let got = B64
                        .decode(v)
                        .map_err(|_| ScramError::Malformed("server signature"))?;
                    let want = hmac(&self.server_key, self.auth_message.as_bytes());
                    return if bool::from(got.ct_eq(&want[..])) {
                        Ok(())
                    } else {
                        Err(ScramError::BadServerSignature)
                    };
                }
                _ => {}
            }
        }
        Err(ScramError::Malformed("server final"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_agree() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramClient::new("s3cret");
        let (server, server_first) =
            ScramServer::start(secret, client.client_first().as_bytes()).unwrap();
        let client_final = client.client_final(server_first.as_bytes()).unwrap();
        let server_final = server.finish(client_final.as_bytes()).unwrap();
        client.verify_server_final(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_is_rejected() {
        let secret = ScramSecret::from_password("right");
        let mut client = ScramClient::new("wrong");
        let (server, server_first) =
            ScramServer::start(secret, client.client_first().as_bytes()).unwrap();
        let client_final = client.client_final(server_first.as_bytes()).unwrap();
        assert_eq!(
            server.finish(client_final.as_bytes()),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let secret = ScramSecret::derive(
            "pencil",
            B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_first = format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let server = ScramServer {
            secret,
            gs2_header: "n,,".into(),
            binding_data: Vec::new(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_first: server_first.clone(),
            nonce: nonce.into(),
        };
        let client_final =
            format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            server.finish(client_final.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn postgres_verifier_parses() {
        let secret = ScramSecret::derive("pw", b"0123456789abcdef".to_vec(), 4096);
        let verifier = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            secret.iterations,
            B64.encode(&secret.salt),
            B64.encode(secret.stored_key),
            B64.encode(secret.server_key)
        );
        assert_eq!(ScramSecret::parse(&verifier), Some(secret));
        assert_eq!(ScramSecret::parse("md5abc"), None);
        assert_eq!(ScramSecret::parse("SCRAM-SHA-256$x:y$z:w"), None);
    }

    #[test]
    fn malformed_client_messages() {
        let secret = ScramSecret::from_password("pw");
        assert!(ScramServer::start(secret.clone(), b"garbage").is_err());
        assert!(ScramServer::start(secret.clone(), b"n,,n=,r=").is_err());
        assert_eq!(
            ScramServer::start(secret.clone(), b"p=tls-server-end-point,,n=,r=abc").unwrap_err(),
            ScramError::ChannelBinding
        );
        let (server, _) = ScramServer::start(secret, b"n,,n=,r=abc").unwrap();
        assert!(server.finish(b"c=biws,r=abc").is_err());
    }

    #[test]
    fn channel_binding_plus_and_downgrade() {
        let secret = ScramSecret::from_password("pw");
        let cb = [7u8; 32];
        // -PLUS with the right certificate hash succeeds.
        let first = b"p=tls-server-end-point,,n=,r=abc";
        let (server, server_first) =
            ScramServer::start_bound(secret.clone(), first, Binding::Selected(&cb)).unwrap();
        let nonce = server_first[2..].split(',').next().unwrap().to_string();
        let mut c = b"p=tls-server-end-point,,".to_vec();
        c.extend_from_slice(&cb);
        let without_proof = format!("c={},r={nonce}", B64.encode(&c));
        let auth_message = format!("n=,r=abc,{server_first},{without_proof}");
        let salted = salted_password(b"pw", &secret.salt, secret.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let sig = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let fin = format!("{without_proof},p={}", B64.encode(&proof));
        let (_, keys) = server.finish_with_key(fin.as_bytes()).unwrap();
        assert!(keys.matches(&secret));
        // The same exchange bound to another certificate fails.
        let other = [8u8; 32];
        let (server, _) =
            ScramServer::start_bound(secret.clone(), first, Binding::Selected(&other)).unwrap();
        assert!(server.finish(fin.as_bytes()).is_err());
        // "y" after we offered -PLUS is a downgrade.
        assert_eq!(
            ScramServer::start_bound(secret.clone(), b"y,,n=,r=abc", Binding::Offered).unwrap_err(),
            ScramError::Downgrade
        );
        // "n" under -PLUS is refused.
        assert!(ScramServer::start_bound(secret, b"n,,n=,r=abc", Binding::Selected(&cb)).is_err());
    }

    #[test]
    fn keys_from_a_proof_log_in_again() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramClient::new("s3cret");
        let (server, server_first) =
            ScramServer::start(secret.clone(), client.client_first().as_bytes()).unwrap();
        let client_final = client.client_final(server_first.as_bytes()).unwrap();
        let (_, keys) = server.finish_with_key(client_final.as_bytes()).unwrap();
        // A second login with only the keys, as pgcat does towards
        // PostgreSQL for an auth_query user.
        let mut again = ScramClient::with_keys(keys);
        let (server, server_first) =
            ScramServer::start(secret, again.client_first().as_bytes()).unwrap();
        let client_final = again.client_final(server_first.as_bytes()).unwrap();
        let server_final = server.finish(client_final.as_bytes()).unwrap();
        again.verify_server_final(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn server_rejects_foreign_nonce() {
        let secret = ScramSecret::from_password("pw");
        let (server, _) = ScramServer::start(secret, b"n,,n=,r=abc").unwrap();
        let forged = format!("c=biws,r=abcXYZ,p={}", B64.encode([0u8; 32]));
        assert_eq!(server.finish(forged.as_bytes()), Err(ScramError::Nonce));
    }
}
