//! Signed identity for upstreams: `X-Miauflix-Assertion`, an EdDSA JWT the gate adds to a
//! proxied request on a route with `identity_assertion = true`. An upstream that checks it
//! against `/.well-known/jwks.json` knows the request came through the gate for that user,
//! whatever else can reach its port. The assertion is bound to its upstream (`aud`), to the
//! method and path the gate forwarded (`htm`, `htu`, as in DPoP, RFC 9449 §4.2 — the path
//! without its query), and lives 60 s, so a captured one cannot be replayed to another path
//! or upstream, nor for long.
//!
//! Signing costs an Ed25519 signature; the proxy path must not pay it per request. Assertions
//! are cached (as the bytes of the header value, shared, not copied) by everything they say (session, user, role, email, audience, method, path) and
//! signed again when fewer than 20 s remain or the signing keys were reloaded. The cache is
//! bounded: past `CACHE_MAX` entries the expired ones go, and if that is not enough, all.
//! `jti` is unique per signature, so an upstream must not treat it as single-use.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Principal;
use super::tokens::{SigningKeys, TokenError};

/// How long an assertion is valid.
pub const LIFETIME_SECS: i64 = 60;
/// A cached assertion with less than this left is signed again.
pub const RESIGN_BELOW_SECS: i64 = 20;
const CACHE_MAX: usize = 16_384;

/// What an assertion says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub email: String,
    pub role: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The method the gate forwarded.
    pub htm: String,
    /// The path the gate forwarded (canonical, without the query).
    pub htu: String,
}

struct Cached {
    /// Everything the assertion says that the request decides, length-prefixed (the key's
    /// hash only finds the entry; these bytes must match).
    fields: Box<[u8]>,
    token: Bytes,
    exp: i64,
    generation: u64,
}

/// The assertion cache.
#[derive(Default)]
pub struct Assertions {
    cache: RwLock<HashMap<u64, Cached>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Assertions {
    /// The assertion for `principal` calling `method path` on the upstream `audience` at `now`:
    /// the cached one while it has at least `RESIGN_BELOW_SECS` left, else a new signature.
    pub fn get(
        &self,
        keys: &SigningKeys,
        principal: &Principal,
        audience: &str,
        method: &str,
        path: &str,
        now: i64,
    ) -> Result<Bytes, TokenError> {
        let role = principal.role.as_str();
        let fields = [
            principal.session_id.as_str(),
            principal.user_id.as_str(),
            role,
            principal.email.as_str(),
            audience,
            method,
            path,
        ];
        let fields = joined(&fields);
        let key = std::hash::BuildHasher::hash_one(&self.hasher, &fields);
        let generation = keys.generation();
        if let Some(c) = self.cache.read().ok().as_ref().and_then(|m| m.get(&key))
            && c.fields[..] == fields[..]
            && c.generation == generation
            && c.exp - now >= RESIGN_BELOW_SECS
        {
            return Ok(c.token.clone());
        }
        let claims = AssertionClaims {
            iss: keys.issuer().to_string(),
            aud: audience.to_string(),
            sub: principal.user_id.clone(),
            email: principal.email.clone(),
            role: role.to_string(),
            sid: principal.session_id.clone(),
            iat: now,
            exp: now + LIFETIME_SECS,
            jti: hex::encode(crate::crypto::random_bytes::<16>()),
            htm: method.to_string(),
            htu: path.to_string(),
        };
        let token = Bytes::from(keys.sign(&claims)?);
        if let Ok(mut m) = self.cache.write() {
            if m.len() >= CACHE_MAX {
                m.retain(|_, c| c.exp - now >= RESIGN_BELOW_SECS);
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
            }
            m.insert(
                key,
                Cached { fields: fields.into_boxed_slice(), token: token.clone(), exp: claims.exp, generation },
            );
        }
        Ok(token)
    }

    /// Entries held (for tests and the bound).
    pub fn len(&self) -> usize {
        self.cache.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fields, each length-prefixed, so no two field lists join to the same bytes.
fn joined(fields: &[&str]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
    for f in fields {
        buf.extend_from_slice(&(f.len() as u64).to_be_bytes());
        buf.extend_from_slice(f.as_bytes());
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::joined;

    #[test]
    fn cache_keys_do_not_collide_across_field_boundaries() {
        assert_ne!(joined(&["ab", "c"]), joined(&["a", "bc"]));
        assert_ne!(joined(&["a", ""]), joined(&["", "a"]));
        assert_eq!(joined(&["GET", "/x"]), joined(&["GET", "/x"]));
    }
}
