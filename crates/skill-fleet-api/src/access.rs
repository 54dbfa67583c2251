//! Who may call what: bearer tokens with a role (`read`, `worker`, `admin`), the one table of
//! the role each route needs ([`ROUTE_ROLES`]), and the middleware that checks every request
//! against both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::auth::AuthToken;
use crate::error::ApiError;
use crate::state::AppState;

/// What a token may do. Each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every GET: jobs, lists, history, results, logs, artifacts, streams, `/readyz`,
    /// `/metrics`, the OpenAPI document.
    Read,
    /// `read`, and what an external worker calls: claim, heartbeat, events, complete, fail,
    /// artifact upload.
    Worker,
    /// Everything: create, cancel, resume.
    Admin,
}

impl Role {
    /// The role's name: `read`, `worker` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "read" => Ok(Role::Read),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: the roles are read, worker and admin"
            )),
        }
    }
}

/// What a route asks of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone, token or not (`/healthz`).
    Public,
    /// A token of this role or a higher one.
    Role(Role),
}

/// The role each route needs, by method and path template, declared once. A route missing
/// here needs `admin` (a test checks that every route of [`crate::routes::api`] is here and
/// nothing else is). `HEAD` is looked up as `GET`.
pub const ROUTE_ROLES: &[(&str, &str, Requirement)] = {
    use Requirement::{Public, Role as R};
    use Role::{Admin, Read, Worker};
    &[
        ("GET", "/healthz", Public),
        ("GET", "/readyz", R(Read)),
        ("GET", "/metrics", R(Read)),
        ("GET", "/api/v1/openapi.json", R(Read)),
        ("GET", "/api/v1/jobs", R(Read)),
        ("GET", "/api/v1/jobs/{id}", R(Read)),
        ("GET", "/api/v1/jobs/{id}/progress", R(Read)),
        ("GET", "/api/v1/jobs/{id}/result", R(Read)),
        ("GET", "/api/v1/jobs/{id}/logs", R(Read)),
        ("GET", "/api/v1/jobs/{id}/stream", R(Read)),
        ("GET", "/api/v1/jobs/{id}/artifacts", R(Read)),
        ("GET", "/api/v1/jobs/{id}/artifacts/{name}", R(Read)),
        ("GET", "/api/v1/optimization/{id}/stream", R(Read)),
        ("POST", "/api/v1/jobs/claim", R(Worker)),
        ("POST", "/api/v1/jobs/{id}/heartbeat", R(Worker)),
        ("POST", "/api/v1/jobs/{id}/events", R(Worker)),
        ("POST", "/api/v1/jobs/{id}/complete", R(Worker)),
        ("POST", "/api/v1/jobs/{id}/fail", R(Worker)),
        ("PUT", "/api/v1/jobs/{id}/artifacts/{name}", R(Worker)),
        ("POST", "/api/v1/jobs", R(Admin)),
        ("POST", "/api/v1/optimization", R(Admin)),
        ("POST", "/api/v1/jobs/{id}/cancel", R(Admin)),
        ("POST", "/api/v1/jobs/{id}/resume", R(Admin)),
    ]
};

/// What `method` on the route `template` needs: its row of [`ROUTE_ROLES`], else `admin`.
pub fn requirement(method: &Method, template: &str) -> Requirement {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_ROLES
        .iter()
        .find(|(m, path, _)| *m == method && *path == template)
        .map_or(Requirement::Role(Role::Admin), |(_, _, requirement)| {
            *requirement
        })
}

/// SHA-256 of a secret, as a token stores it.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Reads 64 hex digits (either case) as a SHA-256.
pub fn parse_sha256_hex(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "secret_sha256 must be 64 hex digits (a SHA-256), got {} characters",
            text.chars().count()
        ));
    }
    let digit = |byte: u8| -> Result<u8, String> {
        (byte as char)
            .to_digit(16)
            .and_then(|value| u8::try_from(value).ok())
            .ok_or_else(|| format!("secret_sha256 is not hex: `{}`", byte as char))
    };
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        hash[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(hash)
}

