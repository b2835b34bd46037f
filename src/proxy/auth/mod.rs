//! Authentication in both directions: pgcat checks clients against the
//! passwords in its config (SCRAM-SHA-256 or md5), and logs in to
//! PostgreSQL with whatever method the server asks for (SCRAM-SHA-256,
//! md5, cleartext or trust).

pub mod md5;
pub mod scram;

use bytes::{Buf, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::proxy::protocol::messages::{self, read_cstr, read_i32, Severity};
use crate::proxy::secret::Secret;
use crate::proxy::wire;

pub use scram::{ClientKeys, ScramClient, ScramSecret, ScramServer};

/// What pgcat logs in to PostgreSQL with for a user that has no password
/// in the config (auth_query): learnt from each client that logs in.
#[derive(Clone)]
pub enum PassSecret {
    /// The stored md5 hash (`md5` + 32 hex digits): answers md5 challenges.
    Md5(Secret),
    /// ClientKey and ServerKey from a client's SCRAM proof: answer SCRAM
    /// challenges with the same salt, as PgBouncer does.
    Scram(ClientKeys),
}

impl std::fmt::Debug for PassSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassSecret::Md5(_) => f.write_str("PassSecret::Md5(<redacted>)"),
            PassSecret::Scram(_) => f.write_str("PassSecret::Scram(<redacted>)"),
        }
    }
}

/// The pass-through secret of one pool's user, shared by its server
/// connections.
#[derive(Debug, Default)]
pub struct Passthrough {
    secret: parking_lot::Mutex<Option<PassSecret>>,
}

impl Passthrough {
    pub fn get(&self) -> Option<PassSecret> {
        self.secret.lock().clone()
    }

    pub fn set(&self, secret: PassSecret) {
        *self.secret.lock() = Some(secret);
    }
}

/// How a client proves who it is, prepared from the configured password.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    Scram(ScramSecret),
    /// The stored md5 hash (`md5` + 32 hex digits).
    Md5(Secret),
    Trust,
    /// No password in the config: the secret comes from PostgreSQL
    /// (auth_query) at each login; see [`ClientAuth::from_stored`]. The
    /// configured method checks a stored secret that is neither a SCRAM
    /// verifier nor an md5 hash.
    Query(AuthMethod),
}

impl ClientAuth {
    /// How to check a client against a secret PostgreSQL stores: a SCRAM
    /// verifier asks for SCRAM, an md5 hash for md5 (what PostgreSQL does
    /// for an `md5` pg_hba line); anything else is taken as a plaintext
    /// password, checked with `method`.
    pub fn from_stored(method: AuthMethod, user: &str, stored: &str) -> Option<ClientAuth> {
        if stored.starts_with("SCRAM-SHA-256$") {
            return ScramSecret::parse(stored).map(ClientAuth::Scram);
        }
        if md5::is_stored_hash(stored) {
            return Some(ClientAuth::Md5(stored.into()));
        }
        let method = if method == AuthMethod::Trust {
            AuthMethod::ScramSha256
        } else {
            method
        };
        ClientAuth::new(method, user, stored).ok()
    }
}

/// Client authentication method names as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    Trust,
}

impl ClientAuth {
    /// Prepares the secret once, so that a login costs one HMAC instead of
    /// a PBKDF2 run. `password` may already be an md5 hash or a SCRAM
    /// verifier, as PostgreSQL stores them.
    pub fn new(method: AuthMethod, user: &str, password: &str) -> Result<Self, String> {
        match method {
            AuthMethod::Trust => Ok(ClientAuth::Trust),
            AuthMethod::Md5 => {
                if md5::is_stored_hash(password) {
                    Ok(ClientAuth::Md5(password.into()))
                } else if password.starts_with("SCRAM-SHA-256$") {
                    Err("md5 authentication needs a plaintext password or an md5 hash, not a SCRAM verifier".into())
                } else {
                    Ok(ClientAuth::Md5(md5::stored_hash(user, password).into()))
                }
            }
            AuthMethod::ScramSha256 => {
                if let Some(secret) = ScramSecret::parse(password) {
                    Ok(ClientAuth::Scram(secret))
                } else if password.starts_with("SCRAM-SHA-256$") {
                    Err("malformed SCRAM-SHA-256 verifier".into())
                } else if md5::is_stored_hash(password) {
                    Err("SCRAM authentication needs a plaintext password or a SCRAM verifier, not an md5 hash".into())
                } else {
                    Ok(ClientAuth::Scram(ScramSecret::from_password(password)))
                }
            }
        }
    }
}

/// Why a client was not let in. Each maps to what PostgreSQL would say.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientAuthError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientAuthError::BadPassword(_) => "28P01",
            ClientAuthError::Protocol(_) => "08P01",
            ClientAuthError::Io(_) => "08006",
        }
    }
}

