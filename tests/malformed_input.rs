//! Broken or hostile bytes close that one connection with an error; the
//! pooler keeps serving everyone else.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Reads until EOF (or 5 s) and returns everything received.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(result.is_ok(), "pgcat did not close the connection");
    out
}

/// The SQLSTATE of the first ErrorResponse in `bytes`.
fn error_code(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < len + 1 {
            break;
        }
        if rest[0] == b'E' {
            let fields = pgcat::proxy::protocol::messages::parse_error_fields(&rest[5..len + 1]);
            return Some(fields.code);
        }
        rest = &rest[len + 1..];
    }
    None
}

async fn works(proxy: &TestProxy, db: &TestDb) {
    let client = proxy.connect(db).await;
    let v: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// Logs in over a raw socket to a trust-auth pool.
async fn raw_login(proxy: &TestProxy, db: &TestDb) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut out = bytes::BytesMut::new();
    pgcat::proxy::protocol::messages::startup(
        &mut out,
        &[("user", &db.user), ("database", &db.name)],
    );
    s.write_all(&out).await.unwrap();
    // Read until ReadyForQuery.
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during login");
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 6 && buf[buf.len() - 6] == b'Z' {
            break;
        }
    }
    s
}

async fn setup() -> (TestDb, TestProxy) {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let text = config_text("", &[PoolSpec::new(&db)])
        .replace("auth_type = \"scram-sha-256\"", "auth_type = \"trust\"");
    let proxy = TestProxy::start(&text).await;
    (db, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_refused_and_others_keep_working() {
    let (db, proxy) = setup().await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pgcat\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"), "{reply:?}");
    works(&proxy, &db).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packet_claiming_two_gib_is_refused() {
    let (db, proxy) = setup().await;
    for claim in [[0x7f, 0xff, 0xff, 0xff], [0x80, 0, 0, 0], [0, 0, 0, 2]] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        s.write_all(&claim).await.unwrap();
        s.write_all(&[0, 3, 0, 0]).await.unwrap();
        let reply = read_to_close(&mut s).await;
        assert_eq!(
            error_code(&reply).as_deref(),
            Some("08P01"),
            "{claim:?}: {reply:?}"
        );
    }
    works(&proxy, &db).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_messages_after_login_close_that_client() {
    let (db, proxy) = setup().await;
    let bystander = proxy.connect(&db).await;
    let cases: [&[u8]; 3] = [
        // A query claiming 2 GiB.
        &[b'Q', 0x7f, 0xff, 0xff, 0xff],
        // A length smaller than the length word itself.
        &[b'Q', 0, 0, 0, 2],
        // A Sync claiming a megabyte.
        &[b'S', 0, 0x10, 0, 0],
    ];
    for case in cases {
        let mut s = raw_login(&proxy, &db).await;
        s.write_all(case).await.unwrap();
        let reply = read_to_close(&mut s).await;
        assert_eq!(
            error_code(&reply).as_deref(),
            Some("08P01"),
            "{case:?}: {reply:?}"
        );
    }
    // A client that dies halfway through a large message.
    {
        let mut s = raw_login(&proxy, &db).await;
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&(1_000_000i32).to_be_bytes());
        msg.extend_from_slice(&vec![b' '; 200_000]);
        s.write_all(&msg).await.unwrap();
    }
    let v: i32 = bystander.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    works(&proxy, &db).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_then_plain_login_works() {
    let (db, proxy) = setup().await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    // GSSENCRequest, then SSLRequest, as libpq sends them.
    for code in [80_877_104i32, 80_877_103] {
        let mut req = 8i32.to_be_bytes().to_vec();
        req.extend_from_slice(&code.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }
    drop(s);
    // libpq with sslmode=prefer does exactly this and then goes plain.
    let out = run_tool_async(
        {
            let mut c = std::process::Command::new("psql");
            c.args(["-X", "-A", "-t", "-c", "SELECT 'plain'"])
                .arg(format!(
                    "host=127.0.0.1 port={} user={} dbname={} sslmode=prefer",
                    proxy.port, db.user, db.name
                ));
            c
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "plain");
    proxy.stop().await;
}
