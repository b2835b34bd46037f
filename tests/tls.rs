//! TLS towards clients and towards PostgreSQL, certificate rotation by
//! RELOAD, SCRAM channel binding, and auth_query, with certificates made
//! in the test (rcgen) and real clients (psql, pgbench, tokio-postgres over
//! rustls, openssl s_client).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// A certificate authority and the certificates it signs, as PEM files in
/// a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedKey,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pki = Pki {
            dir,
            ca: rcgen::CertifiedKey {
                cert,
                key_pair: key,
            },
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.cert.pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues a certificate for localhost and 127.0.0.1 with common name
    /// `cn`; writes `<file>.crt` and `<file>.key`.
    fn issue(&self, file: &str, cn: &str) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &self.ca.cert, &self.ca.key_pair)
            .unwrap();
        let crt = self.path(&format!("{file}.crt"));
        let keyf = self.path(&format!("{file}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&keyf, key.serialize_pem()).unwrap();
        (crt, keyf)
    }
}

fn tls_general(crt: &Path, key: &Path) -> String {
    format!(
        "tls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
        crt.display(),
        key.display()
    )
}

fn psql(conn: &str, sql: &str) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.args([conn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    run_tool(cmd, Duration::from_secs(30))
}

fn ok_stdout(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn url(port: u16, db: &TestDb, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} password={} dbname={} {extra}",
        db.user, db.password, db.name
    )
}

/// tokio-postgres over rustls, trusting `ca`.
async fn connect_rustls(
    conn: &str,
    ca: &Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = tokio_postgres::connect(conn, tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_with_psql_pgbench_and_tokio_postgres() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let pki = Pki::new("clients");
    let (crt, key) = pki.issue("pgcat", "pgcat.test");
    let ca = pki.path("ca.pem");
    let proxy = TestProxy::start(&config_text(
        &tls_general(&crt, &key),
        &[PoolSpec::new(&db)],
    ))
    .await;
    let port = proxy.port;

    // psql, sslmode=require: \conninfo reports the TLS session.
    let out = psql(&url(port, &db, "sslmode=require"), "\\conninfo");
    let info = ok_stdout(&out, "psql sslmode=require");
    assert!(info.contains("SSL connection"), "{info}");
    // verify-full: the chain and the host name check out against our CA.
    let conn = url(
        port,
        &db,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
    );
    let out = psql(&conn, "SELECT 40 + 2");
    assert_eq!(ok_stdout(&out, "psql verify-full").trim(), "42");
    // A CA that did not sign the certificate is refused by the client.
    let stranger = Pki::new("stranger");
    let conn = url(
        port,
        &db,
        &format!(
            "sslmode=verify-full sslrootcert={}",
            stranger.path("ca.pem").display()
        ),
    );
    let out = psql(&conn, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate verify failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // tokio-postgres over rustls, verifying against the test CA.
    let client = connect_rustls(&url(port, &db, "sslmode=require"), &ca)
        .await
        .expect("tokio-postgres over rustls");
    let row = client.query_one("SELECT 7::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    let clients = admin_rows(&proxy.admin().await, "SHOW CLIENTS").await;
    let tls_clients = clients
        .iter()
        .filter(|r| r["database"].as_deref() == Some(db.name.as_str()))
        .filter(|r| r["tls"].as_deref().is_some_and(|t| t.starts_with("TLSv")))
        .count();
    assert_eq!(tls_clients, 1, "SHOW CLIENTS tls column: {clients:?}");

    // pgbench over TLS.
    let script = pki.path("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", "4", "-j", "2", "-t", "50", "-f"])
        .arg(&script)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            &db.user,
            &db.name,
        ])
        .env("PGPASSWORD", &db.password)
        .env("PGSSLMODE", "require");
    let out = run_tool(cmd, Duration::from_secs(60));
    let text = ok_stdout(&out, "pgbench over TLS");
    assert!(
        text.contains("number of transactions actually processed: 200/200"),
        "{text}"
    );

    // The admin console over TLS, like any other client.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={port} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgcat sslmode=require"
        ),
        "SHOW VERSION",
    );
    assert!(ok_stdout(&out, "admin over TLS").contains("pgcat"));
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_negotiation_with_alpn_postgresql() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let pki = Pki::new("direct");
    let (crt, key) = pki.issue("pgcat", "pgcat.test");
    let proxy = TestProxy::start(&config_text(
        &tls_general(&crt, &key),
        &[PoolSpec::new(&db)],
    ))
    .await;

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&std::fs::read(pki.path("ca.pem")).unwrap()) {
        roots.add(c).unwrap();
    }
    let make = |alpn: Vec<Vec<u8>>| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = alpn;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    // PostgreSQL 17's sslnegotiation=direct: TLS from the first byte,
    // ALPN "postgresql", then the startup message inside TLS.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = make(vec![b"postgresql".to_vec()])
        .connect(name.clone(), tcp)
        .await
        .expect("direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let mut startup = Vec::new();
    let body = format!("user\0{}\0database\0{}\0\0", db.user, db.name);
    startup.extend_from_slice(&((body.len() + 8) as i32).to_be_bytes());
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(body.as_bytes());
    tls.write_all(&startup).await.unwrap();
    let mut tag = [0u8; 1];
    tls.read_exact(&mut tag).await.unwrap();
    assert_eq!(tag[0], b'R', "an authentication request over direct TLS");
    drop(tls);

    // Without the ALPN protocol, PostgreSQL refuses a direct connection;
    // so does pgcat.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let mut tls = make(Vec::new())
        .connect(name, tcp)
        .await
        .expect("handshake");
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    assert_eq!(
        reply.first(),
        Some(&b'E'),
        "refused with an error: {reply:?}"
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("ALPN"), "{text}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_under_client_tls_sslmode_require() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let pki = Pki::new("require");
    let (crt, key) = pki.issue("pgcat", "pgcat.test");
    let general = format!(
        "{}client_tls_sslmode = \"require\"\n",
        tls_general(&crt, &key)
    );
    let proxy = TestProxy::start(&config_text(&general, &[PoolSpec::new(&db)])).await;
    let out = psql(&url(proxy.port, &db, "sslmode=disable"), "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSL required"), "{err}");
    let out = psql(&url(proxy.port, &db, "sslmode=require"), "SELECT 1");
    assert_eq!(ok_stdout(&out, "psql over TLS").trim(), "1");
    // GSSAPI encryption is still declined, TLS configured or not.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        raw.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], b'N', "GSSENCRequest declined");
    }
    proxy.stop().await;
}