/// One token: a name (in logs, metrics and history, never the secret), a role, the SHA-256
/// of its secret, and for a worker, optionally the job types it may take.
#[derive(Clone)]
pub struct Token {
    caller: Caller,
    secret_sha256: [u8; 32],
}

impl Token {
    /// A token whose secret hashes to `secret_sha256`.
    pub fn new(
        name: impl Into<String>,
        role: Role,
        secret_sha256: [u8; 32],
        types: Option<Vec<String>>,
    ) -> Token {
        Token {
            caller: Caller {
                name: Arc::from(name.into()),
                role,
                types: types.map(Arc::from),
            },
            secret_sha256,
        }
    }

    /// The admin token named `admin` that `--auth-token` stands for.
    pub fn admin(token: &AuthToken) -> Token {
        Token::new(
            ADMIN_TOKEN_NAME,
            Role::Admin,
            sha256(token.expose().as_bytes()),
            None,
        )
    }

    /// Who this token is.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.caller.name)
            .field("role", &self.caller.role)
            .field("types", &self.caller.types)
            .finish_non_exhaustive()
    }
}

/// The name of the token `--auth-token` stands for.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// Who made a request: the name, role and job types of the token it carried. Handlers read
/// it from the request's extensions (absent on a server without tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    /// Its role.
    pub role: Role,
    /// The job types a worker token may take; `None`: any.
    pub types: Option<Arc<[String]>>,
}

impl Caller {
    /// Whether this caller may write to (or claim) a job of `job_type`.
    pub fn may_take(&self, job_type: &str) -> bool {
        self.role == Role::Admin
            || self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == job_type))
    }

    fn types_text(&self) -> String {
        self.types
            .as_ref()
            .map(|types| types.join(", "))
            .unwrap_or_default()
    }
}

/// How many requests each token made, and how many of them were refused with 403.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Requests that carried the token.
    pub requests: u64,
    /// Of those, refused with 403.
    pub forbidden: u64,
}

/// The tokens a server accepts, replaceable while it runs (a tokens file reloaded): the
/// token of `--auth-token`, if any, and the file's tokens, if a file is configured. With
/// neither, every route is open (a loopback server).
#[derive(Debug)]
pub struct Tokens {
    fixed: Option<Token>,
    file_configured: bool,
    file: RwLock<Arc<Vec<Token>>>,
    usage: Mutex<BTreeMap<(Arc<str>, Role), TokenUsage>>,
    unauthorized: AtomicU64,
}

impl Tokens {
    /// `auth_token` as the admin token named `admin`, and, when `file` is `Some`, the
    /// file's tokens (checked as [`Tokens::replace`] checks them).
    pub fn new(auth_token: Option<&AuthToken>, file: Option<Vec<Token>>) -> Result<Tokens, String> {
        let mut tokens = Tokens::from_auth_token(auth_token);
        if let Some(file) = file {
            tokens.file_configured = true;
            tokens.replace(file)?;
        }
        Ok(tokens)
    }

    /// `auth_token` alone, as the admin token named `admin`; no token: open.
    pub fn from_auth_token(auth_token: Option<&AuthToken>) -> Tokens {
        Tokens {
            fixed: auth_token
                .filter(|token| !token.is_empty())
                .map(Token::admin),
            file_configured: false,
            file: RwLock::new(Arc::new(Vec::new())),
            usage: Mutex::new(BTreeMap::new()),
            unauthorized: AtomicU64::new(0),
        }
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        self.fixed.is_some() || self.file_configured
    }

