//! Access tokens: EdDSA (Ed25519) JWTs with a `kid`, signed by keys kept in the store
//! (private parts encrypted with the keyring). Validation pins the algorithm and takes the
//! key only from our own ring, by `kid`; nothing in the token's header is trusted.

use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::crypto::Keyring;
use crate::crypto::sealed::{self, Secret};
use crate::store::{Store, StoreError};

const RECORD: &str = "jwt.signing_keys";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    created_at: i64,
    /// When a newer key took over; the key verifies until its last token expired.
    retired_at: Option<i64>,
    public: String,
    private_sealed: String,
}

struct LoadedKey {
    kid: String,
    public: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Why a token was refused; the client only ever learns "401".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("invalid token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Errors while loading or rotating keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Sealed(#[from] crate::crypto::sealed::SealedError),
    #[error("signing keys: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("signing keys record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("signing keys: a public key is not base64: {0}")]
    Encoding(#[from] base64::DecodeError),
}

/// Most verified tokens remembered; a full cache is emptied (tokens are re-verified).
const VERIFIED_CACHE_MAX: usize = 20_000;

/// The signing keys: the newest signs, every unexpired one verifies.
pub struct SigningKeys {
    /// SHA-256 of a token whose signature and claims already verified → its claims. Saves the
    /// signature check on repeat use; expiry is still checked on every use, and revocation is
    /// the caller's live-session check.
    verified: RwLock<std::collections::HashMap<[u8; 32], Claims>>,
    keys: RwLock<Vec<LoadedKey>>,
    issuer: String,
    audience: String,
    leeway: u64,
    /// Access-token lifetime; a retired key is dropped this long (plus leeway) after retiring.
    access_ttl: i64,
    /// Bumped by every reload, so what was signed with an older ring (a cached identity
    /// assertion) is signed again with the new key.
    generation: std::sync::atomic::AtomicU64,
}

/// Where a signing key's private half is sealed (a field of the key list's entry `kid`).
fn secret(kid: &str) -> Secret<'_> {
    Secret::new("jwt_private_key", kid)
}

fn load_key(rec: &StoredKey, keyring: &Keyring) -> Result<LoadedKey, KeyError> {
    let pkcs8 = sealed::open(keyring, &secret(&rec.kid), &rec.private_sealed)?;
    let public = B64.decode(&rec.public)?;
    Ok(LoadedKey {
        kid: rec.kid.clone(),
        encoding: EncodingKey::from_ed_der(&pkcs8),
        decoding: DecodingKey::from_ed_der(&public),
        public,
    })
}

fn new_key(keyring: &Keyring, now: i64) -> Result<StoredKey, KeyError> {
    let (pkcs8, public) = crate::crypto::sign::ed25519_generate()?;
    let kid = hex::encode(crate::crypto::random_bytes::<8>());
    let private_sealed = sealed::seal(keyring, &secret(&kid), pkcs8.as_ref())?;
    Ok(StoredKey { kid, created_at: now, retired_at: None, public: B64.encode(public), private_sealed })
}

fn read_stored(store: &Store) -> Result<Vec<StoredKey>, KeyError> {
    let bytes = store.get_secret(RECORD)?;
    match bytes {
        Some(b) => Ok(serde_json::from_slice(&b)?),
        None => Ok(Vec::new()),
    }
}

async fn write_stored(store: &Store, keys: Vec<StoredKey>) -> Result<(), KeyError> {
    let bytes = serde_json::to_vec(&keys)?;
    store.put_secret(RECORD, bytes).await?;
    Ok(())
}

impl SigningKeys {
    /// Loads the keys, making the first one on a new store.
    pub async fn load_or_init(
        store: &Store,
        keyring: &Keyring,
        issuer: &str,
        audience: &str,
        access_ttl: i64,
    ) -> Result<SigningKeys, KeyError> {
        let now = crate::clock::now();
        let mut stored = read_stored(store)?;
        if stored.is_empty() {
            stored.push(new_key(keyring, now)?);
            write_stored(store, stored.clone()).await?;
        }
        let keys = stored.iter().map(|k| load_key(k, keyring)).collect::<Result<Vec<_>, _>>()?;
        Ok(SigningKeys {
            verified: RwLock::new(std::collections::HashMap::new()),
            keys: RwLock::new(keys),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway: 30,
            access_ttl,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Makes a new signing key; the previous one keeps verifying until its tokens expired.
    /// Keys retired long enough ago are dropped. Returns the new key id.
    pub async fn rotate(store: &Store, keyring: &Keyring, access_ttl: i64) -> Result<String, KeyError> {
        let now = crate::clock::now();
        let mut stored = read_stored(store)?;
        for k in stored.iter_mut() {
            if k.retired_at.is_none() {
                k.retired_at = Some(now);
            }
        }
        stored.retain(|k| k.retired_at.is_none_or(|r| now - r <= access_ttl + 60));
        let fresh = new_key(keyring, now)?;
        let kid = fresh.kid.clone();
        stored.insert(0, fresh);
        write_stored(store, stored).await?;
        Ok(kid)
    }

    /// Re-reads the keys from the store (after a rotation by the running gate).
    pub fn reload(&self, store: &Store, keyring: &Keyring) -> Result<(), KeyError> {
        let stored = read_stored(store)?;
        let keys = stored.iter().map(|k| load_key(k, keyring)).collect::<Result<Vec<_>, _>>()?;
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Re-encrypts every private key with the keyring's active key.
    pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<usize, KeyError> {
        let mut stored = read_stored(store)?;
        for k in stored.iter_mut() {
            k.private_sealed = sealed::reseal(keyring, &secret(&k.kid), &k.private_sealed)?;
        }
        let n = stored.len();
        write_stored(store, stored).await?;
        Ok(n)
    }

    /// The data key id each stored signing key is sealed with, by kid (for `keys retire`).
    pub fn sealed_key_ids(store: &Store) -> Result<Vec<(String, u32)>, KeyError> {
        read_stored(store)?
            .iter()
            .map(|k| {
                let id = sealed::key_id(&secret(&k.kid), &k.private_sealed)?;
                Ok((k.kid.clone(), id))
            })
            .collect()
    }

    /// Signs claims (an access token's, an identity assertion's) with the newest key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys.first().ok_or(TokenError::UnknownKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// Builds the claims for a new access token.
    pub fn claims(&self, user_id: &str, session_id: &str, role: &str, now: i64) -> Claims {
        Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            role: role.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl,
            jti: hex::encode(crate::crypto::random_bytes::<16>()),
        }
    }

    /// Verifies a token: EdDSA only, our key by `kid`, iss/aud/exp required, 30 s leeway.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let digest = crate::crypto::sha256(token.as_bytes());
        let now = crate::clock::now();
        if let Some(claims) = self.verified.read().ok().and_then(|c| c.get(&digest).cloned()) {
            if claims.exp + self.leeway as i64 > now {
                return Ok(claims);
            }
            return Err(TokenError::Invalid("expired"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid("algorithm"));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys.iter().find(|k| k.kid == kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)?;
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= VERIFIED_CACHE_MAX {
                cache.retain(|_, c| c.exp + 30 > now);
                if cache.len() >= VERIFIED_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, data.claims.clone());
        }
        Ok(data.claims)
    }

    /// How many times the ring was reloaded since the gate started.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The issuer (`iss`) the gate signs with.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public keys as a JWK set (OKP / Ed25519).
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.read().map(|k| {
            k.iter()
                .map(|k| {
                    serde_json::json!({
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "use": "sig",
                        "alg": "EdDSA",
                        "kid": k.kid,
                        "x": B64URL.encode(&k.public),
                    })
                })
                .collect::<Vec<_>>()
        });
        serde_json::json!({ "keys": keys.unwrap_or_default() })
    }
}
