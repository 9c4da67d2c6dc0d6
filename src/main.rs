// mimalloc: the proxy path allocates per request; glibc malloc showed up at ~10% of CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The one crypto provider, before anything touches rustls.
    miauflix_gate::tls::install_crypto_provider();
    miauflix_gate::cli::run()
}
