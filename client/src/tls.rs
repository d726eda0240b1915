//! Which server certificates the client trusts.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ClientError;

/// The client's TLS trust: TLS 1.3 only, ring as the one crypto provider.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: quinn::ClientConfig,
}

impl ClientTls {
    /// Trusts the certificates (or CA) in a PEM file, such as the server's self-signed
    /// `<data dir>/tls/cert.pem`.
    pub fn trust_pem_file(path: &Path) -> Result<ClientTls, ClientError> {
        let tls = builder()?.with_root_certificates(roots(path)?).with_no_client_auth();
        ClientTls::from_rustls(tls)
    }

    /// Like [`ClientTls::trust_pem_file`], and presents a client certificate (mutual TLS): the
    /// server grants the role of the CA that issued it.
    pub fn trust_pem_file_with_identity(
        trust: &Path,
        cert_chain: &Path,
        key: &Path,
    ) -> Result<ClientTls, ClientError> {
        let setup = |path: &Path, err: &dyn std::fmt::Display| {
            ClientError::Setup(format!("{}: {err}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert_chain)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| setup(cert_chain, &err))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|err| setup(key, &err))?;
        let tls = builder()?
            .with_root_certificates(roots(trust)?)
            .with_client_auth_cert(chain, key)
            .map_err(|err| setup(cert_chain, &err))?;
        ClientTls::from_rustls(tls)
    }

    /// Accepts ANY server certificate: no protection against an impostor. For local tests
    /// only; never in production.
    pub fn dangerous_accept_any_certificate_for_local_testing() -> ClientTls {
        tracing::warn!("TLS server verification is OFF (dangerous_accept_any_certificate...)");
        let tls = builder()
            .expect("TLS 1.3 with ring")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
        ClientTls::from_rustls(tls).expect("a TLS 1.3 config suits QUIC")
    }

    fn from_rustls(mut tls: rustls::ClientConfig) -> Result<ClientTls, ClientError> {
        tls.alpn_protocols = vec![flashstock_protocol::ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // Pings keep a quiet connection open: without them an order service idle for longer
        // than the server's idle timeout (30 s by default) found its connection closed, and a
        // long load-generator run lost its admin connection before the audit. Their acks are
        // also what `connection::watch` listens for to tell a live server from a dead one.
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
        // quinn's default (333 ms, for the open internet) makes the first retransmission of a
        // handshake wait ~1 s; servers here are a data centre away at most.
        transport.initial_rtt(INITIAL_RTT);
        config.transport_config(Arc::new(transport));
        Ok(ClientTls { config })
    }

    /// The quinn configuration.
    pub fn quinn_config(&self) -> quinn::ClientConfig {
        self.config.clone()
    }
}

/// Well under any idle timeout a server would set, and a quarter of
/// [`crate::connection::SILENCE_MAX`]: a live server acknowledges several pings before the
/// client would give up on it. Four tiny packets a second per idle connection.
pub(crate) const KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// The round trip assumed before one is measured.
const INITIAL_RTT: std::time::Duration = std::time::Duration::from_millis(50);

fn roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| ClientError::Setup(format!("{}: {err}", path.display())))?;
    for cert in certs {
        roots.add(cert).map_err(|err| ClientError::Setup(err.to_string()))?;
    }
    Ok(roots)
}

fn builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| ClientError::Setup(err.to_string()))
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
