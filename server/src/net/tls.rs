//! TLS for the QUIC listener: TLS 1.3 only, ring as the one crypto provider (chosen explicitly,
//! so no process-wide default is ever needed), ALPN `flashstock/1`.
//!
//! The embedded default is a self-signed certificate for `localhost` and `127.0.0.1`, generated
//! on first start in `<data dir>/tls/` and reused after; clients trust that file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// Where a server's certificate chain and key live.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
}

/// The crypto provider every TLS config here is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The self-signed certificate in `<dir>/tls/`, generated if absent.
pub fn ensure_self_signed(dir: &Path) -> Result<TlsFiles, ServerError> {
    let tls_dir = dir.join("tls");
    let files = TlsFiles { cert_path: tls_dir.join("cert.pem"), key_path: tls_dir.join("key.pem") };
    if files.cert_path.exists() && files.key_path.exists() {
        crate::net::secrets::warn_if_readable_by_others(&files.key_path);
        return Ok(files);
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    crate::net::secrets::ensure_private_dir(dir)?;
    crate::net::secrets::ensure_private_dir(&tls_dir)?;
    crate::net::secrets::write_private(
        &files.key_path,
        generated.signing_key.serialize_pem().as_bytes(),
    )?;
    std::fs::write(&files.cert_path, generated.cert.pem())
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    tracing::info!(
        cert = %files.cert_path.display(),
        "generated a self-signed TLS certificate; clients must trust this file"
    );
    Ok(files)
}

/// Limits the QUIC transport enforces per connection from its first packet. What a connection
/// may do once authenticated (more streams, a larger receive window) the session grants after
/// `Welcome`; see [`crate::net::NetLimits`].
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    /// A connection silent this long is closed.
    pub idle_timeout_ms: u64,
    /// Bytes a peer may send on one stream beyond what the server has read.
    pub stream_receive_window_bytes: u32,
}

/// Bytes a connection may send before it is authenticated: one `Hello` frame. QUIC's
/// connection-level flow control enforces it, so an unauthenticated peer cannot make quinn
/// buffer more, however many bytes or streams it tries.
pub const UNAUTHENTICATED_RECEIVE_WINDOW_BYTES: u32 =
    flashstock_protocol::HEADER_BYTES as u32 + flashstock_protocol::HELLO_BYTES_MAX;

/// Bytes of stream data a connection's sends may have in flight and unacknowledged: what a
/// client that stops reading can make QUIC hold for it, besides the replies of its own
/// requests in flight (see `NetLimits::in_flight_max`).
pub const SEND_WINDOW_BYTES: u64 = 8 << 20;

/// Default of [`TransportLimits::stream_receive_window_bytes`]: one whole default-sized frame
/// can be in flight on a stream while the previous one is decoded.
pub const STREAM_RECEIVE_WINDOW_BYTES_DEFAULT: u32 = 2 << 20;

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            idle_timeout_ms: 30_000,
            stream_receive_window_bytes: STREAM_RECEIVE_WINDOW_BYTES_DEFAULT,
        }
    }
}

/// The quinn server configuration: the certificate, TLS 1.3 only, the ALPN, the limits, and
/// client certificates verified against `client_certs`' authorities when given.
pub fn server_config(
    files: &TlsFiles,
    limits: TransportLimits,
    client_certs: Option<&crate::net::auth::ClientCertRoles>,
) -> Result<quinn::ServerConfig, ServerError> {
    let certs = CertificateDer::pem_file_iter(&files.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|err| tls_error(&files.key_path, err.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    let builder = match client_certs {
        Some(roles) => builder.with_client_cert_verifier(roles.handshake_verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    tls.alpn_protocols = vec![flashstock_protocol::ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|err| tls_error(&files.cert_path, err.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Until `Welcome`: one stream, and one Hello's worth of bytes on it (the session raises
    // both once the peer has authenticated).
    transport.max_concurrent_bidi_streams(1u8.into());
    transport.max_concurrent_uni_streams(0u8.into());
    transport.receive_window(UNAUTHENTICATED_RECEIVE_WINDOW_BYTES.into());
    transport.stream_receive_window(limits.stream_receive_window_bytes.into());
    transport.send_window(SEND_WINDOW_BYTES);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    transport.max_idle_timeout(Some(idle.try_into().map_err(|_| {
        tls_error(&files.cert_path, format!("idle timeout {idle:?} out of range"))
    })?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn tls_error(path: &Path, detail: String) -> ServerError {
    ServerError::Tls { path: path.to_path_buf(), detail }
}
