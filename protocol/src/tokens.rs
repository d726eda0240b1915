//! The tokens file's format, parsed without IO: the server reads it to authenticate, and the
//! tools (order writer, load generator, admin CLI) read it to find a token of the role they
//! need. One parser, so they never disagree.
//!
//! ```text
//! # comment
//! admin = "..."
//! service = "..."
//! consumer.order-writer = "..."   # a consumer token acts for the named consumer only
//! consumer.* = "..."              # ...or, said explicitly, for any consumer
//! ```
//!
//! A token may stand under several `consumer.NAME` lines (it then acts for each of those
//! names); any other repetition of a token, an empty token, or one with spaces or control
//! characters is refused. The bare `consumer = "..."` of older files acts for
//! [`DEFAULT_CONSUMER`] only.

use crate::message::Role;

/// The consumer name the order writer uses by default, and the one a bare `consumer` line
/// grants.
pub const DEFAULT_CONSUMER: &str = "order-writer";

/// One credential of a tokens file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    /// The bearer token.
    pub token: String,
    /// The role it grants.
    pub role: Role,
    /// For a consumer token, the consumer names it may subscribe and acknowledge as
    /// ([`ANY_CONSUMER`] for all).
    pub consumers: Vec<String>,
}

impl TokenEntry {
    /// Whether this entry lets its holder act for `consumer`.
    pub fn acts_for(&self, consumer: &str) -> bool {
        self.role == Role::Consumer
            && self.consumers.iter().any(|name| name == consumer || name == ANY_CONSUMER)
    }
}

/// Why a tokens file was refused: the line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {detail}")]
pub struct TokensError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub detail: String,
}

/// The consumer "name" that grants every name.
pub const ANY_CONSUMER: &str = "*";

/// The longest consumer name.
pub const CONSUMER_NAME_BYTES_MAX: usize = 64;

/// Whether `name` is a valid consumer name: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn is_valid_consumer_name(name: &str) -> bool {
    (1..=CONSUMER_NAME_BYTES_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses a tokens file's text.
pub fn parse_tokens(text: &str) -> Result<Vec<TokenEntry>, TokensError> {
    let mut entries: Vec<TokenEntry> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |detail: String| TokensError { line: index + 1, detail };
        let Some((key, token)) = line.split_once('=') else {
            return Err(error("not `role = \"token\"`".to_owned()));
        };
        let (role, consumer) = match key.trim().split_once('.') {
            Some(("consumer", name)) => (Role::Consumer, Some(name.trim())),
            Some(_) => return Err(error(format!("unknown key {:?}", key.trim()))),
            None => match key.trim() {
                "admin" => (Role::Admin, None),
                "service" => (Role::Service, None),
                "consumer" => (Role::Consumer, Some(DEFAULT_CONSUMER)),
                other => return Err(error(format!("unknown role {other:?}"))),
            },
        };
        let token = match quoted(token.trim()) {
            Some(token) => token,
            None => return Err(error("a token is a quoted string".to_owned())),
        };
        if token.is_empty() {
            return Err(error(format!("the {role:?} token is empty")));
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(error(format!("the {role:?} token has spaces or control characters")));
        }
        if let Some(name) =
            consumer.filter(|name| *name != ANY_CONSUMER && !is_valid_consumer_name(name))
        {
            return Err(error(format!("{name:?} is not a consumer name (1-64 of A-Za-z0-9_-.)")));
        }
        match entries.iter_mut().find(|entry| entry.token == token) {
            Some(entry) if entry.role == Role::Consumer && role == Role::Consumer => {
                entry.consumers.extend(consumer.map(str::to_owned));
            }
            Some(_) => return Err(error("a token is listed twice".to_owned())),
            None => entries.push(TokenEntry {
                token: token.to_owned(),
                role,
                consumers: consumer.map(str::to_owned).into_iter().collect(),
            }),
        }
    }
    Ok(entries)
}

/// The text between the quotes of `"..."`, optionally followed by a `#` comment.
fn quoted(value: &str) -> Option<&str> {
    let (inside, rest) = value.strip_prefix('"')?.split_once('"')?;
    let rest = rest.trim();
    (rest.is_empty() || rest.starts_with('#')).then_some(inside)
}

/// The token a tool acting as `role` should use: for a consumer, the one granted `consumer`.
pub fn token_for<'a>(
    entries: &'a [TokenEntry],
    role: Role,
    consumer: Option<&str>,
) -> Option<&'a str> {
    entries
        .iter()
        .find(|entry| entry.role == role && consumer.is_none_or(|name| entry.acts_for(name)))
        .map(|entry| entry.token.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_consumer_names_and_comments() {
        let text = "# tokens\nadmin = \"a1\"\nservice = \"s1\"  # ours\n\
                    consumer.order-writer = \"c1\"\nconsumer.audit = \"c1\"\nconsumer = \"c2\"\n\
                    consumer.* = \"c3\"\n";
        let entries = parse_tokens(text).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(token_for(&entries, Role::Admin, None), Some("a1"));
        assert_eq!(token_for(&entries, Role::Service, None), Some("s1"));
        assert_eq!(entries[2].consumers, ["order-writer", "audit"]);
        assert_eq!(token_for(&entries, Role::Consumer, Some("audit")), Some("c1"));
        assert_eq!(entries[3].consumers, [DEFAULT_CONSUMER]);
        assert_eq!(token_for(&entries, Role::Consumer, Some("other")), Some("c3"));
        assert!(!entries[2].acts_for("other") && entries[4].acts_for("other"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, line, says) in [
            ("admin = \"\"\n", 1, "empty"),
            ("admin = \"a\"\nservice = \"  \"\n", 2, "spaces"),
            ("admin = \"a b\"\n", 1, "spaces"),
            ("admin = \"a\"\nservice = \"a\"\n", 2, "twice"),
            ("admin = \"a\"\nconsumer.x = \"a\"\n", 2, "twice"),
            ("root = \"a\"\n", 1, "unknown role"),
            ("admin.x = \"a\"\n", 1, "unknown key"),
            ("consumer.a/b = \"a\"\n", 1, "not a consumer name"),
            ("admin \"a\"\n", 1, "not `role"),
            ("admin = a\n", 1, "quoted"),
            ("admin = \"a\" b\n", 1, "quoted"),
        ] {
            let err = parse_tokens(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.detail.contains(says), "{text:?}: {err}");
        }
    }
}