/// Runs the authentication exchange with a client. On success nothing is
/// written yet: the caller sends AuthenticationOk with the rest of the
/// login messages in one write. `end_point` is the TLS channel binding
/// data when the client is on TLS: SCRAM-SHA-256-PLUS is offered then.
/// Returns the keys a SCRAM proof revealed (for auth_query pass-through).
pub async fn authenticate_client<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    auth: &ClientAuth,
    end_point: Option<&[u8]>,
) -> Result<Option<ClientKeys>, ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut last = BytesMut::new();
    let keys = authenticate_client_then(stream, buf, user, auth, end_point, &mut last).await?;
    stream.write_all(&last).await?;
    Ok(keys)
}

/// [`authenticate_client`], except that the exchange's last message on
/// success (SCRAM's AuthenticationSASLFinal) is appended to `last`
/// instead of written: the caller sends it with what follows
/// (AuthenticationOk .. ReadyForQuery), in one write, so that the client
/// reads the end of its login at once.
pub async fn authenticate_client_then<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    auth: &ClientAuth,
    end_point: Option<&[u8]>,
    last: &mut BytesMut,
) -> Result<Option<ClientKeys>, ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(128);
    match auth {
        ClientAuth::Trust => Ok(None),
        ClientAuth::Query(_) => Err(ClientAuthError::Protocol(
            "auth_query secret not fetched".into(),
        )),
        ClientAuth::Md5(stored) => {
            let mut salt = [0u8; 4];
            rand::thread_rng().fill_bytes(&mut salt);
            messages::auth_md5(&mut out, salt);
            stream.write_all(&out).await?;
            let msg = expect_password_message(stream, buf).await?;
            let (got, _) = read_cstr(&msg, "PasswordMessage")
                .map_err(|e| ClientAuthError::Protocol(e.to_string()))?;
            let want = md5::salted_response(stored, salt);
            if md5::constant_time_eq(got, want.as_bytes()) {
                Ok(None)
            } else {
                Err(ClientAuthError::BadPassword(user.to_string()))
            }
        }
        ClientAuth::Scram(secret) => {
            if end_point.is_some() {
                messages::auth_sasl(&mut out, &[scram::MECHANISM_PLUS, scram::MECHANISM]);
            } else {
                messages::auth_sasl(&mut out, &[scram::MECHANISM]);
            }
            stream.write_all(&out).await?;
            let msg = expect_password_message(stream, buf).await?;
            let (mechanism, rest) = read_cstr(&msg, "SASLInitialResponse")
                .map_err(|e| ClientAuthError::Protocol(e.to_string()))?;
            let binding = match (mechanism, end_point) {
                (m, None) if m == scram::MECHANISM.as_bytes() => scram::Binding::Unavailable,
                (m, Some(_)) if m == scram::MECHANISM.as_bytes() => scram::Binding::Offered,
                (m, Some(data)) if m == scram::MECHANISM_PLUS.as_bytes() => {
                    scram::Binding::Selected(data)
                }
                _ => {
                    return Err(ClientAuthError::Protocol(format!(
                        "client selected an invalid SASL authentication mechanism \"{}\"",
                        String::from_utf8_lossy(mechanism)
                    )))
                }
            };
            let (len, data) = read_i32(rest, "SASLInitialResponse")
                .map_err(|e| ClientAuthError::Protocol(e.to_string()))?;
            if len < 0 || len as usize != data.len() {
                return Err(ClientAuthError::Protocol(
                    "malformed SASLInitialResponse message".into(),
                ));
            }
            let (server, server_first) = ScramServer::start_bound(secret.clone(), data, binding)
                .map_err(|e| ClientAuthError::Protocol(e.to_string()))?;
            out.clear();
            messages::auth_sasl_continue(&mut out, server_first.as_bytes());
            stream.write_all(&out).await?;
            let msg = expect_password_message(stream, buf).await?;
            match server.finish_with_key(&msg) {
                Ok((server_final, keys)) => {
                    messages::auth_sasl_final(last, server_final.as_bytes());
                    Ok(Some(keys))
                }
                Err(scram::ScramError::BadProof) => {
                    Err(ClientAuthError::BadPassword(user.to_string()))
                }
                Err(e) => Err(ClientAuthError::Protocol(e.to_string())),
            }
        }
    }
}

/// The md5 exchange without its verdict: sends the challenge, returns the
/// salt and the client's answer. For auth_query users, whose answer may
/// be checked against a secret fetched again (PgCat refetches after a
/// mismatch, so a password changed in PostgreSQL works at once).
pub async fn md5_exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<([u8; 4], Vec<u8>), ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(16);
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    messages::auth_md5(&mut out, salt);
    stream.write_all(&out).await?;
    let msg = expect_password_message(stream, buf).await?;
    let (got, _) =
        read_cstr(&msg, "PasswordMessage").map_err(|e| ClientAuthError::Protocol(e.to_string()))?;
    Ok((salt, got.to_vec()))
}

