//! A raw PostgreSQL v3 client for tests that need exact control of the
//! protocol: which messages go in one batch, what is named, where a Sync
//! goes. Replies come back as plain values, easy to compare between a
//! direct connection and one through pgcat.

#![allow(dead_code)]

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pgcat::proxy::auth::ServerLogin;
use pgcat::proxy::protocol::messages;

/// One reply, reduced to what a client can observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    ParameterDescription,
    RowDescription(Vec<String>),
    Row(Vec<Option<String>>),
    Complete(String),
    EmptyQuery,
    Suspended,
    Error { code: String, message: String },
    Notice { code: String, message: String },
    ParameterStatus(String, String),
    Notification(String, String),
    Ready(char),
    Other(char),
}

impl Reply {
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error { .. })
    }
}

/// What a login attempt ended in.
#[derive(Debug)]
pub enum LoginError {
    Io(std::io::Error),
    Refused { code: String, message: String },
}

pub struct Wire {
    stream: TcpStream,
    rbuf: BytesMut,
    out: BytesMut,
    /// ParameterStatus values seen so far.
    pub reported: std::collections::BTreeMap<String, String>,
}

fn fields(body: &[u8]) -> (String, String) {
    let f = messages::parse_error_fields(body);
    (f.code, f.message)
}

