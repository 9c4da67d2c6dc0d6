//! Keyring field encryption, master key file handling and argon2id hashing.

use std::os::unix::fs::PermissionsExt;

use miauflix_gate::config::PasswordConfig;
use miauflix_gate::crypto::{FieldContext, Keyring, MasterKey, PasswordHasher};
use miauflix_gate::store::Store;
use proptest::prelude::*;
use zeroize::Zeroizing;

fn ring() -> Keyring {
    Keyring::from_keys(vec![(1, [1u8; 32]), (2, [2u8; 32])])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trips_any_value(value in proptest::collection::vec(any::<u8>(), 0..2048), record in "[a-z0-9-]{0,40}") {
        let k = ring();
        let ctx = FieldContext::new("users", "totp_secret", &record);
        let sealed = k.encrypt(&ctx, &value).unwrap();
        prop_assert_eq!(&sealed[0], &1u8, "version byte");
        prop_assert_eq!(Keyring::key_id_of(&sealed).unwrap(), 2, "the newest key encrypts");
        prop_assert_eq!(sealed.len(), 1 + 4 + 12 + value.len() + 16);
        prop_assert_eq!(&k.decrypt(&ctx, &sealed).unwrap()[..], &value[..]);
    }

    #[test]
    fn any_flipped_bit_is_rejected(value in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = ring();
        let ctx = FieldContext::new("secrets", "wg_private_key", "wg0");
        let mut sealed = k.encrypt(&ctx, &value).unwrap();
        let i = pos.index(sealed.len());
        sealed[i] ^= 1 << bit;
        prop_assert!(k.decrypt(&ctx, &sealed).is_err());
    }

    #[test]
    fn a_value_moved_to_another_place_is_rejected(value in proptest::collection::vec(any::<u8>(), 0..256), which in 0usize..3) {
        let k = ring();
        let ctx = FieldContext::new("users", "totp_secret", "user-1");
        let sealed = k.encrypt(&ctx, &value).unwrap();
        let other = match which {
            0 => FieldContext::new("upstreams", "totp_secret", "user-1"),
            1 => FieldContext::new("users", "api_key", "user-1"),
            _ => FieldContext::new("users", "totp_secret", "user-2"),
        };
        prop_assert!(k.decrypt(&other, &sealed).is_err());
        // Concatenation ambiguity: ("users","totp_secret") vs ("userst","otp_secret").
        let shifted = FieldContext::new("userst", "otp_secret", "user-1");
        prop_assert!(k.decrypt(&shifted, &sealed).is_err());
    }

    #[test]
    fn truncated_values_are_rejected(value in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..100) {
        let k = ring();
        let ctx = FieldContext::new("t", "f", "r");
        let sealed = k.encrypt(&ctx, &value).unwrap();
        let cut = cut.min(sealed.len() - 1);
        prop_assert!(k.decrypt(&ctx, &sealed[..cut]).is_err());
    }
}

#[test]
fn nonces_differ_for_the_same_value() {
    let k = ring();
    let ctx = FieldContext::new("t", "f", "r");
    let a = k.encrypt(&ctx, b"same").unwrap();
    let b = k.encrypt(&ctx, b"same").unwrap();
    assert_ne!(a, b);
}

#[test]
fn old_keys_still_decrypt_after_a_new_key_is_added() {
    let old = Keyring::from_keys(vec![(1, [1u8; 32])]);
    let ctx = FieldContext::new("t", "f", "r");
    let sealed = old.encrypt(&ctx, b"secret").unwrap();
    let rotated = ring();
    assert_eq!(rotated.active_key_id(), 2);
    assert_eq!(&rotated.decrypt(&ctx, &sealed).unwrap()[..], b"secret");
    // A ring without key 1 says which key is missing.
    let only_new = Keyring::from_keys(vec![(2, [2u8; 32])]);
    assert!(only_new.decrypt(&ctx, &sealed).unwrap_err().to_string().contains("id 1"));
}

