//! Who is asking: a bearer JWT (HS256) whose `tenant` claim decides which
//! tenant's dashboard it may read.
//!
//! A real service takes its tokens from its identity provider (and would
//! verify RS256/ES256 against the provider's published keys); the shared
//! secret here keeps the example self-contained, and the development token
//! it prints stands in for a sign-in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The claims a token must carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who: the user.
    pub sub: String,
    /// Which tenant's data the token may read.
    pub tenant: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// Signs and verifies tokens with one shared secret.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token is expired at its `exp`: no grace period to reason about.
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `sub` reading `tenant`, valid for `lifetime`.
    pub fn token(&self, sub: &str, tenant: &str, lifetime: Duration) -> String {
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            exp: (now() + lifetime).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a valid token for `tenant` (the request's path):
    /// 401 without a valid token, 403 with one for another tenant.
    pub fn authorize(&self, token: Option<&str>, tenant: &str) -> Result<Claims, ApiError> {
        let token = token.ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                        "the token lacks a claim (sub, tenant, exp)"
                    }
                    _ => "the token is not valid",
                })
            })?
            .claims;
        if claims.tenant != tenant {
            return Err(ApiError::forbidden("the token is for another tenant"));
        }
        Ok(claims)
    }
}

/// The token of `Authorization: Bearer ...`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
