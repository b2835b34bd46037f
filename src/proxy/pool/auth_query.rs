//! auth_query (PgCat's keys, PgBouncer's meaning): for a user without a
//! password in the config, the secret PostgreSQL stores for it (a SCRAM
//! verifier or an md5 hash) is fetched with the auth user, and clients are
//! checked against it. The user name is bound as a parameter, never
//! spliced into the SQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::proxy::server::{LoginInfo, Server, ServerAddress, ServerError};

/// How long a fetched secret answers logins before it is asked for again.
/// Short: a burst of logins costs one query, and a password changed in
/// PostgreSQL is in force about a second later (at once after a failed
/// login, which drops the cached secret).
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Bound on fetching one secret (connect, login and query).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AuthQuery {
    sql: String,
    /// Where the query runs: the first server of shard 0.
    target: Arc<ServerAddress>,
    /// The auth user's login.
    login: LoginInfo,
    /// The last answer and when it came (None inside: no such user, or no
    /// password).
    cache: Mutex<Option<(Instant, Option<String>)>>,
    /// One fetch at a time: concurrent logins share its answer.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AuthQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthQuery")
            .field("sql", &self.sql)
            .field("target", &self.target.to_string())
            .field("user", &self.login.user)
            .finish()
    }
}

/// PgCat's examples quote the placeholder (`usename = '$1'`) because
/// PgCat substitutes text; here it becomes a real parameter.
pub fn parameterize(sql: &str) -> String {
    sql.replace("'$1'", "$1")
}

impl AuthQuery {
    pub fn new(sql: &str, target: Arc<ServerAddress>, login: LoginInfo) -> AuthQuery {
        AuthQuery {
            sql: parameterize(sql),
            target,
            login,
            cache: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Option<String>> {
        match &*self.cache.lock() {
            Some((at, v)) if at.elapsed() < CACHE_TTL => Some(v.clone()),
            _ => None,
        }
    }

    /// The secret PostgreSQL stores for `user`; None when it has none (no
    /// such role, no password, or expired).
    pub async fn secret(&self, user: &str) -> Result<Option<String>, ServerError> {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _one = self.fetching.lock().await;
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let v = self.fetch(user).await?;
        *self.cache.lock() = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// Drops the cached secret (after a failed login: the password may
    /// have changed).
    pub fn forget(&self) {
        *self.cache.lock() = None;
    }

    async fn fetch(&self, user: &str) -> Result<Option<String>, ServerError> {
        let mut server = Server::connect(self.target.clone(), &self.login, (None, "", "")).await?;
        let rows = server
            .query_params(&self.sql, &[user], FETCH_TIMEOUT)
            .await?;
        // PgCat's query answers (name, hash), PgBouncer's (rolname,
        // rolpassword): the secret is the last column of the first row.
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().last().flatten())
            .filter(|s| !s.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_placeholders_become_parameters() {
        assert_eq!(
            parameterize("SELECT usename, passwd FROM pg_shadow WHERE usename='$1'"),
            "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
        );
        assert_eq!(
            parameterize("SELECT * FROM public.user_lookup('$1');"),
            "SELECT * FROM public.user_lookup($1);"
        );
        let plain = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1";
        assert_eq!(parameterize(plain), plain);
    }
}
