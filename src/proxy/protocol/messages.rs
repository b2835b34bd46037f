//! Builders for the messages pgcat writes itself, and parsers for the
//! few message bodies it has to look inside. Everything works on byte
//! buffers; nothing here does IO.

use bytes::{BufMut, BytesMut};

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Starts a message with a type byte; returns the offset to patch the
/// length at with [`finish`].
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Writes the length of the message started at `at`.
pub fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// ErrorResponse (or NoticeResponse for the notice severities) with the
/// fields clients display: severity, SQLSTATE and message.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let tag = match severity {
        Severity::Error | Severity::Fatal => b'E',
        Severity::Notice | Severity::Warning => b'N',
    };
    let at = begin(buf, tag);
    buf.put_u8(b'S');
    put_cstr(buf, severity.as_str().as_bytes());
    buf.put_u8(b'V');
    put_cstr(buf, severity.as_str().as_bytes());
    buf.put_u8(b'C');
    put_cstr(buf, code.as_bytes());
    buf.put_u8(b'M');
    put_cstr(buf, message.as_bytes());
    buf.put_u8(0);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_slice(&[b'Z', 0, 0, 0, 5, status]);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

pub fn auth_ok(buf: &mut BytesMut) {
    buf.put_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    buf.put_slice(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5]);
    buf.put_slice(&salt);
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, b'R');
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(11);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(12);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: i32, unknown: &[String]) {
    let at = begin(buf, b'v');
    buf.put_i32(newest_minor);
    buf.put_i32(unknown.len() as i32);
    for option in unknown {
        put_cstr(buf, option.as_bytes());
    }
    finish(buf, at);
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

pub fn sync(buf: &mut BytesMut) {
    buf.put_slice(&[b'S', 0, 0, 0, 4]);
}

pub fn terminate(buf: &mut BytesMut) {
    buf.put_slice(&[b'X', 0, 0, 0, 4]);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag.as_bytes());
    finish(buf, at);
}

/// RowDescription of columns given by name and type OID (text format).
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, i32, i16)]) {
    let at = begin(buf, b'T');
    buf.put_i16(columns.len() as i16);
    for (name, oid, size) in columns {
        put_cstr(buf, name.as_bytes());
        buf.put_i32(0);
        buf.put_i16(0);
        buf.put_i32(*oid);
        buf.put_i16(*size);
        buf.put_i32(-1);
        buf.put_i16(0);
    }
    finish(buf, at);
}

/// RowDescription of text columns.
pub fn row_description_text(buf: &mut BytesMut, names: &[&str]) {
    let columns: Vec<(&str, i32, i16)> = names.iter().map(|n| (*n, 25, -1)).collect();
    row_description(buf, &columns);
}

/// DataRow of text values (None for NULL).
pub fn data_row_text<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    let at = begin(buf, b'D');
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.as_ref().len() as i32);
                buf.put_slice(v.as_ref().as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}

pub fn parse_complete(buf: &mut BytesMut) {
    buf.put_slice(&[b'1', 0, 0, 0, 4]);
}

pub fn close_complete(buf: &mut BytesMut) {
    buf.put_slice(&[b'3', 0, 0, 0, 4]);
}

/// Parse with an explicit statement name, query and parameter type OIDs.
pub fn parse(buf: &mut BytesMut, name: &str, query: &[u8], param_types: &[u8]) {
    let at = begin(buf, b'P');
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, query);
    buf.put_slice(param_types);
    finish(buf, at);
}

/// Close of a prepared statement (`kind` b'S') or portal (b'P').
pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(buf, b'C');
    buf.put_u8(kind);
    put_cstr(buf, name.as_bytes());
    finish(buf, at);
}

pub fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(buf, k.as_bytes());
        put_cstr(buf, v.as_bytes());
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(SSL_REQUEST_CODE);
}

pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    let at = begin(buf, b'p');
    put_cstr(buf, password);
    finish(buf, at);
}

pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(buf, b'p');
    put_cstr(buf, mechanism.as_bytes());
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, b'p');
    buf.put_slice(data);
    finish(buf, at);
}

/// A body that is too short or lacks a terminator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// Splits a NUL-terminated string off the front of `buf`.
pub fn read_cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    let end = buf.iter().position(|&b| b == 0).ok_or(Malformed(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

pub fn read_i32<'a>(buf: &'a [u8], what: &'static str) -> Result<(i32, &'a [u8]), Malformed> {
    if buf.len() < 4 {
        return Err(Malformed(what));
    }
    Ok((
        i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
        &buf[4..],
    ))
}

/// What a client sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup {
        /// Minor protocol version the client asked for (0 for 3.0).
        minor: i32,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A protocol major version other than 3.
    Unsupported(i32),
}

