//! Startup and authentication, and the client's startup settings: every
//! parameter PostgreSQL would accept (including each `-c name=value` of
//! `options`) becomes part of the client's session settings. A set of
//! startup settings is checked once per pool on a real server, which
//! either accepts it (and spells the values its way) or refuses the login
//! with PostgreSQL's own error, naming the parameter.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proxy::tls::{ClientSslMode, Stream};

use super::{ClientState, ClientsGauge, Session};
use crate::proxy::auth::{self, ClientAuth, ClientAuthError, PassSecret};
use crate::proxy::net::SocketSettings;
use crate::proxy::pool::{CheckoutError, LoginSettings, Lookup, UserPool};
use crate::proxy::protocol::messages::{self, StartupPacket};
use crate::proxy::protocol::settings::{
    apply_sql, parse_options, parse_readback, readback_sql, Settings,
};
use crate::proxy::server::ServerError;
use crate::proxy::stats::{KillSwitch, NewClient, PoolStats};
use crate::proxy::{wire, Shared};

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Startup and authentication; returns the session of a logged-in client.
pub(super) async fn login(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    kill: KillSwitch,
) -> Option<Box<Session>> {
    let config = shared.config.load_full();
    // For the cancel requests this connection may carry; its own socket
    // options came with the listener's (see `net::Listening`).
    let socket = SocketSettings::from_general(&config.general);
    let mut buf = BytesMut::new();
    // One deadline for startup and authentication together.
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(config.general.client_login_timeout);
    let mut stream = Stream::Plain(tcp);
    let startup =
        tokio::time::timeout_at(deadline, startup(&mut stream, &mut buf, &shared, &socket)).await;
    let params = match startup {
        Ok(Ok(Some(params))) => params,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client startup failed");
            return None;
        }
        Err(_) => {
            refuse(&mut stream, "08006", "timeout during startup").await;
            return None;
        }
    };
    if stream.is_closed() {
        return None;
    }
    // Channel binding data, when the client is on TLS.
    let end_point = match &stream {
        Stream::Accepted(_) => shared.tls.acceptor.load_full().map(|a| a.end_point.clone()),
        _ => None,
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        refuse(
            &mut stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return None;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|v| v != "false" && v != "0") {
        refuse(
            &mut stream,
            "08P01",
            "pgcat does not support replication connections",
        )
        .await;
        return None;
    }
    if config.general.log_client_connections {
        tracing::info!(%peer, %user, %database, "client connected");
    }
    if database == "pgcat" || database == "pgbouncer" {
        // Admin sessions do not hold up a shutdown's drain: they run
        // apart and end when the proxy does.
        let switch = KillSwitch::default();
        let login = crate::proxy::admin::AdminLogin {
            peer,
            user,
            database,
            application_name: get("application_name").unwrap_or_default(),
            kill: switch.clone(),
            end_point: end_point.clone(),
        };
        let tasks = shared.admin_tasks.clone();
        let task = tasks.spawn(async move {
            let aborted = shared.aborted.clone();
            let serve = crate::proxy::admin::serve(stream, buf, login, shared);
            aborted.run_until_cancelled(serve).await;
        });
        switch.arm(task.abort_handle());
        return None;
    }
    if shared.is_shutting_down() {
        refuse(&mut stream, "57P01", "pgcat is shutting down").await;
        return None;
    }
    let startup_settings =
        match startup_settings(&params, &config.general.ignore_startup_parameters) {
            Ok(s) => s,
            Err(msg) => {
                refuse(&mut stream, "0A000", &msg).await;
                return None;
            }
        };
    let pools = shared.pools.load_full();
    let pool = match pools.lookup(&database, &user) {
        Lookup::Found(p) => p,
        Lookup::NoDatabase | Lookup::NoUser => {
            // Whether the user or the database is missing is not said to
            // a client that has not authenticated: it gets the same
            // exchange and the same error as a wrong password.
            let mock = pools.mock_auth(&user);
            let auth = tokio::time::timeout_at(
                deadline,
                auth::authenticate_client(
                    &mut stream,
                    &mut buf,
                    &user,
                    &mock,
                    end_point.as_deref(),
                ),
            )
            .await;
            if !matches!(auth, Ok(Err(ClientAuthError::Io(_)))) {
                tracing::info!(%peer, %user, %database, "client asked for a database or user pgcat does not have");
                let e = ClientAuthError::BadPassword(user.clone());
                refuse(&mut stream, e.sqlstate(), &e.to_string()).await;
            }
            return None;
        }
    };
    // A user without a password: ask PostgreSQL for its secret. No
    // secret (no such role) runs the same exchange against a mock.
    let client_auth = match (&pool.settings.auth, &pool.settings.auth_query) {
        (ClientAuth::Query(method), Some(query)) => {
            match tokio::time::timeout_at(deadline, query.secret(&user)).await {
                Ok(Ok(secret)) => secret
                    .and_then(|s| ClientAuth::from_stored(*method, &user, &s))
                    .unwrap_or_else(|| pools.mock_auth(&user)),
                Ok(Err(e)) => {
                    // PgCat's wording, which its users grep for.
                    tracing::warn!(%peer, %database, "Error trying to obtain password from auth_query, ignoring hash for user '{user}'. Error: {e}");
                    let e = ClientAuthError::BadPassword(user.clone());
                    refuse(&mut stream, e.sqlstate(), &e.to_string()).await;
                    return None;
                }
                Err(_) => {
                    refuse(&mut stream, "08006", "timeout during authentication").await;
                    return None;
                }
            }
        }
        (other, _) => other.clone(),
    };
    drop(pools);
    // The exchange's last message (SCRAM's AuthenticationSASLFinal), sent
    // with AuthenticationOk .. ReadyForQuery, or ahead of the error when
    // the login fails after the password was checked.
    let mut last = BytesMut::new();
    let auth = match (&client_auth, &pool.settings.auth_query) {
        // md5 against a fetched hash: a mismatch fetches it again, and the
        // new hash is tried (PgCat's behaviour).
        (ClientAuth::Md5(stored), Some(query)) => {
            let exchange = async {
                let (salt, answer) = auth::md5_exchange(&mut stream, &mut buf).await?;
                if auth::md5_matches(stored, salt, &answer) {
                    return Ok((None, None));
                }
                query.forget();
                let fresh = query.secret(&user).await.ok().flatten();
                match fresh {
                    Some(h)
                        if auth::md5::is_stored_hash(&h)
                            && auth::md5_matches(&h, salt, &answer) =>
                    {
                        tracing::info!(%user, "password changed in PostgreSQL; using the new one");
                        Ok((None, Some(h)))
                    }
                    _ => Err(ClientAuthError::BadPassword(user.clone())),
                }
            };
            tokio::time::timeout_at(deadline, exchange).await
        }
        _ => tokio::time::timeout_at(
            deadline,
            auth::authenticate_client_then(
                &mut stream,
                &mut buf,
                &user,
                &client_auth,
                end_point.as_deref(),
                &mut last,
            ),
        )
        .await
        .map(|r| r.map(|keys| (keys, None))),
    };
    match auth {
        Ok(Ok((keys, refetched))) => {
            // Remember what logs this user in to PostgreSQL.
            if let Some(passthrough) = &pool.settings.login.passthrough {
                match (&client_auth, keys) {
                    (ClientAuth::Md5(hash), _) => {
                        let hash = refetched.map(Into::into).unwrap_or_else(|| hash.clone());
                        passthrough.set(PassSecret::Md5(hash))
                    }
                    (ClientAuth::Scram(_), Some(keys)) => passthrough.set(PassSecret::Scram(keys)),
                    _ => {}
                }
            }
        }
        Ok(Err(ClientAuthError::Io(_))) => return None,
        Ok(Err(e)) => {
            if let Some(query) = &pool.settings.auth_query {
                // The password may have changed in PostgreSQL.
                query.forget();
            }
            tracing::info!(%peer, %user, %database, error = %e, "client authentication failed");
            refuse(&mut stream, e.sqlstate(), &e.to_string()).await;
            return None;
        }
        Err(_) => {
            refuse(&mut stream, "08006", "timeout during authentication").await;
            return None;
        }
    }
    let mut pool = pool;
    let login_settings = loop {
        match login_settings(&pool, startup_settings.clone()).await {
            Ok(l) => break l,
            Err(LoginError::Checkout(CheckoutError::Retired)) => {
                // Replaced by a reload during the login: use the new one.
                match shared.pools.load().lookup(&database, &user) {
                    Lookup::Found(p) => pool = p,
                    _ => {
                        refuse_after(
                            &mut stream,
                            last,
                            "08006",
                            "pgcat: the pool was removed by a reload",
                        )
                        .await;
                        return None;
                    }
                }
            }
            Err(LoginError::Refused(code, message)) => {
                tracing::info!(%peer, %user, %database, %message, "startup settings refused");
                refuse_after(&mut stream, last, &code, &message).await;
                return None;
            }
            Err(e) => {
                refuse_after(&mut stream, last, "08006", &format!("pgcat: {e}")).await;
                return None;
            }
        }
    };

    let reported = login_settings.reported.clone();
    let (info, registered) = shared.registry.add_client(NewClient {
        peer,
        local: shared.local_addr_of(stream.tcp()).unwrap_or(peer),
        tls: stream.tls_description(),
        db: pool.settings.db.clone(),
        user: pool.settings.user.clone(),
        admin: false,
        application_name: reported
            .get("application_name")
            .unwrap_or_default()
            .to_string(),
        kill,
        fd: {
            use std::os::fd::AsRawFd;
            stream.tcp().as_raw_fd()
        },
    });
    let registration = shared.cancel.register(info.clone());
    let mut out = last;
    out.reserve(512);
    messages::auth_ok(&mut out);
    for (k, v) in reported.iter() {
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, registration.pid, registration.secret);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        return None;
    }
    let state = pool.state.clone();
    PoolStats::add(&state.stats.client_logins, 1);
    // Boxed: the client's task then holds a pointer while it waits.
    let mut session = Box::new(Session {
        _registered: registered,
        _cancel_key: registration,
        _logged_in: ClientsGauge::new(state.clone()),
        log_disconnect: config.general.log_client_disconnections,
        client: stream,
        mode: pool.settings.mode,
        pool: None,
        cached_pool: None,
        cleanup_server_connections: false,
        route_each: false,
        limits: Default::default(),
        server_user: Arc::from(""),
        state,
        info,
        cs: Box::new(ClientState {
            settings: login_settings.settings.clone(),
            startup: login_settings.settings.clone(),
            reported,
            ..Default::default()
        }),
        held: Default::default(),
        shared: shared.clone(),
        skipping: false,
        timed_out: false,
    });
    // What the client sent after its startup packet, if anything.
    if !buf.is_empty() {
        session.held.cbuf = buf;
    }
    session.adopt_pool_settings(&pool);
    Some(session)
}