#[tokio::test]
async fn keyring_persists_wrapped_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([5u8; 32]);
    let ctx = FieldContext::new("t", "f", "r");
    let (sealed, sealed2) = {
        let store = Store::open(&dir.path().join("gate.redb")).unwrap();
        let k = Keyring::load_or_init(&store, &master).await.unwrap();
        assert_eq!(k.key_ids(), vec![1]);
        let sealed = k.encrypt(&ctx, b"one").unwrap();
        let id = k.add_key(&store, &master).await.unwrap();
        assert_eq!(id, 2);
        let sealed2 = k.encrypt(&ctx, b"two").unwrap();
        store.close().await;
        (sealed, sealed2)
    };
    // The data keys never appear in the file in the clear: the file does not decrypt
    // without the master key.
    let store = Store::open(&dir.path().join("gate.redb")).unwrap();
    let k = Keyring::load_or_init(&store, &master).await.unwrap();
    assert_eq!(k.key_ids(), vec![1, 2]);
    assert_eq!(k.active_key_id(), 2);
    assert_eq!(&k.decrypt(&ctx, &sealed).unwrap()[..], b"one");
    assert_eq!(&k.decrypt(&ctx, &sealed2).unwrap()[..], b"two");
    let wrong = MasterKey::from_bytes([6u8; 32]);
    let err = Keyring::load_or_init(&store, &wrong).await.unwrap_err();
    assert!(err.to_string().contains("master key does not match"), "{err}");
    store.close().await;
}

#[test]
fn master_key_file_is_created_0600_and_refused_when_open_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    MasterKey::load_or_create(&path).unwrap();
    for mode in [0o640, 0o604, 0o644, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("group or others"), "{e}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    MasterKey::load_or_create(&path).unwrap();
    // Wrong size is refused, and the file is left as it was.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, b"short").unwrap();
    assert!(MasterKey::load_or_create(&path).unwrap_err().to_string().contains("32 raw bytes"));
    assert_eq!(std::fs::read(&path).unwrap(), b"short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2id_hashes_verify_and_report_rehash() {
    let cfg = PasswordConfig { max_concurrent: Some(2), ..Default::default() };
    let h = PasswordHasher::new(&cfg).unwrap();
    let phc = h.hash(Zeroizing::new("correct horse battery".into())).await.unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(h.verify(Some(phc.clone()), Zeroizing::new("correct horse battery".into())).await.unwrap());
    assert!(!h.verify(Some(phc.clone()), Zeroizing::new("wrong".into())).await.unwrap());
    // Unknown user: runs the dummy hash, always false.
    assert!(!h.verify(None, Zeroizing::new("correct horse battery".into())).await.unwrap());
    assert!(!h.needs_rehash(&phc));
    let stronger = PasswordHasher::new(&PasswordConfig { iterations: 3, ..cfg }).unwrap();
    assert!(stronger.needs_rehash(&phc));
    assert!(stronger.needs_rehash("not a phc string"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_flood_queues_without_starving_the_runtime() {
    let h = PasswordHasher::new(&PasswordConfig { max_concurrent: Some(1), ..Default::default() }).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.hash(Zeroizing::new("pw-pw-pw-pw-pw".into())).await }));
    }
    // While six hashes wait for one slot, the runtime still runs other tasks promptly:
    // count timer ticks that complete before the hashes finish.
    let ticker = tokio::spawn(async {
        let mut n = 0u32;
        for _ in 0..5 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            n += 1;
        }
        n
    });
    assert_eq!(ticker.await.unwrap(), 5);
    assert!(tasks.iter().any(|t| !t.is_finished()), "the hashes queue behind one slot");
    for t in tasks {
        assert!(t.await.unwrap().unwrap().starts_with("$argon2id$"));
    }
}

/// A caller that goes away mid-hash (a client that hung up) keeps its slot until the hash it
/// started really ends: dropping callers cannot run more hashes at once than the pool allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_hash_keeps_its_slot_until_it_ends() {
    // Costly enough that the hash is still running when its caller is dropped.
    let cfg = PasswordConfig { memory_kib: 65536, iterations: 4, max_concurrent: Some(1), ..Default::default() };
    let h = PasswordHasher::new(&cfg).unwrap();
    let abandoned = tokio::spawn({
        let h = h.clone();
        async move { h.hash(Zeroizing::new("pw-pw-pw-pw-pw".into())).await }
    });
    while h.slots() == 1 {
        tokio::task::yield_now().await;
    }
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(h.slots(), 0, "the slot stays taken while the abandoned hash runs");
    // And it comes back once that hash ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.slots() == 0 {
        assert!(std::time::Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
