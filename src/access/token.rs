//! Viewer tokens for private lives: JWTs signed with HS256, claims `live`
//! and `exp`. Anyone holding the secret (the streamer's own site) can mint
//! them; Vessel's admin API can too.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    live: String,
    exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is for live '{0}'")]
    OtherLive(String),
    #[error("the signature does not match this server's viewer-token-secret")]
    Forged,
    #[error("not a valid HS256 JWT with 'live' and 'exp' claims: {0}")]
    Malformed(String),
}

pub struct ViewerTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl ViewerTokens {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `live` valid for `ttl_secs`; returns it and its expiry
    /// (Unix seconds).
    pub fn mint(&self, live: &str, ttl_secs: u64) -> (String, u64) {
        let exp = unix_now() + ttl_secs;
        let claims = Claims {
            live: live.to_string(),
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, exp)
    }

    pub fn check(&self, token: &str, live: &str) -> Result<(), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Forged,
                _ => TokenError::Malformed(e.to_string()),
            })?;
        if data.claims.live != live {
            return Err(TokenError::OtherLive(data.claims.live));
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