/// A cluster of its own with `ssl = on`, its certificate signed by `pki`.
fn tls_cluster(pki: &Pki) -> PgCluster {
    let cluster = PgCluster::new();
    let (crt, key) = pki.issue("postgres", "postgres.test");
    let data = cluster.dir.join("data");
    let data = if data.exists() {
        data
    } else {
        cluster.dir.clone()
    };
    std::fs::copy(&crt, data.join("server.crt")).unwrap();
    std::fs::copy(&key, data.join("server.key")).unwrap();
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(data.join("server.crt"))
        .arg(data.join("server.key"))
        .status()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    cluster.psql_super("postgres", "ALTER SYSTEM SET ssl = on");
    cluster.psql_super("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_is_verified_against_the_configured_ca() {
    let pki = Pki::new("server");
    let cluster = tls_cluster(&pki);
    let db = cluster.create_db("scram-sha-256");
    let ca = pki.path("ca.pem");

    // PgCat's keys plus our CA file: verify-full against the test CA.
    let general = format!(
        "server_tls = true\nverify_server_certificate = true\nserver_tls_ca_file = \"{}\"\n",
        ca.display()
    );
    let proxy = TestProxy::start(&config_text(&general, &[PoolSpec::new(&db)])).await;
    let client = proxy.connect(&db).await;
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the server connection is TLS");
    assert!(row.get::<_, String>(1).starts_with("TLSv"));
    proxy.stop().await;

    // Another CA: the connection is refused, and the client is told why.
    let stranger = Pki::new("stranger");
    let general = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\nconnect_timeout = 2000\n",
        stranger.path("ca.pem").display()
    );
    let text = config_text(&general, &[PoolSpec::new(&db)]).replace("connect_timeout = 5000\n", "");
    let proxy = TestProxy::start(&text).await;
    // The login itself needs a server (to check the client's startup
    // settings), so the refusal comes at connect time.
    let Err(err) = try_connect(&proxy.conn_str(&db)).await else {
        panic!("a server with a certificate from another CA must be refused");
    };
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains(&format!("127.0.0.1:{}", cluster.port)) && msg.contains("certificate"),
        "error names the server and the reason: {msg}"
    );
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    proxy.stop().await;

    // require without a CA file: encrypted, not verified (libpq's meaning).
    let general = "server_tls_sslmode = \"require\"\n";
    let proxy = TestProxy::start(&config_text(general, &[PoolSpec::new(&db)])).await;
    let client = proxy.connect(&db).await;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    proxy.stop().await;
}

