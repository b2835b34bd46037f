//! TLS with rustls (ring): towards clients (pgcat is the TLS server) and
//! towards PostgreSQL (pgcat is the TLS client), and the certificate files
//! behind both, re-read on every reload.
//!
//! Reloading certificates swaps the rustls configs in `TlsState`: new
//! handshakes use the new files, established connections keep what they
//! negotiated, and no pool is rebuilt. A file that fails to load keeps the
//! previous config in place and the error names the file.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// ALPN protocol name PostgreSQL 17 requires for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A socket that may carry TLS. The session and server code read and
/// write through AsyncRead/AsyncWrite and reach the TCP socket underneath
/// for socket options and readiness.
pub enum Stream {
    Plain(TcpStream),
    /// A client connection; pgcat is the TLS server.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A server connection; pgcat is the TLS client.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while a handshake owns the socket (and after it failed or
    /// was cancelled): reads and writes fail.
    Closed,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Plain(_) => f.write_str("Stream::Plain"),
            Stream::Accepted(_) => f.write_str("Stream::Accepted(tls)"),
            Stream::Connected(_) => f.write_str("Stream::Connected(tls)"),
            Stream::Closed => f.write_str("Stream::Closed"),
        }
    }
}

impl Stream {
    /// The TCP socket underneath. Panics on `Closed`, which no caller
    /// sees: a handshake either puts a stream back or ends the connection.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Accepted(s) => s.get_ref().0,
            Stream::Connected(s) => s.get_ref().0,
            Stream::Closed => panic!("socket used while a TLS handshake owns it"),
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self, Stream::Closed)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Accepted(_) | Stream::Connected(_))
    }

    /// The negotiated protocol version and cipher, for SHOW output.
    pub fn tls_description(&self) -> Option<String> {
        let (version, suite) = match self {
            Stream::Plain(_) | Stream::Closed => return None,
            Stream::Accepted(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            Stream::Connected(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
        };
        Some(format!(
            "{}/{}",
            version.map(|v| format!("{v:?}")).unwrap_or_default(),
            suite
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default()
        ))
    }

    /// Whether a read would make progress without the socket: with TLS,
    /// decrypted bytes (or the peer's close) may already wait inside
    /// rustls while the socket is quiet. Callers that wait for a quiet
    /// client check this before the socket's readiness.
    pub fn has_buffered(&mut self) -> bool {
        let state = match self {
            Stream::Plain(_) => return false,
            Stream::Closed => return true,
            Stream::Accepted(s) => s.get_mut().1.process_new_packets(),
            Stream::Connected(s) => s.get_mut().1.process_new_packets(),
        };
        state
            .map(|st| st.plaintext_bytes_to_read() > 0 || st.peer_has_closed())
            .unwrap_or(true)
    }

    /// Waits until a read would make progress.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.has_buffered() {
            return Ok(());
        }
        self.tcp().readable().await
    }

    /// Best-effort synchronous write of a last message (Terminate) before
    /// the socket is dropped; with TLS also a close_notify.
    pub fn try_write_last(&mut self, data: &[u8]) {
        match self {
            Stream::Closed => {}
            Stream::Plain(s) => {
                let _ = s.try_write(data);
            }
            Stream::Accepted(s) => {
                let (tcp, conn) = s.get_mut();
                write_last(tcp, conn, data);
            }
            Stream::Connected(s) => {
                let (tcp, conn) = s.get_mut();
                write_last(tcp, conn, data);
            }
        }
    }
}

/// Queues `data` and a close_notify in a TLS session and writes what the
/// socket takes now.
fn write_last<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>, data: &[u8]) {
    use std::io::Write;
    let _ = conn.writer().write_all(data);
    conn.send_close_notify();
    let mut w = TryWriter(tcp);
    while conn.wants_write() {
        if !matches!(conn.write_tls(&mut w), Ok(n) if n > 0) {
            break;
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection closed during TLS handshake",
    )
}

/// Writes to a non-blocking socket without waiting.
struct TryWriter<'a>(&'a TcpStream);

impl io::Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Connected(s) => s.is_write_vectored(),
            Stream::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

/// PgBouncer's `client_tls_sslmode`, for the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientSslMode {
    /// SSLRequest answered `N`.
    Disable,
    /// TLS when the client asks for it, plaintext otherwise.
    Allow,
    /// The same as `allow` on the accepting side.
    Prefer,
    /// Plaintext clients are refused.
    Require,
}

