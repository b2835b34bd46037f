//! Who gets in: clients authenticating to pgcat (SCRAM-SHA-256, md5), and
//! pgcat authenticating to PostgreSQL (SCRAM, md5, cleartext, trust).

mod support;

use support::*;

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {e:?}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_are_refused_for_scram_and_md5_pools() {
    let pg = PgCluster::shared();
    for auth in ["scram-sha-256", "md5"] {
        let db = pg.create_db("scram-sha-256");
        let mut spec = PoolSpec::new(&db);
        spec.auth_type = auth;
        let proxy = TestProxy::start(&config_text("", &[spec])).await;

        let ok = proxy.connect(&db).await;
        let one: i32 = ok.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);

        let wrong = format!(
            "host=127.0.0.1 port={} user={} password=not-it dbname={}",
            proxy.port, db.user, db.name
        );
        let err = try_connect(&wrong).await.unwrap_err();
        assert_eq!(sqlstate(&err), "28P01", "{auth}: {err:?}");
        assert_eq!(
            message(&err),
            format!("password authentication failed for user \"{}\"", db.user)
        );

        let unknown = format!(
            "host=127.0.0.1 port={} user=nobody password=x dbname={}",
            proxy.port, db.name
        );
        // An unauthenticated client learns nothing of which users and
        // databases exist: the same exchange, the same error as a wrong
        // password, even with the right password for another database.
        let err = try_connect(&unknown).await.unwrap_err();
        assert_eq!(sqlstate(&err), "28P01", "{auth}: {err:?}");
        assert_eq!(
            message(&err),
            "password authentication failed for user \"nobody\""
        );

        let no_db = format!(
            "host=127.0.0.1 port={} user={} password={} dbname=nowhere",
            proxy.port, db.user, db.password
        );
        let err = try_connect(&no_db).await.unwrap_err();
        assert_eq!(sqlstate(&err), "28P01", "{auth}: {err:?}");
        assert_eq!(
            message(&err),
            format!("password authentication failed for user \"{}\"", db.user)
        );
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgcat_logs_in_to_postgres_with_every_method() {
    let pg = PgCluster::shared();
    for method in ["scram-sha-256", "md5", "password", "trust"] {
        let db = pg.create_db(method);
        let proxy = TestProxy::start(&config_text("", &[PoolSpec::new(&db)])).await;
        let client = proxy.connect(&db).await;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
            .get(0);
        assert_eq!(who, db.user, "{method}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_username_and_password_replace_the_client_login() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    // Clients log in to pgcat as "app" with pgcat's own password; pgcat
    // logs in to PostgreSQL as the real role.
    let text = config_text("", &[PoolSpec::new(&db)]).replace(
        &format!("username = \"{}\"\npassword = \"{}\"", db.user, db.password),
        &format!(
            "username = \"app\"\npassword = \"app-secret\"\nserver_username = \"{}\"\nserver_password = \"{}\"",
            db.user, db.password
        ),
    );
    let proxy = TestProxy::start(&text).await;
    let client = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname={}",
        proxy.port, db.name
    ))
    .await;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, db.user);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_md5_hash_and_scram_verifier_work_as_configured_passwords() {
    let pg = PgCluster::shared();
    let db = pg.create_db("md5");
    // PostgreSQL's own stored forms, as an operator would copy them.
    let md5 = pgcat::proxy::auth::md5::stored_hash(&db.user, &db.password);
    let text = config_text(
        "",
        &[PoolSpec {
            auth_type: "md5",
            ..PoolSpec::new(&db)
        }],
    )
    .replace(
        &format!("password = \"{}\"", db.password),
        &format!("password = \"{md5}\""),
    );
    let proxy = TestProxy::start(&text).await;
    // The server login uses the md5 hash too (the role is md5 in pg_hba).
    let client = proxy.connect(&db).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    proxy.stop().await;

    let db = pg.create_db("scram-sha-256");
    let verifier = pg.psql_super(
        "postgres",
        &format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
            db.user
        ),
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let text = config_text("", &[PoolSpec::new(&db)]).replace(
        &format!("password = \"{}\"", db.password),
        &format!(
            "password = \"{verifier}\"\nserver_password = \"{}\"",
            db.password
        ),
    );
    let proxy = TestProxy::start(&text).await;
    let client = proxy.connect(&db).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let err = try_connect(&format!(
        "host=127.0.0.1 port={} user={} password=wrong dbname={}",
        proxy.port, db.user, db.name
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_password_is_reported_to_the_client() {
    let pg = PgCluster::shared();
    let db = pg.create_db("scram-sha-256");
    let text = config_text("", &[PoolSpec::new(&db)])
        .replace(
            &format!("password = \"{}\"", db.password),
            &format!(
                "password = \"{}\"\nserver_password = \"stale\"",
                db.password
            ),
        )
        .replace("connect_timeout = 5000", "connect_timeout = 500");
    let proxy = TestProxy::start(&text).await;
    let err = try_connect(&proxy.conn_str(&db)).await.unwrap_err();
    let msg = message(&err);
    assert!(
        msg.contains("password authentication failed"),
        "the client should learn why: {msg}"
    );
    proxy.stop().await;
}
