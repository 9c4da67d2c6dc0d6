//! Signed stream URLs, for video players that cannot send headers. A key names a session, a
//! path prefix and an expiry, and carries an HMAC-SHA256 over those and the session's user,
//! made with a secret kept in the store (sealed by the keyring). Verification needs no store
//! read; the session is then checked against the live view like any access token.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use zeroize::Zeroizing;

use crate::crypto::{FieldContext, Keyring};
use crate::store::{Store, StoreError};

const RECORD: &str = "stream.hmac_key";

/// The HMAC key for stream URLs.
pub struct StreamKeys {
    key: hmac::Key,
}

/// A verified key's claims.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamClaims {
    pub session_id: String,
    pub prefix: String,
    pub expires_at: i64,
}

fn message(user_id: &str, session_id: &str, prefix: &str, expires_at: i64) -> Vec<u8> {
    format!("miauflix-stream-v1\n{user_id}\n{session_id}\n{prefix}\n{expires_at}").into_bytes()
}

fn key_ctx() -> FieldContext<'static> {
    FieldContext::new("secrets", "stream_hmac_key", RECORD)
}

/// The sealed HMAC secret as stored, if there is one.
pub fn sealed(store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
    store.get_secret(RECORD)?.map(|b| B64.decode(&b).map_err(|e| StoreError::Codec(e.to_string()))).transpose()
}

/// Re-seals the HMAC secret with the active data key (key rotation); `true` if there was one.
/// Stream URLs already handed out stay valid: the secret itself does not change.
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<bool, StoreError> {
    let Some(sealed) = sealed(store)? else { return Ok(false) };
    let codec = |e: crate::crypto::CryptoError| StoreError::Codec(e.to_string());
    let secret = keyring.decrypt(&key_ctx(), &sealed).map_err(codec)?;
    let resealed = keyring.encrypt(&key_ctx(), &secret).map_err(codec)?;
    store.put_secret(RECORD, B64.encode(resealed).into_bytes()).await?;
    Ok(true)
}

impl StreamKeys {
    /// Loads the secret, making it on first use.
    pub async fn load_or_init(store: &Store, keyring: &Keyring) -> Result<StreamKeys, StoreError> {
        let ctx = key_ctx();
        let stored = store.get_secret(RECORD)?;
        let secret: Zeroizing<Vec<u8>> = match stored {
            Some(sealed) => {
                let sealed = B64.decode(&sealed).map_err(|e| StoreError::Codec(e.to_string()))?;
                keyring.decrypt(&ctx, &sealed).map_err(|e| StoreError::Codec(e.to_string()))?
            }
            None => {
                let secret = Zeroizing::new(crate::crypto::random_bytes::<32>().to_vec());
                let sealed = B64.encode(keyring.encrypt(&ctx, &secret).map_err(|e| StoreError::Codec(e.to_string()))?);
                store.put_secret(RECORD, sealed.into_bytes()).await?;
                secret
            }
        };
        Ok(StreamKeys { key: hmac::Key::new(hmac::HMAC_SHA256, &secret) })
    }

    /// A key for `prefix` until `expires_at`.
    pub fn sign(&self, user_id: &str, session_id: &str, prefix: &str, expires_at: i64) -> String {
        let tag = hmac::sign(&self.key, &message(user_id, session_id, prefix, expires_at));
        format!("{session_id}.{expires_at}.{}.{}", B64URL.encode(prefix), B64URL.encode(tag.as_ref()))
    }

    /// Parses a key without trusting it; [`StreamKeys::verify`] checks it.
    pub fn parse(token: &str) -> Option<StreamClaims> {
        if token.len() > 2048 {
            return None;
        }
        let mut parts = token.split('.');
        let session_id = parts.next()?.to_string();
        let expires_at = parts.next()?.parse().ok()?;
        let prefix = String::from_utf8(B64URL.decode(parts.next()?).ok()?).ok()?;
        parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some(StreamClaims { session_id, prefix, expires_at })
    }

    /// Checks the tag for the session's user, the expiry, and that `path` is under the prefix.
    pub fn verify(&self, token: &str, user_id: &str, path: &str, now: i64) -> Option<StreamClaims> {
        let claims = Self::parse(token)?;
        let tag = B64URL.decode(token.rsplit('.').next()?).ok()?;
        hmac::verify(&self.key, &message(user_id, &claims.session_id, &claims.prefix, claims.expires_at), &tag).ok()?;
        if claims.expires_at <= now {
            return None;
        }
        let p = claims.prefix.trim_end_matches('/');
        let under = path == p || path.starts_with(&format!("{p}/"));
        under.then_some(claims)
    }
}