/// PgBouncer's `server_tls_sslmode` (libpq's sslmode), towards PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSslMode {
    Disable,
    /// Treated as `prefer`: pgcat does not retry with TLS after a refusal.
    Allow,
    /// TLS when the server offers it, unverified (unless a CA file is set,
    /// as libpq does with a root certificate present).
    Prefer,
    /// TLS or no connection; unverified unless a CA file is set.
    Require,
    /// TLS, certificate chain verified, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl ServerSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSslMode::Disable => "disable",
            ServerSslMode::Allow => "allow",
            ServerSslMode::Prefer => "prefer",
            ServerSslMode::Require => "require",
            ServerSslMode::VerifyCa => "verify-ca",
            ServerSslMode::VerifyFull => "verify-full",
        }
    }
}

impl ClientSslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientSslMode::Disable => "disable",
            ClientSslMode::Allow => "allow",
            ClientSslMode::Prefer => "prefer",
            ClientSslMode::Require => "require",
        }
    }
}

/// What the TLS configs are built from (the config's `[general]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub certificate: Option<String>,
    pub private_key: Option<String>,
    pub client_mode: ClientSslMode,
    pub server_ca_file: Option<String>,
    pub server_cert_file: Option<String>,
    pub server_key_file: Option<String>,
    pub server_mode: ServerSslMode,
}

/// A certificate file as loaded, for SHOW, /metrics and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `tls_certificate`, `server_tls_cert_file` or `server_tls_ca_file`.
    pub key: &'static str,
    pub path: String,
    pub subject: String,
    /// End of validity of the first certificate in the file (seconds since
    /// the epoch).
    pub not_after: i64,
}

/// What accepting TLS clients needs.
pub struct Acceptor {
    pub config: Arc<rustls::ServerConfig>,
    pub mode: ClientSslMode,
    pub certificate: CertInfo,
    /// `tls-server-end-point` channel binding data: the hash of our
    /// certificate (RFC 5929: SHA-256 unless it is signed with a stronger
    /// hash).
    pub end_point: Vec<u8>,
}

/// What connecting to PostgreSQL over TLS needs.
pub struct Connector {
    pub config: Arc<rustls::ClientConfig>,
    pub mode: ServerSslMode,
    /// The CA bundle and client certificate, when configured.
    pub files: Vec<CertInfo>,
}

/// The TLS configs in force, swapped whole on reload.
#[derive(Default)]
pub struct TlsState {
    pub acceptor: ArcSwapOption<Acceptor>,
    pub connector: ArcSwapOption<Connector>,
    /// The files loaded last, to skip re-reading unchanged ones.
    loaded: parking_lot::Mutex<Option<Files>>,
}

/// Paths and contents that determine both configs.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    names: Vec<Option<String>>,
    contents: Vec<Option<Vec<u8>>>,
    client_mode: ClientSslMode,
    server_mode: ServerSslMode,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS error that names the file and key it concerns.
fn file_error(key: &str, path: &str, e: impl std::fmt::Display) -> String {
    format!("{key} \"{path}\": {e}")
}

fn read_file(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| file_error(key, path, e))
}

fn parse_certs(key: &str, path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(key, path, format!("not a PEM certificate file ({e:?})")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn parse_key(key: &str, path: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| file_error(key, path, format!("no private key in the file ({e:?})")))
}

fn cert_info(key: &'static str, path: &str, der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| file_error(key, path, format!("unreadable certificate: {e}")))?;
    Ok(CertInfo {
        key,
        path: path.to_string(),
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// RFC 5929 section 4.1: hash the certificate with its signature's hash
/// function, SHA-256 when that is MD5 or SHA-1.
pub fn end_point_hash(der: &[u8]) -> Vec<u8> {
    let oid = x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(der).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(der).to_vec(),
        _ => sha2::Sha256::digest(der).to_vec(),
    }
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("accepting", &self.acceptor.load().is_some())
            .field("connecting", &self.connector.load().is_some())
            .finish()
    }
}

impl TlsState {
    /// Loads (or re-loads) the certificate files `general` names. On error
    /// the previous configs stay in force and the message names the file.
    /// Returns whether anything changed.
    pub fn load(&self, settings: &TlsSettings) -> Result<bool, String> {
        let names = vec![
            settings.certificate.clone(),
            settings.private_key.clone(),
            settings.server_ca_file.clone(),
            settings.server_cert_file.clone(),
            settings.server_key_file.clone(),
        ];
        let keys = [
            "tls_certificate",
            "tls_private_key",
            "server_tls_ca_file",
            "server_tls_cert_file",
            "server_tls_key_file",
        ];
        let mut contents = Vec::new();
        for (key, name) in keys.iter().zip(&names) {
            contents.push(match name {
                Some(path) => Some(read_file(key, path)?),
                None => None,
            });
        }
        let files = Files {
            names,
            contents,
            client_mode: settings.client_mode,
            server_mode: settings.server_mode,
        };
        if self.loaded.lock().as_ref() == Some(&files) {
            return Ok(false);
        }
        let acceptor = build_acceptor(&files)?;
        let connector = build_connector(&files)?;
        self.acceptor.store(acceptor.map(Arc::new));
        self.connector.store(connector.map(Arc::new));
        *self.loaded.lock() = Some(files);
        Ok(true)
    }

    /// Every certificate file in force, for SHOW and /metrics.
    pub fn certificates(&self) -> Vec<CertInfo> {
        let mut out = Vec::new();
        if let Some(a) = self.acceptor.load().as_ref() {
            out.push(a.certificate.clone());
        }
        if let Some(c) = self.connector.load().as_ref() {
            out.extend(c.files.iter().cloned());
        }
        out
    }
}

fn build_acceptor(files: &Files) -> Result<Option<Acceptor>, String> {
    let (Some(cert_path), Some(cert_pem)) = (&files.names[0], &files.contents[0]) else {
        return Ok(None);
    };
    if files.client_mode == ClientSslMode::Disable {
        return Ok(None);
    }
    let (Some(key_path), Some(key_pem)) = (&files.names[1], &files.contents[1]) else {
        return Err(file_error(
            "tls_private_key",
            "",
            "tls_certificate is set but tls_private_key is not",
        ));
    };
    let certs = parse_certs("tls_certificate", cert_path, cert_pem)?;
    let key = parse_key("tls_private_key", key_path, key_pem)?;
    let certificate = cert_info("tls_certificate", cert_path, &certs[0])?;
    let end_point = end_point_hash(certs[0].as_ref());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| file_error("tls_private_key", key_path, e))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Acceptor {
        config: Arc::new(config),
        mode: files.client_mode,
        certificate,
        end_point,
    }))
}

