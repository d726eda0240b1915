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