/// The first byte of a TLS handshake record: a client that starts with
/// it negotiates TLS directly (PostgreSQL 17's `sslnegotiation=direct`).
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads the startup packet: answers SSLRequest with `S` and performs the
/// TLS handshake when TLS is configured (`N` otherwise, and always for
/// GSSENCRequest), accepts direct TLS, handles CancelRequest, and refuses
/// plaintext clients under `client_tls_sslmode = "require"`. Returns the
/// startup parameters, or None when the connection is done.
async fn startup(
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
    socket: &SocketSettings,
) -> io::Result<Option<Vec<(String, String)>>> {
    let acceptor = shared.tls.acceptor.load_full();
    if let (Stream::Plain(tcp), Some(acceptor)) = (&*stream, &acceptor) {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1
            && first[0] == TLS_HANDSHAKE
            && !upgrade(stream, acceptor, true).await?
        {
            return Ok(None);
        }
    }
    loop {
        let packet = match wire::read_startup(stream, buf).await {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                refuse(
                    stream,
                    "08P01",
                    &format!(
                        "invalid startup packet: {}",
                        e.into_inner().map(|e| e.to_string()).unwrap_or_default()
                    ),
                )
                .await;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match messages::parse_startup(&packet) {
            Ok(StartupPacket::SslRequest) if !stream.is_tls() && acceptor.is_some() => {
                if !buf.is_empty() {
                    // Bytes sent before our answer would be read as if
                    // they had come over TLS (CVE-2021-23214).
                    refuse(
                        stream,
                        "08P01",
                        "received unencrypted data after SSL request",
                    )
                    .await;
                    return Ok(None);
                }
                stream.write_all(b"S").await?;
                let acceptor = acceptor.as_ref().expect("checked");
                if !upgrade(stream, acceptor, false).await? {
                    return Ok(None);
                }
            }
            Ok(StartupPacket::SslRequest) | Ok(StartupPacket::GssEncRequest) => {
                if stream.is_tls() {
                    refuse(
                        stream,
                        "08P01",
                        "SSL request inside an encrypted connection",
                    )
                    .await;
                    return Ok(None);
                }
                stream.write_all(b"N").await?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                shared
                    .cancel
                    .cancel(pid, secret, &shared.registry, socket)
                    .await;
                return Ok(None);
            }
            Ok(StartupPacket::Unsupported(code)) => {
                refuse(
                    stream,
                    "0A000",
                    &format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        code >> 16,
                        code & 0xffff
                    ),
                )
                .await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup { minor, params }) => {
                let required = acceptor
                    .as_ref()
                    .is_some_and(|a| a.mode == ClientSslMode::Require);
                if required && !stream.is_tls() {
                    refuse(
                        stream,
                        "28000",
                        "SSL required: client_tls_sslmode is \"require\"",
                    )
                    .await;
                    return Ok(None);
                }
                let unknown: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if minor > 0 || !unknown.is_empty() {
                    let mut out = BytesMut::new();
                    messages::negotiate_protocol_version(&mut out, 0, &unknown);
                    stream.write_all(&out).await?;
                }
                return Ok(Some(params));
            }
            Err(e) => {
                refuse(stream, "08P01", &format!("invalid startup packet: {e}")).await;
                return Ok(None);
            }
        }
    }
}

