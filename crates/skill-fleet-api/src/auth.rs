//! The `--auth-token` secret (never shown by `Debug`), constant-time comparison, and the
//! `?token=` of the stream routes. Roles and the check itself are in `access`.

use subtle::ConstantTimeEq;

/// The bearer token. Its `Debug` never shows it, so a logged configuration cannot leak it;
/// [`AuthToken::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct AuthToken(String);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> AuthToken {
        AuthToken(token.into())
    }

    /// The token itself, for comparing with what a request carries.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the token is empty (an empty token means "no token").
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl std::str::FromStr for AuthToken {
    type Err = std::convert::Infallible;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        Ok(AuthToken::new(token))
    }
}

/// The `?token=` query parameter of a URI.
pub(crate) fn query_token(uri: &axum::http::Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()
        .and_then(|query| query.0.token)
}

/// Compares two byte strings in time that depends only on their lengths, not their contents
/// (`subtle`'s constant-time equality).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::{AuthToken, constant_time_eq};

    #[test]
    fn debug_never_shows_the_token() {
        let token = AuthToken::new("s3cret-value");
        assert_eq!(format!("{token:?}"), "AuthToken(<redacted>)");
        assert_eq!(format!("{:?}", Some(&token)), "Some(AuthToken(<redacted>))");
        assert_eq!(token.expose(), "s3cret-value");
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