    /// Puts `tokens` in place of the file's tokens, if their names are unique (and not the
    /// `admin` of `--auth-token`); otherwise keeps the old ones and says why.
    pub fn replace(&self, tokens: Vec<Token>) -> Result<(), String> {
        let mut names: Vec<&str> = self.fixed.iter().map(|token| &*token.caller.name).collect();
        for token in &tokens {
            let name = &*token.caller.name;
            if names.contains(&name) {
                return Err(if self.fixed.is_some() && name == ADMIN_TOKEN_NAME {
                    format!("token name `{name}` is taken by the --auth-token token")
                } else {
                    format!("token name `{name}` is used twice")
                });
            }
            names.push(name);
        }
        let tokens = Arc::new(tokens);
        match self.file.write() {
            Ok(mut file) => *file = tokens,
            Err(poisoned) => *poisoned.into_inner() = tokens,
        }
        Ok(())
    }

    /// The names of the tokens accepted now.
    pub fn names(&self) -> Vec<String> {
        self.fixed
            .iter()
            .chain(self.current().iter())
            .map(|token| token.caller.name.to_string())
            .collect()
    }

    fn current(&self) -> Arc<Vec<Token>> {
        match self.file.read() {
            Ok(file) => Arc::clone(&file),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The caller whose token's secret is `secret`. Every token's hash is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, secret: &str) -> Option<Caller> {
        let hash = sha256(secret.as_bytes());
        let file = self.current();
        let mut found = None;
        for token in self.fixed.iter().chain(file.iter()) {
            if bool::from(token.secret_sha256.ct_eq(&hash)) && found.is_none() {
                found = Some(token.caller.clone());
            }
        }
        found
    }

    fn count(&self, caller: &Caller, forbidden: bool) {
        let mut usage = match self.usage.lock() {
            Ok(usage) => usage,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = usage
            .entry((Arc::clone(&caller.name), caller.role))
            .or_default();
        entry.requests += 1;
        if forbidden {
            entry.forbidden += 1;
        }
    }

    /// Requests per token name and role since start.
    pub fn usage(&self) -> Vec<(String, Role, TokenUsage)> {
        let usage = match self.usage.lock() {
            Ok(usage) => usage,
            Err(poisoned) => poisoned.into_inner(),
        };
        usage
            .iter()
            .map(|((name, role), usage)| (name.to_string(), *role, *usage))
            .collect()
    }

    /// Requests refused with 401 since start.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }
}

/// The middleware: finds the request's token, checks its role against the route's
/// [`Requirement`] and, for a worker token limited to some job types, the job's type; puts
/// the [`Caller`] in the request's extensions and its name in the request's span.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    // A path no route serves needs a valid token of any role, then gets its 404 or 405.
    let needed = match &template {
        Some(template) => requirement(request.method(), template),
        None => Requirement::Role(Role::Read),
    };
    let tokens = state.tokens();
    let Requirement::Role(needed) = needed else {
        return next.run(request).await;
    };
    if !tokens.enabled() {
        return next.run(request).await;
    }
    let Some(caller) = bearer(&request).and_then(|secret| tokens.find(&secret)) else {
        tokens.unauthorized.fetch_add(1, Ordering::Relaxed);
        return ApiError::Unauthorized.into_response();
    };
    let refusal = if caller.role < needed {
        Some(format!(
            "token `{}` (role {}) may not call {} {}: it needs the {needed} role",
            caller.name,
            caller.role,
            request.method(),
            template.as_deref().unwrap_or_else(|| request.uri().path()),
        ))
    } else if needed == Role::Worker && caller.role == Role::Worker && caller.types.is_some() {
        match job_id(template.as_deref(), request.uri().path()) {
            Some(id) => match state.service().get(id).await {
                Ok(job) if !caller.may_take(&job.job_type) => Some(format!(
                    "token `{}` (role worker) may not write to job `{id}` of type `{}`: it may take only {}",
                    caller.name,
                    job.job_type,
                    caller.types_text()
                )),
                // Unknown job or a failing read: the handler answers that.
                _ => None,
            },
            None => None,
        }
    } else {
        None
    };
    tokens.count(&caller, refusal.is_some());
    if let Some(message) = refusal {
        tracing::info!(token = %caller.name, role = %caller.role, "{message}");
        return ApiError::Forbidden(message).into_response();
    }
    let span = tracing::info_span!("request", token = %caller.name, role = %caller.role);
    request.extensions_mut().insert(caller);
    next.run(request).instrument(span).await
}

/// The secret a request carries: `Authorization: Bearer`, or on the stream routes (a
/// browser's `EventSource` cannot set headers) `?token=`.
fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| {
            request
                .uri()
                .path()
                .ends_with("/stream")
                .then(|| crate::auth::query_token(request.uri()))
                .flatten()
        })
}

