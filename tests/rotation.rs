//! `keys rotate` re-seals every sealed value (issue 15 item 17): with a store holding every
//! kind (signing keys, self-signed key, VPN key, stream-URL key, ACME account and certificate
//! cache entries, written through the functions the ACME cache uses), each one opens after a
//! rotation and carries the new data key's id, so the old key is no longer needed.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use miauflix_gate::crypto::{FieldContext, Keyring, MasterKey};
use miauflix_gate::store::Store;

#[tokio::test]
async fn rotation_reseals_stream_and_acme_keys_with_the_new_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gate.redb")).unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let keyring = Keyring::load_or_init(&store, &master).await.unwrap();
    let old = keyring.active_key_id();
    let audit = miauflix_gate::audit::Audit::new(store.clone(), Default::default());

    // Every kind of sealed value.
    miauflix_gate::auth::tokens::SigningKeys::rotate(&store, &keyring, 900).await.unwrap();
    let names = miauflix_gate::tls::self_signed::default_names("127.0.0.1".parse().unwrap(), &[]);
    miauflix_gate::tls::self_signed::load_or_create(&store, &keyring, names).await.unwrap();
    miauflix_gate::vpn::store_key(&store, &keyring, &B64.encode([9u8; 32])).await.unwrap();
    let stream = miauflix_gate::auth::stream_keys::StreamKeys::load_or_init(&store, &keyring).await.unwrap();
    let url = stream.sign("user", "session", "/stream/", i64::MAX / 2);
    let (contact, dir_url) = (vec!["mailto:a@example.com".to_string()], "https://ca.example/dir");
    miauflix_gate::tls::acme::store_account_key(&store, &keyring, &contact, dir_url, b"account key").await.unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["gate.example".to_string()]).unwrap();
    let bundle = format!("{}{}", cert.signing_key.serialize_pem(), cert.cert.pem());
    let domains = vec!["gate.example".to_string()];
    miauflix_gate::tls::acme::store_cert_bundle(&store, &keyring, &domains, dir_url, bundle.as_bytes()).await.unwrap();
    miauflix_gate::secrets::set(&store, &keyring, "miauflix_proxy_secret", b"proxy-value-1").await.unwrap();

    let client = miauflix_gate::audit::ClientInfo::default();
    let report =
        miauflix_gate::maintenance::rotate_with(&store, &keyring, &master, 900, &audit, &client).await.unwrap();
    let new = report.data_key_id;
    assert_ne!(new, old);

    // Stream-URL key: re-sealed with the new key, and the URL handed out before still verifies.
    let sealed = miauflix_gate::auth::stream_keys::sealed(&store).unwrap().unwrap();
    assert_eq!(Keyring::key_id_of(&sealed).unwrap(), new);
    let reloaded = miauflix_gate::auth::stream_keys::StreamKeys::load_or_init(&store, &keyring).await.unwrap();
    assert!(reloaded.verify(&url, "user", "/stream/a.mkv", 0).is_some());
    // ACME account and certificate keys: both re-sealed and still open under their AAD.
    let acme = miauflix_gate::tls::acme::sealed_entries(&store).unwrap();
    assert_eq!(acme.len(), 2, "{:?}", acme.iter().map(|(n, _)| n).collect::<Vec<_>>());
    for (name, sealed) in &acme {
        assert_eq!(Keyring::key_id_of(sealed).unwrap(), new, "{name}");
        let plain = keyring.decrypt(&FieldContext::new("secrets", "private_key", name), sealed).unwrap();
        if name.starts_with("acme.account.") {
            assert_eq!(&plain[..], b"account key");
        } else {
            assert!(std::str::from_utf8(&plain).unwrap().contains("PRIVATE KEY"), "{name}");
        }
        // The AAD binds the record: under another record's name it does not open.
        assert!(keyring.decrypt(&FieldContext::new("secrets", "private_key", "acme.other"), sealed).is_err());
    }
    // VPN key: already re-sealed before; still the new key.
    let vpn = B64.decode(store.get_secret("vpn_private_key").unwrap().unwrap()).unwrap();
    assert_eq!(Keyring::key_id_of(&vpn).unwrap(), new);
    assert!(report.reencrypted_fields >= 5, "{report:?}");
    // The enumeration rotation and retirement share: every kind present, all on the new key.
    let sealed = miauflix_gate::maintenance::sealed_values(&store).unwrap();
    assert!(sealed.len() >= 6, "{sealed:?}");
    assert!(sealed.iter().all(|(_, id)| *id == new), "{sealed:?}");

    // Named secrets: re-sealed, still open, and bound to their name (a record copied under
    // another name does not open).
    let named = miauflix_gate::secrets::list(&store).unwrap();
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0].key_id, new);
    let value = miauflix_gate::secrets::get(&store, &keyring, "miauflix_proxy_secret").unwrap().unwrap();
    assert_eq!(&value[..], b"proxy-value-1");
    let record = store.get_secret("named.miauflix_proxy_secret").unwrap().unwrap();
    assert!(!record.windows(13).any(|w| w == b"proxy-value-1"), "the value is sealed in the store");
    store.put_secret("named.copied", record).await.unwrap();
    assert!(miauflix_gate::secrets::get(&store, &keyring, "copied").is_err(), "the name is in the AAD");
    assert!(miauflix_gate::secrets::delete(&store, "copied").await.unwrap());
    assert!(sealed.iter().any(|(name, _)| name == "secret miauflix_proxy_secret"), "{sealed:?}");

    // The old key retires; the active one never does.
    let retire = |id| miauflix_gate::maintenance::retire(&store, &keyring, id, &audit, &client);
    assert!(retire(new).await.unwrap_err().to_string().contains("active"));
    retire(old).await.unwrap();
    assert_eq!(keyring.key_ids(), vec![new]);
    // Reloaded from the store without the old key, every sealed value still opens.
    let reloaded = Keyring::load_or_init(&store, &master).await.unwrap();
    assert_eq!(reloaded.key_ids(), vec![new]);
    miauflix_gate::auth::tokens::SigningKeys::reencrypt(&store, &reloaded).await.unwrap();
    assert!(miauflix_gate::tls::self_signed::reencrypt(&store, &reloaded).await.unwrap());
    assert!(miauflix_gate::vpn::load_key(&store, &reloaded).unwrap().is_some());
    miauflix_gate::auth::stream_keys::StreamKeys::load_or_init(&store, &reloaded).await.unwrap();
    assert_eq!(miauflix_gate::tls::acme::reencrypt(&store, &reloaded).await.unwrap(), 2);
    assert!(miauflix_gate::secrets::get(&store, &reloaded, "miauflix_proxy_secret").unwrap().is_some());
    store.close().await;
}