impl Wire {
    /// Connects and logs in (md5, SCRAM or trust) with extra startup
    /// parameters.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> Result<Wire, LoginError> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(LoginError::Io)?;
        stream.set_nodelay(true).ok();
        let mut w = Wire {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            out: BytesMut::new(),
            reported: Default::default(),
        };
        let mut params = vec![("user", user), ("database", database)];
        params.extend_from_slice(extra);
        messages::startup(&mut w.out, &params);
        w.flush().await.map_err(LoginError::Io)?;
        let mut auth = ServerLogin::new(user, Some(password));
        loop {
            let (tag, body) = w.read_raw().await.map_err(LoginError::Io)?;
            match tag {
                b'R' => {
                    let reply = auth.step(&body).map_err(|e| LoginError::Refused {
                        code: "auth".into(),
                        message: e.to_string(),
                    })?;
                    if let Some(reply) = reply {
                        if !reply.is_empty() {
                            w.stream.write_all(&reply).await.map_err(LoginError::Io)?;
                        }
                    }
                }
                b'E' => {
                    let (code, message) = fields(&body);
                    return Err(LoginError::Refused { code, message });
                }
                b'S' => {
                    let (k, v) = messages::parse_parameter_status(&body).unwrap();
                    w.reported.insert(k, v);
                }
                b'Z' => return Ok(w),
                _ => {}
            }
        }
    }

    async fn read_raw(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = i32::from_be_bytes(self.rbuf[1..5].try_into().unwrap()) as usize;
                if self.rbuf.len() > len {
                    let tag = self.rbuf[0];
                    self.rbuf.advance(5);
                    let body = self.rbuf.split_to(len - 4).to_vec();
                    return Ok((tag, body));
                }
            }
            let n = tokio::time::timeout(
                Duration::from_secs(30),
                self.stream.read_buf(&mut self.rbuf),
            )
            .await
            .map_err(|_| std::io::Error::other("no reply within 30 s"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub fn parse(&mut self, name: &str, sql: &str, types: &[u32]) -> &mut Self {
        let at = messages::begin(&mut self.out, b'P');
        messages::put_cstr(&mut self.out, name.as_bytes());
        messages::put_cstr(&mut self.out, sql.as_bytes());
        self.out.put_i16(types.len() as i16);
        for t in types {
            self.out.put_u32(*t);
        }
        messages::finish(&mut self.out, at);
        self
    }

    /// Bind with text parameters and text results.
    pub fn bind(&mut self, portal: &str, statement: &str, params: &[Option<&str>]) -> &mut Self {
        let at = messages::begin(&mut self.out, b'B');
        messages::put_cstr(&mut self.out, portal.as_bytes());
        messages::put_cstr(&mut self.out, statement.as_bytes());
        self.out.put_i16(0);
        self.out.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    self.out.put_i32(v.len() as i32);
                    self.out.put_slice(v.as_bytes());
                }
                None => self.out.put_i32(-1),
            }
        }
        self.out.put_i16(0);
        messages::finish(&mut self.out, at);
        self
    }

    pub fn describe_statement(&mut self, name: &str) -> &mut Self {
        let at = messages::begin(&mut self.out, b'D');
        self.out.put_u8(b'S');
        messages::put_cstr(&mut self.out, name.as_bytes());
        messages::finish(&mut self.out, at);
        self
    }

    pub fn describe_portal(&mut self, name: &str) -> &mut Self {
        let at = messages::begin(&mut self.out, b'D');
        self.out.put_u8(b'P');
        messages::put_cstr(&mut self.out, name.as_bytes());
        messages::finish(&mut self.out, at);
        self
    }

    pub fn execute(&mut self, portal: &str) -> &mut Self {
        let at = messages::begin(&mut self.out, b'E');
        messages::put_cstr(&mut self.out, portal.as_bytes());
        self.out.put_i32(0);
        messages::finish(&mut self.out, at);
        self
    }

    pub fn close_statement(&mut self, name: &str) -> &mut Self {
        messages::close(&mut self.out, b'S', name);
        self
    }

    pub fn sync(&mut self) -> &mut Self {
        messages::sync(&mut self.out);
        self
    }

    pub fn query(&mut self, sql: &str) -> &mut Self {
        messages::query(&mut self.out, sql);
        self
    }

    /// Writes bytes as they are, framing and all.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out).await
    }

    /// Writes what was queued and reads replies through the next
    /// ReadyForQuery.
    pub async fn round_trip(&mut self) -> std::io::Result<Vec<Reply>> {
        self.flush().await?;
        self.read_until_ready().await
    }

    pub async fn read_until_ready(&mut self) -> std::io::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        loop {
            let r = self.read_reply().await?;
            let done = matches!(r, Reply::Ready(_));
            replies.push(r);
            if done {
                return Ok(replies);
            }
        }
    }

    pub async fn read_reply(&mut self) -> std::io::Result<Reply> {
        let (tag, body) = self.read_raw().await?;
        let mut b = &body[..];
        Ok(match tag {
            b'1' => Reply::ParseComplete,
            b'2' => Reply::BindComplete,
            b'3' => Reply::CloseComplete,
            b'n' => Reply::NoData,
            b't' => Reply::ParameterDescription,
            b'T' => {
                let n = b.get_i16();
                let mut names = Vec::new();
                for _ in 0..n {
                    let (name, rest) = messages::read_cstr(b, "T").unwrap();
                    names.push(String::from_utf8_lossy(name).into_owned());
                    b = &rest[18..];
                }
                Reply::RowDescription(names)
            }
            b'D' => Reply::Row(messages::parse_data_row(&body).unwrap()),
            b'C' => Reply::Complete(
                String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned(),
            ),
            b'I' => Reply::EmptyQuery,
            b's' => Reply::Suspended,
            b'E' => {
                let (code, message) = fields(&body);
                Reply::Error { code, message }
            }
            b'N' => {
                let (code, message) = fields(&body);
                Reply::Notice { code, message }
            }
            b'S' => {
                let (k, v) = messages::parse_parameter_status(&body).unwrap();
                self.reported.insert(k.clone(), v.clone());
                Reply::ParameterStatus(k, v)
            }
            b'A' => {
                let rest = &body[4..];
                let (channel, rest) = messages::read_cstr(rest, "A").unwrap();
                let (payload, _) = messages::read_cstr(rest, "A").unwrap();
                Reply::Notification(
                    String::from_utf8_lossy(channel).into_owned(),
                    String::from_utf8_lossy(payload).into_owned(),
                )
            }
            b'Z' => Reply::Ready(body[0] as char),
            other => Reply::Other(other as char),
        })
    }

    /// Runs a simple query; returns the first column of each row, or the
    /// error.
    pub async fn simple(&mut self, sql: &str) -> Result<Vec<Option<String>>, (String, String)> {
        let replies = self
            .query(sql)
            .round_trip()
            .await
            .expect("query round trip");
        let mut rows = Vec::new();
        for r in replies {
            match r {
                Reply::Row(mut cols) => rows.push(cols.swap_remove(0)),
                Reply::Error { code, message } => return Err((code, message)),
                _ => {}
            }
        }
        Ok(rows)
    }

    /// The one value a simple query returns.
    pub async fn value(&mut self, sql: &str) -> String {
        match self.simple(sql).await {
            Ok(rows) => rows
                .into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| panic!("{sql}: no value")),
            Err(e) => panic!("{sql}: {e:?}"),
        }
    }

    pub async fn terminate(mut self) {
        messages::terminate(&mut self.out);
        let _ = self.flush().await;
    }
}

/// Replies with ParameterStatus removed: when a pooler reports a
/// parameter is allowed to differ from a direct connection.
pub fn without_status(replies: &[Reply]) -> Vec<Reply> {
    replies
        .iter()
        .filter(|r| !matches!(r, Reply::ParameterStatus(..)))
        .cloned()
        .collect()
}
