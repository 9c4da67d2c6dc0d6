//! `fuzz <target>`: one AFL++ persistent-mode loop over `target`'s property.

fn main() {
    let target = std::env::args().nth(1).unwrap_or_default();
    if !miauflix_gate_fuzz::properties::TARGETS.contains(&target.as_str()) {
        eprintln!("usage: fuzz <{}>", miauflix_gate_fuzz::properties::TARGETS.join("|"));
        std::process::exit(2);
    }
    // A panic aborts the process (the release profile), so no state outlives one.
    let harness = std::panic::AssertUnwindSafe(miauflix_gate_fuzz::properties::Harness::new());
    afl::fuzz!(|data: &[u8]| {
        run(&harness, &target, data);
    });
}

fn run(h: &std::panic::AssertUnwindSafe<std::sync::Arc<miauflix_gate_fuzz::properties::Harness>>, t: &str, d: &[u8]) {
    miauflix_gate_fuzz::properties::check(&h.0, t, d);
}
