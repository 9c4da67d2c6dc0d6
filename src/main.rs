fn main() -> std::process::ExitCode {
    // The one crypto provider, before anything touches rustls.
    miauflix_gate::tls::install_crypto_provider();
    miauflix_gate::cli::run()
}
