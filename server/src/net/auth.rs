//! Who may do what. A connection authenticates once, in its `Hello`: with a bearer token, or
//! with the client certificate it presented in the TLS handshake (mutual TLS). Either maps to
//! a role, and each request is checked against that role. A token, when given, decides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashstock_protocol::session::Grant;
use flashstock_protocol::tokens::{parse_tokens, TokenEntry, DEFAULT_CONSUMER};
use flashstock_protocol::{Request, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::error::ServerError;

/// Bearer tokens and client-certificate authorities, and the roles they grant.
///
/// Tokens are kept as SHA-256 digests and a presented token is compared with every one of
/// them in constant time: neither the time taken nor an early exit tells a guesser how much of
/// a token was right, nor which role's token it came close to.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Vec<(TokenDigest, Grant)>,
    cert_roles: Option<Arc<ClientCertRoles>>,
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// A stable, non-secret id of a credential, for per-credential limits: 8 bytes of the SHA-256
/// of the token, else of the client certificate; 0 for neither.
pub fn credential_id(token: Option<&str>, certificate: Option<&[u8]>) -> u64 {
    let bytes = match (token, certificate) {
        (Some(token), _) => digest(token),
        (None, Some(der)) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, der);
            digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
        }
        (None, None) => return 0,
    };
    u64::from_le_bytes(bytes[..8].try_into().expect("8 of 32 bytes"))
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
    pub fn load(cas: &[(Role, PathBuf)]) -> Result<ClientCertRoles, ServerError> {
        let mut all = RootCertStore::empty();
        let mut by_role = Vec::new();
        for (role, path) in cas {
            let error = |detail: String| ServerError::Tls { path: path.clone(), detail };
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
                .map_err(|err| ServerError::Tls {
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
    /// An authenticator granting each entry's role (and consumer names) to its token.
    pub fn new(tokens: impl IntoIterator<Item = TokenEntry>) -> Authenticator {
        let tokens = tokens
            .into_iter()
            .map(|mut entry| {
                let digest = digest(&entry.token);
                // Only the digest is kept: the entry keeps its names, not its token.
                entry.token.clear();
                (digest, Grant { role: entry.role, consumers: Some(Arc::new(entry)) })
            })
            .collect();
        Authenticator { tokens, cert_roles: None }
    }

    /// Also grants roles to client certificates issued by these CAs.
    pub fn with_client_certs(mut self, roles: Arc<ClientCertRoles>) -> Authenticator {
        self.cert_roles = Some(roles);
        self
    }

    /// What a `Hello`'s token grants, or else the client certificate of the handshake.
    /// A token that is given but unknown grants nothing, whatever the certificate.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        peer_chain: Option<&[CertificateDer<'static>]>,
    ) -> Option<Grant> {
        if let Some(token) = token {
            return self.grant_of_token(token);
        }
        let role = self.cert_roles.as_ref()?.role_of(peer_chain?)?;
        Some(Grant { role, consumers: None })
    }

    /// Compares `token` with every known token, in constant time, without stopping early.
    fn grant_of_token(&self, token: &str) -> Option<Grant> {
        use subtle::ConstantTimeEq;
        let presented = digest(token);
        let mut found = None;
        for (known, grant) in &self.tokens {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(grant.clone());
            }
        }
        found
    }

    /// The embedded default: an admin, a service and an `order-writer` consumer token in
    /// `<dir>/tokens.toml`, generated with the system's secure random source on first start
    /// and reused after (a file from before the consumer role gets a consumer token added).
    pub fn ensure_default(dir: &Path) -> Result<(Authenticator, std::path::PathBuf), ServerError> {
        let path = dir.join("tokens.toml");
        if !path.exists() {
            let (admin, service, consumer) = (random_token()?, random_token()?, random_token()?);
            let text = format!(
                "# Bearer tokens of this flashstock server; keep this file private. A consumer\n\
                 # token acts for the consumer named after the dot only.\n\
                 admin = \"{admin}\"\nservice = \"{service}\"\n\
                 consumer.{DEFAULT_CONSUMER} = \"{consumer}\"\n"
            );
            crate::net::secrets::ensure_private_dir(dir)?;
            crate::net::secrets::write_private(&path, text.as_bytes())?;
            tracing::info!(path = %path.display(), "generated admin, service and consumer tokens");
        }
        let mut tokens = read_tokens_file(&path)?;
        if !tokens.iter().any(|entry| entry.role == Role::Consumer) {
            let consumer = random_token()?;
            let line = format!("consumer.{DEFAULT_CONSUMER} = \"{consumer}\"\n");
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
            appended.map_err(|err| ServerError::Config {
                path: path.clone(),
                detail: err.to_string(),
            })?;
            tracing::info!(path = %path.display(), "added a consumer token");
            let consumers = vec![DEFAULT_CONSUMER.to_owned()];
            tokens.push(TokenEntry { token: consumer, role: Role::Consumer, consumers });
        }
        Ok((Authenticator::new(tokens), path))
    }
}

/// Reads a tokens file (see [`flashstock_protocol::tokens`] for its format). An empty token,
/// or one listed twice, is refused: either would be a credential nobody meant to issue.
pub fn read_tokens_file(path: &Path) -> Result<Vec<TokenEntry>, ServerError> {
    let error = |detail: String| ServerError::Config { path: path.to_path_buf(), detail };
    crate::net::secrets::warn_if_readable_by_others(path);
    let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    parse_tokens(&text).map_err(|err| error(err.to_string()))
}

fn random_token() -> Result<String, ServerError> {
    let bytes = crate::net::secrets::random_bytes::<24>()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `role` may send `request`.
pub fn permits(role: Role, request: &Request) -> bool {
    let admin_only = matches!(request, Request::Apply(command) if command.is_admin());
    match role {
        Role::Admin => true,
        Role::Service => !admin_only,
        // The committed-deduction stream is its own message; no stock requests.
        Role::Consumer => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_secrets_are_readable_by_their_owner_only() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let (auth, path) = Authenticator::ensure_default(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "the data directory");
        assert_eq!(mode(&path), 0o600, "tokens.toml");
        let tls = crate::net::ensure_self_signed(&dir).unwrap();
        assert_eq!(mode(&tls.key_path), 0o600, "the TLS key");
        crate::net::secrets::endpoint_config(&dir).unwrap();
        assert_eq!(mode(&dir.join("reset-key")), 0o600, "the reset key");
        let tokens = read_tokens_file(&path).unwrap();
        assert_eq!(tokens.len(), 3);
        for entry in &tokens {
            let grant = auth.authenticate(Some(&entry.token), None).unwrap();
            assert_eq!(grant.role, entry.role);
        }
        let consumer = tokens.iter().find(|entry| entry.role == Role::Consumer).unwrap();
        let grant = auth.authenticate(Some(&consumer.token), None).unwrap();
        assert!(grant.may_act_for(DEFAULT_CONSUMER));
        assert!(!grant.may_act_for("someone-else"), "a consumer token acts for its name only");
    }

    #[test]
    fn empty_and_duplicate_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        for (text, says) in [
            ("admin = \"\"\n", "token is empty"),
            ("admin = \"abc\"\nservice = \"abc\"\n", "listed twice"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = read_tokens_file(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn only_a_whole_known_token_authenticates() {
        let entry = |token: &str, role| TokenEntry { token: token.into(), role, consumers: vec![] };
        let auth = Authenticator::new([
            entry("admin-token-0123", Role::Admin),
            entry("service-token-4567", Role::Service),
        ]);
        let role = |token| auth.authenticate(Some(token), None).map(|grant| grant.role);
        assert_eq!(role("admin-token-0123"), Some(Role::Admin));
        assert_eq!(role("service-token-4567"), Some(Role::Service));
        for wrong in ["admin-token-012", "admin-token-01234", "", "service-token-4568"] {
            assert_eq!(auth.authenticate(Some(wrong), None), None, "{wrong:?}");
        }
        assert_eq!(auth.authenticate(None, None), None);
    }
}

/// The credentials in force, shared by every connection and replaced whole by a reload: a
/// `Hello` is checked against the set in force when it arrives; connections already
/// authenticated keep their role.
#[derive(Clone, Debug)]
pub struct SharedAuth(Arc<std::sync::RwLock<Arc<Authenticator>>>);

impl SharedAuth {
    /// The set in force now.
    pub fn current(&self) -> Arc<Authenticator> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Puts `auth` in force for every `Hello` from now on.
    pub fn replace(&self, auth: Authenticator) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(auth);
    }
}

impl From<Authenticator> for SharedAuth {
    fn from(auth: Authenticator) -> SharedAuth {
        SharedAuth(Arc::new(std::sync::RwLock::new(Arc::new(auth))))
    }
}

impl Authenticator {
    /// Whether any credential could authenticate at all (a token, or a client CA).
    pub fn admits_anyone(&self) -> bool {
        !self.tokens.is_empty() || self.cert_roles.is_some()
    }
}