fn build_connector(files: &Files) -> Result<Option<Connector>, String> {
    let mode = files.server_mode;
    if mode == ServerSslMode::Disable {
        return Ok(None);
    }
    let mut info = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    let have_ca = if let (Some(path), Some(pem)) = (&files.names[2], &files.contents[2]) {
        let certs = parse_certs("server_tls_ca_file", path, pem)?;
        info.push(cert_info("server_tls_ca_file", path, &certs[0])?);
        for c in certs {
            roots
                .add(c)
                .map_err(|e| file_error("server_tls_ca_file", path, e))?;
        }
        true
    } else {
        false
    };
    let verify = match mode {
        ServerSslMode::VerifyCa | ServerSslMode::VerifyFull => true,
        _ => have_ca,
    };
    if verify && !have_ca {
        // PgCat trusts the public roots; so do we when no CA file is set.
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if verify {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| format!("server_tls_ca_file: {e}"))?;
        let check_name = mode == ServerSslMode::VerifyFull;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                inner: webpki,
                check_name,
            }))
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    };
    let config = match (&files.names[3], &files.contents[3]) {
        (Some(cert_path), Some(cert_pem)) => {
            let (Some(key_path), Some(key_pem)) = (&files.names[4], &files.contents[4]) else {
                return Err(file_error(
                    "server_tls_key_file",
                    "",
                    "server_tls_cert_file is set but server_tls_key_file is not",
                ));
            };
            let certs = parse_certs("server_tls_cert_file", cert_path, cert_pem)?;
            info.push(cert_info("server_tls_cert_file", cert_path, &certs[0])?);
            let key = parse_key("server_tls_key_file", key_path, key_pem)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| file_error("server_tls_key_file", key_path, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Connector {
        config: Arc::new(config),
        mode,
        files: info,
    }))
}

/// Chain verification with the host name check optional (verify-ca).
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA: encryption without authentication, as
/// libpq does. Signatures are still checked, so the handshake is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS connection to PostgreSQL could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server does not support SSL, but server_tls_sslmode is {0}")]
    Refused(&'static str),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("invalid server name for TLS: {0}")]
    Name(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Asks PostgreSQL for TLS on a fresh socket (SSLRequest) and performs the
/// handshake when it agrees. `prefer` falls back to plaintext on `N`.
pub async fn connect(
    mut tcp: TcpStream,
    host: &str,
    connector: Option<&Connector>,
) -> Result<Stream, ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(connector) = connector else {
        return Ok(Stream::Plain(tcp));
    };
    let mut request = bytes::BytesMut::with_capacity(8);
    super::protocol::messages::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' => {
            return match connector.mode {
                ServerSslMode::Allow | ServerSslMode::Prefer => Ok(Stream::Plain(tcp)),
                m => Err(ConnectError::Refused(m.as_str())),
            }
        }
        other => {
            return Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer {:?} to SSLRequest", other as char),
            )))
        }
    }
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| ConnectError::Name(host.into()))?;
    let tls = tokio_rustls::TlsConnector::from(connector.config.clone())
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Handshake)?;
    Ok(Stream::Connected(Box::new(tls)))
}
