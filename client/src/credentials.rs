//! Finding a token in a server's tokens file, for tools that run beside the server (the order
//! writer, the load generator, the examples). The format is `flashstock_protocol::tokens`'s.

use std::path::Path;

use flashstock_protocol::tokens::{parse_tokens, token_for};
use flashstock_protocol::Role;

use crate::error::ClientError;

/// The token of `role` in the tokens file at `path`; for a consumer, the one that may act for
/// `consumer`.
pub fn token_from_file(
    path: &Path,
    role: Role,
    consumer: Option<&str>,
) -> Result<String, ClientError> {
    let setup = |detail: String| ClientError::Setup(format!("{}: {detail}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|err| setup(err.to_string()))?;
    let entries = parse_tokens(&text).map_err(|err| setup(err.to_string()))?;
    let token = token_for(&entries, role, consumer).ok_or_else(|| match consumer {
        Some(name) => setup(format!("no {role:?} token for consumer {name:?}")),
        None => setup(format!("no {role:?} token")),
    })?;
    Ok(token.to_owned())
}

/// What a server's data directory holds for the tools that run beside it: its certificate
/// (`tls/cert.pem`) and its tokens file (`tokens.toml`). Every tool reads them through this,
/// so the layout is written down once.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// The server's data directory.
    pub data_dir: std::path::PathBuf,
}

impl ServerFiles {
    /// The files of the server whose data directory is `data_dir`.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> ServerFiles {
        ServerFiles { data_dir: data_dir.into() }
    }

    /// Where the server's self-signed certificate is.
    pub fn cert_path(&self) -> std::path::PathBuf {
        self.data_dir.join("tls/cert.pem")
    }

    /// Where the server's tokens file is.
    pub fn tokens_path(&self) -> std::path::PathBuf {
        self.data_dir.join("tokens.toml")
    }

    /// TLS trusting `cert` if given, else the data directory's certificate.
    pub fn tls(&self, cert: Option<&Path>) -> Result<crate::ClientTls, ClientError> {
        let path = cert.map_or_else(|| self.cert_path(), Path::to_path_buf);
        crate::ClientTls::trust_pem_file(&path)
    }

    /// `given` if set, else the data directory's token for `role` (and `consumer`).
    pub fn token(
        &self,
        given: Option<&str>,
        role: Role,
        consumer: Option<&str>,
    ) -> Result<String, ClientError> {
        match given {
            Some(token) => Ok(token.to_owned()),
            None => token_from_file(&self.tokens_path(), role, consumer),
        }
    }
}