fn s_client_subject(port: u16) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-starttls",
        "postgres",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ]);
    let out = run_tool(cmd, Duration::from_secs(20));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject: {}", String::from_utf8_lossy(&out.stderr)))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_reload_without_restart() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let pki = Pki::new("rotation");
    let (crt_a, key_a) = pki.issue("first", "first.pgcat.test");
    let (crt_b, key_b) = pki.issue("second", "second.pgcat.test");
    let live_crt = pki.path("live.crt");
    let live_key = pki.path("live.key");
    std::fs::copy(&crt_a, &live_crt).unwrap();
    std::fs::copy(&key_a, &live_key).unwrap();
    let file = ConfigFile::new(&config_text(
        &tls_general(&live_crt, &live_key),
        &[PoolSpec::new(&db)],
    ));
    let proxy = TestProxy::start_file(&file).await;
    let admin = proxy.admin().await;
    assert!(s_client_subject(proxy.port).contains("first.pgcat.test"));
    let certs = admin_rows(&admin, "SHOW CERTIFICATES").await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert!(certs[0]["subject"]
        .as_deref()
        .unwrap()
        .contains("first.pgcat.test"));
    assert!(certs[0]["not_after"].is_some());

    // An established TLS client, and its server connection.
    let client = connect_rustls(
        &url(proxy.port, &db, "sslmode=require"),
        &pki.path("ca.pem"),
    )
    .await
    .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // New files, RELOAD: new handshakes get the new certificate, no pool
    // is rebuilt, and the established client carries on.
    std::fs::copy(&crt_b, &live_crt).unwrap();
    std::fs::copy(&key_b, &live_key).unwrap();
    admin.simple_query("RELOAD").await.expect("RELOAD");
    assert!(s_client_subject(proxy.port).contains("second.pgcat.test"));
    let reloads = admin_rows(&admin, "SHOW RELOADS").await;
    let last = reloads.last().unwrap();
    assert_eq!(
        last["changed"].as_deref(),
        Some(""),
        "no pool rebuilt: {last:?}"
    );
    let again: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, again, "the pool kept its server connection");
    let certs = admin_rows(&admin, "SHOW CERTIFICATES").await;
    assert!(certs[0]["subject"]
        .as_deref()
        .unwrap()
        .contains("second.pgcat.test"));

    // A broken file: RELOAD says which, and the last good certificate stays.
    std::fs::write(&live_crt, "not a certificate\n").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains(&live_crt.display().to_string()), "{msg}");
    assert!(s_client_subject(proxy.port).contains("second.pgcat.test"));
    let metrics = pgcat::proxy::metrics::render(&proxy.handle.snapshot());
    assert!(
        metrics.contains("pgcat_tls_certificate_expiry_seconds{"),
        "expiry in /metrics"
    );
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_succeeds_over_tls() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let pki = Pki::new("binding");
    let (crt, key) = pki.issue("pgcat", "pgcat.test");
    let proxy = TestProxy::start(&config_text(
        &tls_general(&crt, &key),
        &[PoolSpec::new(&db)],
    ))
    .await;
    let out = psql(
        &url(proxy.port, &db, "sslmode=require channel_binding=require"),
        "SELECT 'bound'",
    );
    assert_eq!(
        ok_stdout(&out, "psql channel_binding=require").trim(),
        "bound"
    );
    // tokio-postgres does channel binding too (tls-server-end-point).
    let client = connect_rustls(
        &url(proxy.port, &db, "sslmode=require channel_binding=require"),
        &pki.path("ca.pem"),
    )
    .await
    .expect("tokio-postgres with channel_binding=require");
    client.simple_query("SELECT 1").await.unwrap();
    // Without TLS there is nothing to bind to: libpq refuses.
    let out = psql(
        &url(proxy.port, &db, "sslmode=disable channel_binding=require"),
        "SELECT 1",
    );
    assert!(!out.status.success());
    proxy.stop().await;
}

