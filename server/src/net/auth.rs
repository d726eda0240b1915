//! Who may do what. A connection authenticates once, in its `Hello`: with a bearer token, or
//! with the client certificate it presented in the TLS handshake (mutual TLS). Either maps to
//! a role, and each request is checked against that role. A token, when given, decides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashstock_engine::Command;
use flashstock_protocol::{Request, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::error::RuntimeError;

/// Bearer tokens and client-certificate authorities, and the roles they grant.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, Role>,
    cert_roles: Option<Arc<ClientCertRoles>>,
}

/// Client-certificate authorities, one per role: a certificate issued by the admin CA grants
/// `Admin`, and so on. Which CA issued a certificate is decided by verifying the chain against
/// each, so no certificate field needs parsing.
pub struct ClientCertRoles {
    /// Trusts every configured CA; installed in the TLS handshake. Clients without a
    /// certificate are still let through, to authenticate with a token.
    handshake: Arc<dyn ClientCertVerifier>,
    by_role: Vec<(Role, Arc<dyn ClientCertVerifier>)>,
}

impl std::fmt::Debug for ClientCertRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<Role> = self.by_role.iter().map(|(role, _)| *role).collect();
        f.debug_struct("ClientCertRoles").field("roles", &roles).finish()
    }
}

impl ClientCertRoles {
    /// Loads a PEM CA file per role.
    pub fn load(cas: &[(Role, PathBuf)]) -> Result<ClientCertRoles, RuntimeError> {
        let mut all = RootCertStore::empty();
        let mut by_role = Vec::new();
        for (role, path) in cas {
            let error = |detail: String| RuntimeError::Tls { path: path.clone(), detail };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| error(err.to_string()))?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone()).map_err(|err| error(err.to_string()))?;
                all.add(cert).map_err(|err| error(err.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                crate::net::tls::provider(),
            )
            .build()
            .map_err(|err| error(err.to_string()))?;
            by_role.push((*role, verifier));
        }
        let handshake =
            WebPkiClientVerifier::builder_with_provider(Arc::new(all), crate::net::tls::provider())
                .allow_unauthenticated()
                .build()
                .map_err(|err| RuntimeError::Tls {
                    path: PathBuf::from("client CAs"),
                    detail: err.to_string(),
                })?;
        Ok(ClientCertRoles { handshake, by_role })
    }

    /// The verifier the TLS handshake uses.
    pub fn handshake_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.handshake.clone()
    }

    /// The role of the CA that issued `chain` (leaf first), if any.
    pub fn role_of(&self, chain: &[CertificateDer<'static>]) -> Option<Role> {
        let (leaf, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        self.by_role
            .iter()
            .find(|(_, verifier)| verifier.verify_client_cert(leaf, intermediates, now).is_ok())
            .map(|(role, _)| *role)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Authenticator").field("tokens", &self.tokens.len()).finish()
    }
}

impl Authenticator {
    /// An authenticator granting `role` to each token.
    pub fn new(tokens: impl IntoIterator<Item = (String, Role)>) -> Authenticator {
        Authenticator { tokens: tokens.into_iter().collect(), cert_roles: None }
    }

    /// Also grants roles to client certificates issued by these CAs.
    pub fn with_client_certs(mut self, roles: Arc<ClientCertRoles>) -> Authenticator {
        self.cert_roles = Some(roles);
        self
    }

    /// The role a `Hello`'s token grants, or else the client certificate of the handshake.
    /// A token that is given but unknown grants nothing, whatever the certificate.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        peer_chain: Option<&[CertificateDer<'static>]>,
    ) -> Option<Role> {
        if let Some(token) = token {
            return self.tokens.get(token).copied();
        }
        self.cert_roles.as_ref()?.role_of(peer_chain?)
    }

    /// The embedded default: an admin, a service and a consumer token in `<dir>/tokens.toml`,
    /// generated with the system's secure random source on first start and reused after (a
    /// file from before the consumer role gets a consumer token added).
    pub fn ensure_default(dir: &Path) -> Result<(Authenticator, std::path::PathBuf), RuntimeError> {
        let path = dir.join("tokens.toml");
        if !path.exists() {
            let admin = random_token()?;
            let service = random_token()?;
            let consumer = random_token()?;
            let text = format!(
                "# Bearer tokens of this flashstock server; keep this file private.\n\
                 admin = \"{admin}\"\nservice = \"{service}\"\nconsumer = \"{consumer}\"\n"
            );
            std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)).map_err(
                |err| RuntimeError::Config { path: path.clone(), detail: err.to_string() },
            )?;
            tracing::info!(path = %path.display(), "generated admin, service and consumer tokens");
        }
        let mut tokens = read_tokens_file(&path)?;
        if !tokens.iter().any(|(_, role)| *role == Role::Consumer) {
            let consumer = random_token()?;
            let line = format!("consumer = \"{consumer}\"\n");
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
            appended.map_err(|err| RuntimeError::Config {
                path: path.clone(),
                detail: err.to_string(),
            })?;
            tracing::info!(path = %path.display(), "added a consumer token");
            tokens.push((consumer, Role::Consumer));
        }
        Ok((Authenticator::new(tokens), path))
    }
}

/// Reads `role = "token"` lines (`admin`, `service`, `consumer`) from a tokens file.
pub fn read_tokens_file(path: &Path) -> Result<Vec<(String, Role)>, RuntimeError> {
    let error = |detail: String| RuntimeError::Config { path: path.to_path_buf(), detail };
    let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    let mut tokens = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((role, token)) = line.split_once('=') else {
            return Err(error(format!("not `role = \"token\"`: {line}")));
        };
        let role = match role.trim() {
            "admin" => Role::Admin,
            "service" => Role::Service,
            "consumer" => Role::Consumer,
            other => return Err(error(format!("unknown role {other:?}"))),
        };
        tokens.push((token.trim().trim_matches('"').to_owned(), role));
    }
    Ok(tokens)
}

fn random_token() -> Result<String, RuntimeError> {
    let mut bytes = [0u8; 24];
    crate::net::tls::provider().secure_random.fill(&mut bytes).map_err(|_| {
        RuntimeError::Config {
            path: "tokens.toml".into(),
            detail: "no secure random source".into(),
        }
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `role` may send `request`.
pub fn permits(role: Role, request: &Request) -> bool {
    let admin_only = matches!(
        request,
        Request::Apply(
            Command::SetStock { .. }
                | Command::AdjustStock { .. }
                | Command::SetBuyerLimit { .. }
                | Command::SetSaleWindow { .. }
        )
    );
    match role {
        Role::Admin => true,
        Role::Service => !admin_only,
        // The committed-deduction stream is its own message; no stock requests.
        Role::Consumer => false,
    }
}