/// The job id in `path`, at the place of `{id}` in the route's `template`.
fn job_id<'a>(template: Option<&str>, path: &'a str) -> Option<&'a str> {
    let index = template?.split('/').position(|part| part == "{id}")?;
    path.split('/').nth(index)
}

/// The refusal of a worker token's claim of types it may not take, if any; a claim that
/// names no types takes the token's types.
pub(crate) fn check_claim(
    caller: Option<&Caller>,
    types: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let Some(allowed) = caller
        .types
        .as_ref()
        .filter(|_| caller.role == Role::Worker)
    else {
        return Ok(());
    };
    if types.is_empty() {
        *types = allowed.to_vec();
        return Ok(());
    }
    if let Some(other) = types.iter().find(|t| !caller.may_take(t)) {
        return Err(ApiError::Forbidden(format!(
            "token `{}` (role worker) may not claim jobs of type `{other}`: it may take only {}",
            caller.name,
            caller.types_text()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("read".parse::<Role>(), Ok(Role::Read));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!(
            "root"
                .parse::<Role>()
                .is_err_and(|err| err.contains("`root`"))
        );
        assert!(Role::Read < Role::Worker && Role::Worker < Role::Admin);
    }

    #[test]
    fn hashes_parse_from_hex() {
        let hash = sha256(b"abc");
        let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(parse_sha256_hex(&hex), Ok(hash));
        assert_eq!(parse_sha256_hex(&hex.to_uppercase()), Ok(hash));
        assert!(parse_sha256_hex("abc").is_err());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_err_and(|err| err.contains("not hex")));
    }

    #[test]
    fn tokens_are_found_by_secret_and_names_are_unique() {
        let reader = Token::new("ci", Role::Read, sha256(b"one"), None);
        let tokens =
            Tokens::new(Some(&AuthToken::new("root")), Some(vec![reader.clone()])).expect("tokens");
        assert!(tokens.enabled());
        assert_eq!(tokens.find("one").map(|c| c.role), Some(Role::Read));
        assert_eq!(
            tokens.find("root").map(|c| c.name),
            Some(Arc::from("admin"))
        );
        assert_eq!(tokens.find("two"), None);
        let err = tokens
            .replace(vec![reader.clone(), reader])
            .expect_err("duplicate");
        assert!(err.contains("`ci` is used twice"), "{err}");
        let admin = Token::new("admin", Role::Read, sha256(b"x"), None);
        assert!(tokens.replace(vec![admin]).is_err());
        // The old tokens stay after a refused replacement.
        assert_eq!(tokens.find("one").map(|c| c.role), Some(Role::Read));
        assert!(!Tokens::new(None, None).expect("open").enabled());
        assert!(
            Tokens::new(None, Some(Vec::new()))
                .expect("empty")
                .enabled()
        );
    }

    #[test]
    fn a_routes_role_comes_from_the_table_and_defaults_to_admin() {
        assert_eq!(
            requirement(&Method::HEAD, "/api/v1/jobs"),
            Requirement::Role(Role::Read)
        );
        assert_eq!(requirement(&Method::GET, "/healthz"), Requirement::Public);
        assert_eq!(
            requirement(&Method::DELETE, "/api/v1/jobs/{id}"),
            Requirement::Role(Role::Admin)
        );
        assert_eq!(
            job_id(Some("/api/v1/jobs/{id}/events"), "/api/v1/jobs/j-1/events"),
            Some("j-1")
        );
    }
}
