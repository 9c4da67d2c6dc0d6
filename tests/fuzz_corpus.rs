//! Replays every committed fuzz input — the seed corpora under `fuzz/corpus/<target>/` and the
//! crashes AFL++ found, kept under `fuzz/regressions/<target>/` — through the same properties
//! the fuzz binary checks, so a fixed crash stays fixed in the plain `cargo test`.

#[allow(dead_code)]
#[path = "../fuzz/src/properties.rs"]
mod properties;

#[test]
fn every_committed_fuzz_input_keeps_its_property() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let harness = properties::Harness::new();
    let mut replayed = 0;
    for target in properties::TARGETS {
        let mut seeds = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    properties::check(&harness, target, &data);
                }));
                assert!(ok.is_ok(), "{} breaks the {target} property", path.display());
                seeds += usize::from(dir == "corpus");
                replayed += 1;
            }
        }
        assert!(seeds > 0, "fuzz target {target} has no seed corpus");
    }
    println!("{replayed} fuzz inputs replayed");
}