/// Parses a complete startup-phase packet including its length word.
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, Malformed> {
    let (_len, rest) = read_i32(packet, "startup")?;
    let (code, rest) = read_i32(rest, "startup")?;
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let (pid, rest) = read_i32(rest, "CancelRequest")?;
            let (secret, _) = read_i32(rest, "CancelRequest")?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut rest = rest;
            loop {
                let (key, after) = read_cstr(rest, "startup")?;
                if key.is_empty() {
                    break;
                }
                let (value, after) = read_cstr(after, "startup")?;
                params.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
                rest = after;
            }
            Ok(StartupPacket::Startup {
                minor: code & 0xffff,
                params,
            })
        }
        other => Ok(StartupPacket::Unsupported(other)),
    }
}

/// The fields of an ErrorResponse or NoticeResponse body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Ok((value, after)) = read_cstr(after, "ErrorResponse") else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        rest = after;
    }
    fields
}

/// The name and value of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), Malformed> {
    let (name, rest) = read_cstr(body, "ParameterStatus")?;
    let (value, _) = read_cstr(rest, "ParameterStatus")?;
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The columns of a DataRow body, as text (None for NULL).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, Malformed> {
    if body.len() < 2 {
        return Err(Malformed("DataRow"));
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, after) = read_i32(rest, "DataRow")?;
        if len < 0 {
            cols.push(None);
            rest = after;
            continue;
        }
        let len = len as usize;
        if after.len() < len {
            return Err(Malformed("DataRow"));
        }
        cols.push(Some(String::from_utf8_lossy(&after[..len]).into_owned()));
        rest = &after[len..];
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_are_read_as_text() {
        let body = [0u8, 2, 0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            parse_data_row(&body).unwrap(),
            vec![Some("hi".to_string()), None]
        );
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err());
        assert!(parse_data_row(&[0]).is_err());
    }

    #[test]
    fn error_response_round_trip() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
        );
        assert_eq!(buf[0], b'E');
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let fields = parse_error_fields(&buf[5..]);
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.message, "password authentication failed");
    }

    #[test]
    fn startup_packet_parses_params() {
        let mut buf = BytesMut::new();
        startup(&mut buf, &[("user", "alice"), ("database", "app")]);
        match parse_startup(&buf).unwrap() {
            StartupPacket::Startup { minor, params } => {
                assert_eq!(minor, 0);
                assert_eq!(
                    params,
                    vec![
                        ("user".to_string(), "alice".to_string()),
                        ("database".to_string(), "app".to_string())
                    ]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn special_startup_codes() {
        let mut buf = BytesMut::new();
        cancel_request(&mut buf, 42, -7);
        assert_eq!(
            parse_startup(&buf).unwrap(),
            StartupPacket::Cancel {
                pid: 42,
                secret: -7
            }
        );
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_startup(&ssl).unwrap(), StartupPacket::SslRequest);
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse_startup(&gss).unwrap(), StartupPacket::GssEncRequest);
        let v2 = [0, 0, 0, 8, 0, 2, 0, 0];
        assert_eq!(
            parse_startup(&v2).unwrap(),
            StartupPacket::Unsupported(2 << 16)
        );
    }

    #[test]
    fn truncated_startup_is_malformed() {
        // Key without a value terminator.
        let mut buf = vec![0, 0, 0, 0];
        buf.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        buf.extend_from_slice(b"user\0alice");
        assert!(parse_startup(&buf).is_err());
        assert!(parse_startup(&[0, 0, 0, 6, 0, 3]).is_err());
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "TimeZone", "UTC");
        assert_eq!(
            parse_parameter_status(&buf[5..]).unwrap(),
            ("TimeZone".to_string(), "UTC".to_string())
        );
        assert!(parse_parameter_status(b"TimeZone\0UTC").is_err());
    }

    #[test]
    fn fixed_messages_have_correct_lengths() {
        for f in [sync, terminate, parse_complete, close_complete, auth_ok] {
            let mut buf = BytesMut::new();
            f(&mut buf);
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            assert_eq!(len + 1, buf.len());
        }
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, b'I');
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'I']);
    }
}
