//! The data directory's secrets: the TLS key, the tokens file and the QUIC stateless-reset
//! key. Each is created readable by its owner only (the directory 0700, files 0600), from the
//! system's secure random source, and a secret file others can read is warned about.

use std::path::Path;

use crate::error::ServerError;

/// Bytes of the stateless-reset key.
const RESET_KEY_BYTES: usize = 32;

/// Creates `dir` (and its parents) if missing, the directory itself owner-only; an existing
/// directory that others may enter is left alone but warned about.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let error = |err: std::io::Error| config_error(dir, err.to_string());
    if dir.is_dir() {
        let mode = std::fs::metadata(dir).map_err(error)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777),
                "the data directory holds secrets but others may read it; chmod 700 it");
        }
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(error)
}

/// Writes a new file readable and writable by its owner only; refuses to overwrite one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |err: std::io::Error| config_error(path, err.to_string());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(error)
}

/// Warns when a secret file (one the operator supplied, or an old one) is readable by others.
pub fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                "a secret file is readable by others; chmod 600 it");
        }
    }
}

/// `N` bytes from the system's secure random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut bytes = [0u8; N];
    crate::net::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| config_error(Path::new("secure random"), "no secure random source".into()))?;
    Ok(bytes)
}

/// The QUIC endpoint's configuration, keyed from `<dir>/reset-key` (created on first start) so
/// that a restarted server resets its predecessor's connections at their next packet: their
/// clients learn at once that the connection is gone instead of waiting out the idle timeout.
/// Two things must survive the restart for that: the key stateless-reset tokens are derived
/// from, and the key connection ids are signed with (quinn drops packets whose connection id
/// another key signed without answering them).
pub fn endpoint_config(dir: &Path) -> Result<quinn::EndpointConfig, ServerError> {
    let path = dir.join("reset-key");
    if !path.exists() {
        ensure_private_dir(dir)?;
        write_private(&path, &random_bytes::<RESET_KEY_BYTES>()?)?;
    }
    warn_if_readable_by_others(&path);
    let bytes = std::fs::read(&path).map_err(|err| config_error(&path, err.to_string()))?;
    if bytes.len() != RESET_KEY_BYTES {
        let detail = format!("holds {} bytes, not {RESET_KEY_BYTES}", bytes.len());
        return Err(config_error(&path, detail));
    }
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
    // The connection-id key is derived, so the one file holds both.
    let cid_tag = ring::hmac::sign(&reset_key, b"flashstock connection ids");
    let cid_key = u64::from_le_bytes(cid_tag.as_ref()[..8].try_into().expect("8 bytes"));
    let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    Ok(config)
}

fn config_error(path: &Path, detail: String) -> ServerError {
    ServerError::Config { path: path.to_path_buf(), detail }
}