/// A config whose one user has no password: pgcat asks PostgreSQL with
/// auth_query, as the role `auth` (a superuser, so it may read pg_authid).
fn auth_query_config(
    cluster: &PgCluster,
    db: &TestDb,
    users: &[(&str, &str)],
    query: &str,
) -> String {
    let auth_user = "pgcat_auth_query";
    cluster.psql_super(
        "postgres",
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{auth_user}') THEN \
             CREATE ROLE {auth_user} LOGIN SUPERUSER PASSWORD 'auth_pw'; END IF; END $$"
        ),
    );
    let mut s = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"{ADMIN_USER}\"\n\
         admin_password = \"{ADMIN_PASSWORD}\"\nconnect_timeout = 5000\n\
         auth_query = \"{query}\"\nauth_query_user = \"{auth_user}\"\nauth_query_password = \"auth_pw\"\n\n\
         [pools.{name}]\npool_mode = \"transaction\"\n",
        name = db.name
    );
    for (i, (user, auth_type)) in users.iter().enumerate() {
        s.push_str(&format!(
            "\n[pools.{name}.users.{i}]\nusername = \"{user}\"\nauth_type = \"{auth_type}\"\npool_size = 3\n",
            name = db.name
        ));
    }
    s.push_str(&format!(
        "\n[pools.{name}.shards.0]\ndatabase = \"{name}\"\nservers = [[\"127.0.0.1\", {port}, \"primary\"]]\n",
        name = db.name,
        port = cluster.port
    ));
    s
}

fn conn_as(port: u16, db: &TestDb, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={}",
        db.name
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_logs_in_with_scram_verifiers_and_md5_hashes() {
    let cluster = PgCluster::shared();
    let db = cluster.create_db("scram-sha-256");
    let scram_user = unique("aq_scram");
    let md5_user = unique("aq_md5");
    let ghost = unique("aq_ghost");
    cluster.psql_super(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {scram_user} LOGIN PASSWORD 'scram_pw'; \
             SET password_encryption = 'md5'; CREATE ROLE {md5_user} LOGIN PASSWORD 'md5_pw' IN ROLE md5_users; \
             GRANT ALL ON DATABASE {name} TO {scram_user}, {md5_user};",
            name = db.name
        ),
    );
    // PgCat's quoted '$1' form: pgcat binds it as a parameter all the same.
    let text = auth_query_config(
        cluster,
        &db,
        &[
            (&scram_user, "scram-sha-256"),
            (&md5_user, "md5"),
            (&ghost, "md5"),
        ],
        "SELECT usename, passwd FROM pg_shadow WHERE usename = '$1'",
    );
    let proxy = TestProxy::start(&text).await;
    let port = proxy.port;

    // SCRAM: the client proves the password against the verifier, and
    // pgcat logs in to PostgreSQL with the keys the proof revealed.
    let client = connect(&conn_as(port, &db, &scram_user, "scram_pw")).await;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, scram_user);
    // md5: the stored hash serves both directions.
    let client = connect(&conn_as(port, &db, &md5_user, "md5_pw")).await;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, md5_user);

    // A wrong password, and a user PostgreSQL does not know, are refused
    // alike.
    for (user, pw) in [
        (&scram_user, "nope"),
        (&md5_user, "nope"),
        (&ghost, "whatever"),
    ] {
        let Err(err) = try_connect(&conn_as(port, &db, user, pw)).await else {
            panic!("{user} with password {pw} must be refused");
        };
        let db_err = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{user}: {err:?}"));
        assert_eq!(db_err.code().code(), "28P01", "{user}: {db_err:?}");
        assert_eq!(
            db_err.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }

    // A password changed in PostgreSQL takes effect (the cache is brief).
    cluster.psql_super(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE {scram_user} PASSWORD 'scram_pw2'; \
             SET password_encryption = 'md5'; ALTER ROLE {md5_user} PASSWORD 'md5_pw2';"
        ),
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (user, old, new) in [
        (&scram_user, "scram_pw", "scram_pw2"),
        (&md5_user, "md5_pw", "md5_pw2"),
    ] {
        assert!(
            try_connect(&conn_as(port, &db, user, old)).await.is_err(),
            "{user}: old password"
        );
        let client = connect(&conn_as(port, &db, user, new)).await;
        client.simple_query("SELECT 1").await.unwrap();
    }
    proxy.stop().await;
}