/// Performs the TLS handshake on a plaintext client stream. A direct TLS
/// client must ask for ALPN `postgresql`, as PostgreSQL requires. Ok(false):
/// the handshake failed and the connection is done.
async fn upgrade(
    stream: &mut Stream,
    acceptor: &crate::proxy::tls::Acceptor,
    direct: bool,
) -> io::Result<bool> {
    let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Closed) else {
        return Ok(false);
    };
    let tls = match tokio_rustls::TlsAcceptor::from(acceptor.config.clone())
        .accept(tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(error = %e, "client TLS handshake failed");
            return Ok(false);
        }
    };
    let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(crate::proxy::tls::ALPN_POSTGRESQL);
    *stream = Stream::Accepted(Box::new(tls));
    if direct && !alpn_ok {
        refuse(
            stream,
            "08P01",
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )
        .await;
        return Ok(false);
    }
    Ok(true)
}

/// Sends a FATAL error and gives up on the connection.
pub(super) async fn refuse(stream: &mut Stream, code: &str, message: &str) {
    refuse_after(stream, BytesMut::new(), code, message).await
}

/// [`refuse`], the error written after `out` (what the login still owed
/// the client), in the same write.
async fn refuse_after(stream: &mut Stream, mut out: BytesMut, code: &str, message: &str) {
    auth::refuse(&mut out, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// The settings a startup packet asks for: every parameter but the few
/// that are not settings, and each setting in `options`, minus those
/// `ignore` names (PgBouncer's `ignore_startup_parameters`). Sorted, so
/// that equal sets compare equal.
fn startup_settings(
    params: &[(String, String)],
    ignore: &[String],
) -> Result<Vec<(String, String)>, String> {
    let ignored = |name: &str| ignore.iter().any(|i| i.eq_ignore_ascii_case(name));
    let mut out = Vec::new();
    for (k, v) in params {
        if k.starts_with("_pq_.") || ignored(k) {
            continue;
        }
        if k == "options" {
            for (name, value) in parse_options(v)? {
                if !ignored(&name) {
                    out.push((name, value));
                }
            }
        } else if !NOT_SETTINGS.contains(&k.as_str()) {
            out.push((k.clone(), v.clone()));
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    #[error("{0}")]
    Server(#[from] ServerError),
    /// PostgreSQL refused a startup setting: (SQLSTATE, message).
    #[error("{1}")]
    Refused(String, String),
}

/// What `startup` comes to on this pool's servers: remembered from an
/// earlier login with the same settings, or found by applying them on a
/// server and reading them back.
async fn login_settings(
    pool: &UserPool,
    startup: Vec<(String, String)>,
) -> Result<Arc<LoginSettings>, LoginError> {
    if let Some(known) = pool.known_login(&startup) {
        return Ok(known);
    }
    let mut server = pool.checkout_for_login().await?;
    let target = Settings::from_pairs(startup.clone());
    if let Some(sql) = apply_sql(&server.settings, &target) {
        match super::state::own_query(&mut server, &sql).await {
            Ok(_) => {}
            Err(ServerError::Postgres(f)) => {
                // All or nothing: the server kept its settings.
                return Err(LoginError::Refused(f.code, f.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sql = readback_sql(
        &pool.settings.login.user,
        target.custom_names(),
        None,
        false,
    );
    let read = parse_readback(&super::state::own_query(&mut server, &sql).await?);
    let settings = Arc::new(read.settings);
    server.settings = settings.clone();
    let login = Arc::new(LoginSettings {
        settings,
        reported: Arc::new(server.params.clone()),
    });
    drop(server);
    pool.remember_login(startup, login.clone());
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_settings_take_every_parameter_and_each_option() {
        let params = p(&[
            ("user", "app"),
            ("database", "app"),
            ("application_name", "psql"),
            ("options", "-c search_path=tenant_x --work-mem=1MB"),
            ("extra_float_digits", "3"),
            ("_pq_.compression", "on"),
        ]);
        let s = startup_settings(&params, &[]).unwrap();
        assert_eq!(
            s,
            p(&[
                ("application_name", "psql"),
                ("extra_float_digits", "3"),
                ("search_path", "tenant_x"),
                ("work_mem", "1MB"),
            ])
        );
        let s =
            startup_settings(&params, &["Extra_Float_Digits".into(), "options".into()]).unwrap();
        assert_eq!(s, p(&[("application_name", "psql")]));
        let bad = p(&[("user", "a"), ("options", "-B 10")]);
        assert!(startup_settings(&bad, &[]).is_err());
    }
}