/// Whether an md5 answer matches a stored md5 hash.
pub fn md5_matches(stored: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    md5::constant_time_eq(answer, md5::salted_response(stored, salt).as_bytes())
}

async fn expect_password_message<S>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, ClientAuthError>
where
    S: AsyncRead + Unpin,
{
    let msg = wire::read_message(stream, buf, messages_limit()).await?;
    if msg.tag != b'p' {
        return Err(ClientAuthError::Protocol(format!(
            "expected password response, got message type {:?}",
            msg.tag as char
        )));
    }
    Ok(msg.body)
}

/// Password-phase messages are small; a client claiming more is refused.
fn messages_limit() -> usize {
    crate::proxy::protocol::codec::MAX_SMALL_MESSAGE_LEN
}

/// Why logging in to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerAuthError {
    #[error("server asked for a password but none is configured")]
    NoPassword,
    #[error("server asked for {0}, but the user has no password in the config and no client has logged in with {0} yet (auth_query pass-through)")]
    NoPassthrough(&'static str),
    #[error("server requested unsupported authentication method {0}")]
    Unsupported(i32),
    #[error(transparent)]
    Scram(#[from] scram::ScramError),
    #[error("server sent a malformed authentication message")]
    Malformed,
}

/// The client side of the login exchange. Handles one Authentication
/// request from the server; returns the bytes to send, or None when the
/// server said AuthenticationOk.
#[derive(Debug)]
pub struct ServerLogin {
    user: String,
    password: Option<Secret>,
    passthrough: Option<PassSecret>,
    scram: Option<ScramClient>,
}

impl ServerLogin {
    pub fn new(user: &str, password: Option<&str>) -> Self {
        ServerLogin {
            user: user.to_string(),
            password: password.map(Secret::from),
            passthrough: None,
            scram: None,
        }
    }

    /// Without a password: log in with what a client proved (auth_query).
    pub fn with_passthrough(mut self, secret: Option<PassSecret>) -> Self {
        self.passthrough = secret;
        self
    }

    /// Handles the body of one `R` message. Returns `Ok(None)` on
    /// AuthenticationOk, `Ok(Some(reply))` when a reply must be sent.
    pub fn step(&mut self, body: &[u8]) -> Result<Option<BytesMut>, ServerAuthError> {
        let mut body = body;
        if body.len() < 4 {
            return Err(ServerAuthError::Malformed);
        }
        let code = body.get_i32();
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(None),
            3 => {
                let pw = self
                    .password
                    .as_deref()
                    .ok_or(ServerAuthError::NoPassword)?;
                messages::password_message(&mut out, pw.as_bytes());
            }
            5 => {
                if body.len() < 4 {
                    return Err(ServerAuthError::Malformed);
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let stored = match (self.password.as_deref(), &self.passthrough) {
                    (Some(pw), _) if md5::is_stored_hash(pw) => pw.to_string(),
                    (Some(pw), _) => md5::stored_hash(&self.user, pw),
                    (None, Some(PassSecret::Md5(hash))) => hash.to_string(),
                    (None, Some(_)) => return Err(ServerAuthError::NoPassthrough("md5")),
                    (None, None) => return Err(ServerAuthError::NoPassword),
                };
                messages::password_message(
                    &mut out,
                    md5::salted_response(&stored, salt).as_bytes(),
                );
            }
            10 => {
                let client = match (self.password.as_deref(), &self.passthrough) {
                    (Some(pw), _) => ScramClient::new(pw),
                    (None, Some(PassSecret::Scram(keys))) => ScramClient::with_keys(keys.clone()),
                    (None, Some(_)) => return Err(ServerAuthError::NoPassthrough("SCRAM-SHA-256")),
                    (None, None) => return Err(ServerAuthError::NoPassword),
                };
                let offered = body
                    .split(|&b| b == 0)
                    .any(|m| m == scram::MECHANISM.as_bytes());
                if !offered {
                    return Err(ServerAuthError::Unsupported(code));
                }
                messages::sasl_initial_response(
                    &mut out,
                    scram::MECHANISM,
                    client.client_first().as_bytes(),
                );
                self.scram = Some(client);
            }
            11 => {
                let client = self.scram.as_mut().ok_or(ServerAuthError::Malformed)?;
                let reply = client.client_final(body)?;
                messages::sasl_response(&mut out, reply.as_bytes());
            }
            12 => {
                let client = self.scram.as_ref().ok_or(ServerAuthError::Malformed)?;
                client.verify_server_final(body)?;
                return Ok(Some(BytesMut::new()));
            }
            other => return Err(ServerAuthError::Unsupported(other)),
        }
        Ok(Some(out))
    }
}

/// Writes a FATAL error for a refused login.
pub fn refuse(out: &mut BytesMut, code: &str, message: &str) {
    messages::error_response(out, Severity::Fatal, code, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn md5_client_login_round_trip() {
        let auth = ClientAuth::new(AuthMethod::Md5, "alice", "pw").unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            authenticate_client(&mut ours, &mut buf, "alice", &auth, None).await
        });
        // Play the client with ServerLogin, the same code pgcat uses
        // towards PostgreSQL.
        let mut login = ServerLogin::new("alice", Some("pw"));
        let mut buf = BytesMut::new();
        let msg = wire::read_message(&mut theirs, &mut buf, 1000)
            .await
            .unwrap();
        assert_eq!(msg.tag, b'R');
        let reply = login.step(&msg.body).unwrap().unwrap();
        theirs.write_all(&reply).await.unwrap();
        server.await.unwrap().unwrap();
    }

    /// The client's side of SCRAM up to its proof, played with
    /// ServerLogin (the code pgcat uses towards PostgreSQL): answers
    /// AuthenticationSASL and AuthenticationSASLContinue.
    async fn scram_client_first_steps(
        theirs: &mut tokio::io::DuplexStream,
        buf: &mut BytesMut,
        login: &mut ServerLogin,
    ) {
        for _ in 0..2 {
            let msg = wire::read_message(theirs, buf, 1000).await.unwrap();
            let reply = login.step(&msg.body).unwrap().unwrap();
            theirs.write_all(&reply).await.unwrap();
        }
    }

    /// With `authenticate_client_then`, SCRAM's last message is left to
    /// the caller (which sends it with AuthenticationOk .. ReadyForQuery
    /// in one write): nothing after SASLContinue reaches the stream, and
    /// `last` holds an AuthenticationSASLFinal the client accepts.
    #[tokio::test]
    async fn scram_final_message_is_left_to_the_caller() {
        let auth = ClientAuth::new(AuthMethod::ScramSha256, "bob", "pw").unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut last = BytesMut::new();
            let keys =
                authenticate_client_then(&mut ours, &mut buf, "bob", &auth, None, &mut last).await;
            (keys.map(|k| k.is_some()), last)
        });
        let mut login = ServerLogin::new("bob", Some("pw"));
        let mut buf = BytesMut::new();
        scram_client_first_steps(&mut theirs, &mut buf, &mut login).await;
        let (keys, last) = server.await.unwrap();
        assert!(keys.unwrap(), "SCRAM gives the client's keys");
        // The server side is gone (dropped with its task): whatever it
        // wrote after SASLContinue would be here.
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(buf.is_empty() && rest.is_empty(), "written: {rest:?}");
        let mut last_stream: &[u8] = &last;
        let mut lbuf = BytesMut::new();
        let msg = wire::read_message(&mut last_stream, &mut lbuf, 1000)
            .await
            .unwrap();
        assert_eq!(msg.tag, b'R');
        assert_eq!(&msg.body[..4], &12i32.to_be_bytes());
        assert!(login.step(&msg.body).unwrap().unwrap().is_empty());
        assert!(last_stream.is_empty(), "one message in `last`");
    }

    #[tokio::test]
    async fn scram_client_login_round_trip_and_bad_password() {
        for (password, ok) in [("pw", true), ("nope", false)] {
            let auth = ClientAuth::new(AuthMethod::ScramSha256, "bob", "pw").unwrap();
            let (mut ours, mut theirs) = tokio::io::duplex(4096);
            let server = tokio::spawn(async move {
                let mut buf = BytesMut::new();
                authenticate_client(&mut ours, &mut buf, "bob", &auth, None).await
            });
            let mut login = ServerLogin::new("bob", Some(password));
            let mut buf = BytesMut::new();
            scram_client_first_steps(&mut theirs, &mut buf, &mut login).await;
            let result = server.await.unwrap();
            if ok {
                result.unwrap();
                let msg = wire::read_message(&mut theirs, &mut buf, 1000)
                    .await
                    .unwrap();
                assert!(login.step(&msg.body).unwrap().unwrap().is_empty());
            } else {
                let err = result.unwrap_err();
                assert_eq!(err.sqlstate(), "28P01");
                assert_eq!(
                    err.to_string(),
                    "password authentication failed for user \"bob\""
                );
            }
        }
    }

    #[test]
    fn method_and_stored_form_must_match() {
        assert!(ClientAuth::new(AuthMethod::Md5, "u", "SCRAM-SHA-256$4096:abc$d:e").is_err());
        assert!(ClientAuth::new(
            AuthMethod::ScramSha256,
            "u",
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        )
        .is_err());
        assert!(matches!(
            ClientAuth::new(AuthMethod::Md5, "u", "md53175bce1d3201d16594cebf9d7eb3f9d"),
            Ok(ClientAuth::Md5(_))
        ));
    }
}
