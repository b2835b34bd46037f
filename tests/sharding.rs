//! Sharding as PgCat does it: three shards (three databases on one
//! cluster, each with a `data` table), reached through `SET SHARD`,
//! `SET SHARDING KEY`, comments and `automatic_sharding_key`. Each shard
//! answers `current_database()` with its own name, which says where a
//! statement ran.
//!
//! `pg_bigint_hash` is checked against PostgreSQL's own hash partitioning
//! on 1 000 keys, and `sha1` against PgCat's definition computed by
//! PostgreSQL (pgcrypto) on the same keys.

mod support;

use pgcat::proxy::config::ShardingFunction;
use pgcat::proxy::router::sharding::shard_of;
use support::*;
use tokio_postgres::SimpleQueryMessage;

const SHARDS: usize = 3;

struct Sharded {
    cluster: PgCluster,
    db: TestDb,
    /// Database of each shard.
    dbs: Vec<String>,
}

fn sharded() -> Sharded {
    let cluster = PgCluster::new();
    let db = cluster.create_db("scram-sha-256");
    let mut dbs = vec![db.name.clone()];
    for i in 1..SHARDS {
        let name = format!("{}_s{i}", db.name);
        cluster.psql_super(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {}", db.user),
        );
        dbs.push(name);
    }
    for d in &dbs {
        cluster.psql_super(
            d,
            &format!(
                "CREATE TABLE data (id bigint, v text); ALTER TABLE data OWNER TO {}",
                db.user
            ),
        );
    }
    Sharded { cluster, db, dbs }
}

fn config(s: &Sharded, pool: &str, pool_extra: &str) -> String {
    let mut text = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = 0\nadmin_username = \"{ADMIN_USER}\"\n\
         admin_password = \"{ADMIN_PASSWORD}\"\nconnect_timeout = 3000\n\n\
         [pools.{pool}]\npool_mode = \"transaction\"\n{pool_extra}\n\n\
         [pools.{pool}.users.0]\nusername = \"{user}\"\npassword = \"{password}\"\npool_size = 3\n",
        user = s.db.user,
        password = s.db.password,
    );
    for (i, d) in s.dbs.iter().enumerate() {
        text.push_str(&format!(
            "\n[pools.{pool}.shards.{i}]\ndatabase = \"{d}\"\nservers = [[\"{}\", {}, \"primary\"]]\n",
            s.cluster.host, s.cluster.port
        ));
    }
    text
}

const ROUTED: &str = "query_parser_enabled = true\nquery_parser_read_write_splitting = true\n\
    automatic_sharding_key = \"data.id\"\n\
    shard_id_regex = '/\\* shard_id: (\\d+) \\*/'\n\
    sharding_key_regex = '/\\* sharding_key: (\\d+) \\*/'\n";

fn conn_str(proxy: &TestProxy, s: &Sharded, pool: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={} password={} dbname={pool}",
        proxy.port, s.db.user, s.db.password
    )
}

/// The shard a simple query ran on.
async fn shard_of_simple(s: &Sharded, client: &tokio_postgres::Client, sql: &str) -> usize {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let db = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    s.dbs
        .iter()
        .position(|d| *d == db)
        .expect("a shard database")
}

/// 1 000 keys: small ones, both signs, the extremes, and a spread of
/// large ones from a fixed LCG.
fn keys() -> Vec<i64> {
    let mut keys: Vec<i64> = (-50..250).collect();
    keys.extend([
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        i64::MAX - 1,
        i32::MAX as i64 + 1,
    ]);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while keys.len() < 1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        keys.push(x as i64);
    }
    keys
}

