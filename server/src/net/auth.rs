//! Who may do what. A connection authenticates once, in its `Hello`, with a bearer token; the
//! token maps to a role, and each request is checked against that role.

use std::collections::HashMap;
use std::path::Path;

use flashstock_engine::Command;
use flashstock_protocol::{Request, Role};

use crate::error::RuntimeError;

/// Bearer tokens and the roles they grant.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, Role>,
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
        Authenticator { tokens: tokens.into_iter().collect() }
    }

    /// The role a `Hello`'s token grants, if any.
    pub fn authenticate(&self, token: Option<&str>) -> Option<Role> {
        token.and_then(|token| self.tokens.get(token).copied())
    }

    /// The embedded default: an admin and a service token in `<dir>/tokens.toml`, generated
    /// with the system's secure random source on first start and reused after.
    pub fn ensure_default(dir: &Path) -> Result<(Authenticator, std::path::PathBuf), RuntimeError> {
        let path = dir.join("tokens.toml");
        if !path.exists() {
            let admin = random_token()?;
            let service = random_token()?;
            let text = format!(
                "# Bearer tokens of this flashstock server; keep this file private.\n\
                 admin = \"{admin}\"\nservice = \"{service}\"\n"
            );
            std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)).map_err(
                |err| RuntimeError::Config { path: path.clone(), detail: err.to_string() },
            )?;
            tracing::info!(path = %path.display(), "generated admin and service tokens");
        }
        let tokens = read_tokens_file(&path)?;
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