#[tokio::test]
async fn retiring_a_key_that_still_seals_a_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gate.redb")).unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let keyring = Keyring::load_or_init(&store, &master).await.unwrap();
    let old = keyring.active_key_id();
    let audit = miauflix_gate::audit::Audit::new(store.clone(), Default::default());
    let client = miauflix_gate::audit::ClientInfo::default();
    miauflix_gate::auth::stream_keys::StreamKeys::load_or_init(&store, &keyring).await.unwrap();
    miauflix_gate::tls::acme::store_account_key(&store, &keyring, &[], "https://ca.example/dir", b"k").await.unwrap();
    // A new key without re-sealing: both values still need the old one.
    keyring.add_key(&store, &master).await.unwrap();
    let err = miauflix_gate::maintenance::retire(&store, &keyring, old, &audit, &client).await.unwrap_err().to_string();
    assert!(err.contains("still seals 2 value(s)") && err.contains("stream-URL key"), "{err}");
    assert!(keyring.key_ids().contains(&old));
    assert!(miauflix_gate::maintenance::retire(&store, &keyring, 99, &audit, &client).await.is_err());
    store.close().await;
}

#[test]
fn cli_retires_the_old_key_after_a_rotation_and_the_gate_starts_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];
    common::Gate::start(&data, &[]).terminate();
    let (code, _, err) = common::run_cli(&["keys", "retire", "--key-id", "1"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("active key") && err.lines().count() == 1, "{err}");
    let (code, _, err) = common::run_cli(&["keys", "rotate"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = common::run_cli(&["keys", "retire", "--key-id", "1"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data key 1 retired"), "{out}");
    // Every sealed value the gate loads at start opens with the new key alone.
    let gate = common::Gate::start(&data, &[]);
    assert!(gate.terminate().success());
}
