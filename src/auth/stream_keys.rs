//! Signed stream URLs, for video players that cannot send headers. A key names a session, a
//! path prefix and an expiry, and carries an HMAC-SHA256 over those and the session's user,
//! made with a secret kept in the store (sealed by the keyring). Verification needs no store
//! read; the session is then checked against the live view like any access token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use zeroize::Zeroizing;

use crate::crypto::Keyring;
use crate::crypto::sealed::Secret;
use crate::crypto::sign::HmacKey;
use crate::store::{Store, StoreError};

const RECORD: &str = "stream.hmac_key";

/// The HMAC key for stream URLs.
pub struct StreamKeys {
    key: HmacKey,
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

/// Where the HMAC secret is sealed.
pub const SECRET: Secret<'static> = Secret::new("stream_hmac_key", RECORD);

/// The sealed HMAC secret as stored, if there is one.
pub fn sealed(store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(crate::crypto::sealed::stored_envelope(store, &SECRET)?)
}

/// Re-seals the HMAC secret with the active data key (key rotation); `true` if there was one.
/// Stream URLs already handed out stay valid: the secret itself does not change.
pub async fn reencrypt(store: &Store, keyring: &Keyring) -> Result<bool, StoreError> {
    Ok(crate::crypto::sealed::reseal_record(store, keyring, &SECRET).await?)
}

impl StreamKeys {
    /// Loads the secret, making it on first use.
    pub async fn load_or_init(store: &Store, keyring: &Keyring) -> Result<StreamKeys, StoreError> {
        let secret: Zeroizing<Vec<u8>> = match crate::crypto::sealed::get(store, keyring, &SECRET)? {
            Some(secret) => secret,
            None => {
                let secret = Zeroizing::new(crate::crypto::random_bytes::<32>().to_vec());
                crate::crypto::sealed::put(store, keyring, &SECRET, &secret).await?;
                secret
            }
        };
        Ok(StreamKeys { key: HmacKey::sha256(&secret) })
    }

    /// A key for `prefix` until `expires_at`.
    pub fn sign(&self, user_id: &str, session_id: &str, prefix: &str, expires_at: i64) -> String {
        let tag = self.key.sign(&message(user_id, session_id, prefix, expires_at));
        format!("{session_id}.{expires_at}.{}.{}", B64URL.encode(prefix), B64URL.encode(&tag))
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
        if !self.key.verify(&message(user_id, &claims.session_id, &claims.prefix, claims.expires_at), &tag) {
            return None;
        }
        if claims.expires_at <= now {
            return None;
        }
        let p = claims.prefix.trim_end_matches('/');
        let under = path == p || path.starts_with(&format!("{p}/"));
        under.then_some(claims)
    }
}