#[test]
fn a_user_without_password_needs_auth_query() {
    let text = "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"a\"\nadmin_password = \"b\"\n\n\
                [pools.p]\n[pools.p.users.0]\nusername = \"nopass\"\npool_size = 1\n\n\
                [pools.p.shards.0]\ndatabase = \"d\"\nservers = [[\"127.0.0.1\", 1, \"primary\"]]\n";
    let err = pgcat::proxy::config::Config::parse(text, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nopass") && err.contains("auth_query"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgcat_logs_in_to_postgres_with_a_client_certificate() {
    let pki = Pki::new("clientcert");
    let cluster = tls_cluster(&pki);
    // PostgreSQL trusts the test CA for client certificates, and lets the
    // role `certuser` in by certificate alone (no password).
    let data = cluster.dir.clone();
    std::fs::copy(pki.path("ca.pem"), data.join("root.crt")).unwrap();
    Command::new("chown")
        .args(["postgres:postgres"])
        .arg(data.join("root.crt"))
        .status()
        .unwrap();
    let hba = data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all certuser 127.0.0.1/32 cert\n{text}"),
    )
    .unwrap();
    cluster.psql_super("postgres", "ALTER SYSTEM SET ssl_ca_file = 'root.crt'");
    cluster.psql_super("postgres", "SELECT pg_reload_conf()");
    cluster.psql_super("postgres", "CREATE ROLE certuser LOGIN");
    cluster.psql_super("postgres", "CREATE DATABASE certdb OWNER certuser");
    std::thread::sleep(Duration::from_millis(300));
    let (crt, key) = pki.issue("certuser", "certuser");
    let general = format!(
        "server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\n\
         server_tls_cert_file = \"{}\"\nserver_tls_key_file = \"{}\"\n",
        pki.path("ca.pem").display(),
        crt.display(),
        key.display()
    );
    // Clients log in to pgcat with a password of pgcat's; pgcat logs in
    // to PostgreSQL as certuser with the certificate.
    let db = TestDb {
        name: "certdb".into(),
        user: "certuser".into(),
        password: "pgcat_side_pw".into(),
        host: cluster.host.clone(),
        port: cluster.port,
    };
    let proxy = TestProxy::start(&config_text(&general, &[PoolSpec::new(&db)])).await;
    let client = proxy.connect(&db).await;
    let row = client
        .query_one(
            "SELECT current_user::text, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "certuser");
    assert!(row.get::<_, bool>(1));
    assert!(row
        .get::<_, Option<String>>(2)
        .unwrap_or_default()
        .contains("certuser"));
    let certs = admin_rows(&proxy.admin().await, "SHOW CERTIFICATES").await;
    let keys: Vec<_> = certs.iter().filter_map(|r| r["key"].clone()).collect();
    assert!(
        keys.contains(&"server_tls_ca_file".to_string())
            && keys.contains(&"server_tls_cert_file".to_string()),
        "{certs:?}"
    );
    proxy.stop().await;
}