fn values(keys: &[i64]) -> String {
    keys.iter()
        .map(|k| format!("({k})"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_bigint_hash_picks_the_partition_postgresql_picks() {
    let s = sharded();
    let keys = keys();
    // PostgreSQL's answer: the partition each key lands in.
    s.cluster.psql_super(
        &s.dbs[0],
        &format!(
            "CREATE TABLE parts (id bigint) PARTITION BY HASH (id); \
             {} INSERT INTO parts VALUES {};",
            (0..SHARDS)
                .map(|r| format!(
                    "CREATE TABLE parts_{r} PARTITION OF parts FOR VALUES WITH (MODULUS {SHARDS}, REMAINDER {r});"
                ))
                .collect::<String>(),
            values(&keys)
        ),
    );
    let out = s
        .cluster
        .psql_super(&s.dbs[0], "SELECT id, tableoid::regclass FROM parts");
    let mut expected = std::collections::HashMap::new();
    for line in out.lines() {
        let (id, part) = line.split_once('|').unwrap();
        let r: usize = part.strip_prefix("parts_").unwrap().parse().unwrap();
        expected.insert(id.parse::<i64>().unwrap(), r);
    }
    assert_eq!(expected.len(), keys.len());

    let proxy = TestProxy::start(&config(&s, "sharded", ROUTED)).await;
    let client = connect(&conn_str(&proxy, &s, "sharded")).await;
    let mut checked = 0;
    for &k in &keys {
        // SET SHARDING KEY takes non-negative keys (PgCat's grammar).
        if k >= 0 {
            client
                .simple_query(&format!("SET SHARDING KEY TO '{k}'"))
                .await
                .unwrap();
            let got = shard_of_simple(&s, &client, "SELECT current_database()").await;
            assert_eq!(got, expected[&k], "SET SHARDING KEY TO '{k}'");
            checked += 1;
        }
        // automatic_sharding_key: any key, as a literal.
        let got = shard_of_simple(
            &s,
            &client,
            &format!("SELECT current_database(), count(*) FROM data WHERE id = {k}"),
        )
        .await;
        assert_eq!(got, expected[&k], "WHERE id = {k}");
        checked += 1;
    }
    assert!(checked > 1500);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_matches_pgcats_definition() {
    let s = sharded();
    let keys: Vec<i64> = keys().into_iter().filter(|k| *k >= 0).take(600).collect();
    // PgCat's sha1 sharder: the last 8 hex digits of the SHA-1 of the
    // key's decimal text, as a number, modulo the shard count.
    s.cluster.psql_super(&s.dbs[0], "CREATE EXTENSION pgcrypto");
    let out = s.cluster.psql_super(
        &s.dbs[0],
        &format!(
            "SELECT k, (('x' || right(encode(digest(k::text, 'sha1'), 'hex'), 8))::bit(32)::bigint % {SHARDS}) \
             FROM (VALUES {}) AS t(k)",
            values(&keys)
        ),
    );
    let expected: std::collections::HashMap<i64, usize> = out
        .lines()
        .map(|l| {
            let (k, r) = l.split_once('|').unwrap();
            (k.parse().unwrap(), r.parse().unwrap())
        })
        .collect();
    let proxy = TestProxy::start(&config(&s, "sha", "sharding_function = \"sha1\"")).await;
    let client = connect(&conn_str(&proxy, &s, "sha")).await;
    for &k in &keys {
        client
            .simple_query(&format!("SET SHARDING KEY TO '{k}'"))
            .await
            .unwrap();
        let got = shard_of_simple(&s, &client, "SELECT current_database()").await;
        assert_eq!(got, expected[&k], "sha1 key {k}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_shard_comments_and_automatic_keys_route_as_pgcat() {
    let s = sharded();
    let proxy = TestProxy::start(&config(&s, "sharded", ROUTED)).await;
    let client = connect(&conn_str(&proxy, &s, "sharded")).await;
    let db = "SELECT current_database()";

    // No shard chosen yet: default_shard (shard_0).
    assert_eq!(shard_of_simple(&s, &client, db).await, 0);
    let show = |rows: Vec<SimpleQueryMessage>| match &rows[1] {
        SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        show(client.simple_query("SHOW SHARD").await.unwrap()),
        "unset"
    );

    // SET SHARD, which persists across transactions.
    client.simple_query("SET SHARD TO '2'").await.unwrap();
    for _ in 0..3 {
        assert_eq!(shard_of_simple(&s, &client, db).await, 2);
        let row = client.query_one(db, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), s.dbs[2]);
    }
    assert_eq!(show(client.simple_query("SHOW SHARD").await.unwrap()), "2");
    // Out of range: PgCat's error, and the shard stays.
    let err = client.simple_query("SET SHARD TO '5'").await.unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "58000");
    assert_eq!(
        e.message(),
        "shard 5 is not configured 3, staying on shard Some(2) (shard numbers start at 0)"
    );
    assert_eq!(shard_of_simple(&s, &client, db).await, 2);
    client.simple_query("SET SHARD TO 'any'").await.unwrap();
    let any = shard_of_simple(&s, &client, db).await;
    assert!(any < SHARDS);

    // SET SHARDING KEY: key 3 is shard 1 with three shards (PgCat's own
    // test), key 5 shard 2, key 2 shard 0.
    for (k, shard) in [(3, 1), (5, 2), (2, 0)] {
        client
            .simple_query(&format!("SET SHARDING KEY TO '{k}'"))
            .await
            .unwrap();
        assert_eq!(shard_of_simple(&s, &client, db).await, shard, "key {k}");
    }

    // Comments, in both protocols.
    for i in 0..SHARDS {
        let sql = format!("/* shard_id: {i} */ SELECT current_database()");
        assert_eq!(shard_of_simple(&s, &client, &sql).await, i);
        let row = client.query_one(&sql, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), s.dbs[i]);
    }
    let sql = "/* sharding_key: 5 */ SELECT current_database()";
    assert_eq!(shard_of_simple(&s, &client, sql).await, 2);
    // A shard number past the last from a comment: PgCat's error, and
    // the client stays.
    let err = client
        .simple_query("/* shard_id: 7 */ SELECT 1")
        .await
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert_eq!(e.code().code(), "58000");
    assert!(e.message().contains("InvalidShardId(7)"), "{}", e.message());
    client.simple_query("SET SHARD TO '0'").await.unwrap();
    assert_eq!(shard_of_simple(&s, &client, db).await, 0);

    // automatic_sharding_key: literals and bound parameters, in reads and
    // in INSERTs; the rows land in the shard of their key.
    let mut per_shard = [0i64; SHARDS];
    for k in 0..60i64 {
        let shard = match k % 3 {
            0 => {
                client
                    .simple_query(&format!("INSERT INTO data (id, v) VALUES ({k}, 'lit')"))
                    .await
                    .unwrap();
                shard_of_simple(
                    &s,
                    &client,
                    &format!("SELECT current_database() FROM data WHERE id = {k}"),
                )
                .await
            }
            _ => {
                client
                    .execute("INSERT INTO data (id, v) VALUES ($1, 'bound')", &[&k])
                    .await
                    .unwrap();
                let row = client
                    .query_one("SELECT current_database() FROM data WHERE id = $1", &[&k])
                    .await
                    .unwrap();
                let name: String = row.get(0);
                s.dbs.iter().position(|d| *d == name).unwrap()
            }
        };
        per_shard[shard] += 1;
    }
    for (i, d) in s.dbs.iter().enumerate() {
        let n: i64 = s
            .cluster
            .psql_super(d, "SELECT count(*) FROM data")
            .parse()
            .unwrap();
        assert_eq!(n, per_shard[i], "rows in shard {i}");
        // Every row is in the shard its key hashes to (the hash is
        // PostgreSQL's, as the first test shows).
        let ids = s.cluster.psql_super(d, "SELECT id FROM data");
        for id in ids.lines() {
            let k: i64 = id.parse().unwrap();
            assert_eq!(
                shard_of(ShardingFunction::PgBigintHash, k, SHARDS),
                i,
                "key {k} landed in shard {i}"
            );
        }
    }
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    proxy.stop().await;
}
