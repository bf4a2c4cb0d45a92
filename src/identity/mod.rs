//! Who the person is, told to the apps: the ES256 signing keys, the assertion JWT sent in
//! `X-Portcullis-Assertion`, the JWKS that publishes the public keys, and a verifier.

mod keyring;
mod live;

pub use keyring::{
    KeyRing, NextKey, PROMOTE_AFTER_SECS, RETIRED_KEY_RETENTION_SECS, SIGNING_KEYS_DIR,
};
pub use live::{KeysChanged, LiveKeys, RELOAD_EVERY};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::crypto::CryptoError;

/// Errors of key handling, signing and verification. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Key(#[from] CryptoError),
    #[error("The signing key file {path} is not usable: {reason}. Restore it from a backup, or delete the signing-keys directory to create a new key (apps then fetch the new JWKS).")]
    BadKeyFile { path: String, reason: String },
    #[error("The signing key index {path} is not usable: {reason}. Restore it from a backup, or delete the signing-keys directory to create a new key.")]
    BadIndex { path: String, reason: String },
    #[error("A new signing key ({kid}) is already published and starts signing at {}; rotate again after that.", crate::admin::format::rfc3339(*.signs_from))]
    RotationPending {
        kid: String,
        signs_from: crate::clock::UnixSeconds,
    },
    #[error("The assertion could not be signed: {0}.")]
    Sign(String),
    #[error("The assertion is malformed: {0}.")]
    Malformed(String),
    #[error("The assertion names a signing key that is not in the JWKS; fetch the JWKS again.")]
    UnknownKey,
    #[error("The assertion's signature is not valid.")]
    BadSignature,
    #[error("The assertion was issued by someone else than expected.")]
    WrongIssuer,
    #[error("The assertion was made for another application.")]
    WrongAudience,
    #[error("The assertion has expired; the proxy sends a fresh one with every request.")]
    Expired,
    #[error("The JWKS is not valid: {0}.")]
    BadJwks(String),
}

/// The claims of the identity assertion (SPEC §3; RFC 7519 §4.1, OpenID Connect Core §2 and
/// §5.1 for the names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The auth origin, e.g. `https://login.example.com`.
    pub iss: String,
    /// The app id.
    pub aud: String,
    /// The stable user id.
    pub sub: String,
    pub preferred_username: String,
    pub email: String,
    pub name: String,
    pub iat: UnixSeconds,
    pub exp: UnixSeconds,
    pub auth_time: UnixSeconds,
    /// Authentication methods (RFC 8176): `["pwd", "otp"]`.
    pub amr: Vec<String>,
    /// A public session identifier. Never the session cookie value.
    pub sid: String,
}

/// How far an assertion's `iat` may lie in the future (clock skew between hosts).
const MAX_FUTURE_IAT_SECS: i64 = 60;

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<JwkDoc>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
}

/// Verifies an assertion against a JWKS (as served at `/.portcullis/jwks.json`): ES256 only,
/// the key chosen by `kid`, `iss` and `aud` must match, and `now` must be before `exp`
/// (RFC 7519 §4.1.4). For the demo apps and tests; real apps use any JWT library.
pub fn verify_with_jwks(
    token: &str,
    jwks_json: &str,
    iss: &str,
    aud: &str,
    now: UnixSeconds,
) -> Result<AssertionClaims, IdentityError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    // Only ES256 is ever accepted: the header cannot talk the verifier into another
    // algorithm (RFC 8725 §3.1).
    if header.alg != Algorithm::ES256 {
        return Err(IdentityError::Malformed(
            "the algorithm is not ES256".into(),
        ));
    }
    let kid = header
        .kid
        .ok_or_else(|| IdentityError::Malformed("the header has no kid".into()))?;

    let jwks: JwksDoc =
        serde_json::from_str(jwks_json).map_err(|e| IdentityError::BadJwks(e.to_string()))?;
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid.as_str()))
        .ok_or(IdentityError::UnknownKey)?;
    let (x, y) = match (jwk.kty.as_str(), jwk.crv.as_deref(), &jwk.x, &jwk.y) {
        ("EC", Some("P-256"), Some(x), Some(y)) => (x, y),
        _ => {
            return Err(IdentityError::BadJwks(format!(
                "key {kid} is not a P-256 key"
            )))
        }
    };
    if jwk.alg.as_deref().is_some_and(|a| a != "ES256") {
        return Err(IdentityError::BadJwks(format!(
            "key {kid} is not for ES256"
        )));
    }
    let key =
        DecodingKey::from_ec_components(x, y).map_err(|e| IdentityError::BadJwks(e.to_string()))?;

    let mut validation = Validation::new(Algorithm::ES256);
    // Time is checked below against the caller's `now`, not the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_issuer(&[iss]);
    validation.set_audience(&[aud]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

    let data = jsonwebtoken::decode::<AssertionClaims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => IdentityError::BadSignature,
            K::InvalidIssuer => IdentityError::WrongIssuer,
            K::InvalidAudience => IdentityError::WrongAudience,
            K::ExpiredSignature => IdentityError::Expired,
            _ => IdentityError::Malformed(e.to_string()),
        }
    })?;
    let claims = data.claims;
    if now >= claims.exp {
        return Err(IdentityError::Expired);
    }
    if claims.iat > now.saturating_add(MAX_FUTURE_IAT_SECS) {
        return Err(IdentityError::Malformed(
            "it was issued in the future".into(),
        ));
    }
    Ok(claims)
}
