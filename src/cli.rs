//! The command line: `serve` (default), `config check`, `healthcheck`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(name = "miauflix-gate", version, about = "The security gate in front of a Miauflix media server")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "MIAUFLIX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides MIAUFLIX_DATA_DIR and the file).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Main listener address (overrides MIAUFLIX_LISTEN and the file).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// TLS mode: self-signed | acme | manual | off.
    #[arg(long, global = true, value_name = "MODE")]
    pub tls: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gate (the default).
    Serve,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Key management (run while the gate is stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log (run while the gate is stopped; use the API while it runs).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Exit 0 when the running gate answers /healthz.
    Healthcheck {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// New field-encryption key and JWT signing key; re-encrypts every encrypted field.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 1 and name the first bad record if it fails.
    Verify,
    /// Write records as JSON Lines, oldest first.
    Export {
        /// RFC 3339 time; records at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time; records at or before.
        #[arg(long)]
        until: Option<String>,
        /// Output file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and exit.
    Check,
}

/// Exit code for configuration errors.
pub const EXIT_CONFIG: u8 = 2;

/// Runs the CLI and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides { data_dir: cli.data_dir.clone(), listen: cli.listen.clone(), tls: cli.tls.clone() };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(ConfigError(msg)) => {
            eprintln!("miauflix-gate: {msg}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { command: ConfigCommand::Check } => {
            println!(
                "configuration is valid (listen {}, tls {}, data {})",
                config.listen,
                config.tls.mode.as_str(),
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Command::Keys { command: KeysCommand::Rotate } => {
            init_logging(&config);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("miauflix-gate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::maintenance::rotate_keys(&config)) {
                Ok(r) => {
                    println!(
                        "rotated: data key {} is active, signing key {} signs, {} encrypted field(s) re-encrypted",
                        r.data_key_id, r.signing_kid, r.reencrypted_fields
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("miauflix-gate: {}", format!("{e:#}").replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit { command } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("miauflix-gate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                match command {
                    AuditCommand::Verify => {
                        let r = crate::maintenance::audit_verify(&config).await?;
                        if r.ok {
                            println!("audit chain verifies: records {}..{} ({} checked)", r.first, r.last, r.checked);
                        } else {
                            anyhow::bail!(
                                "audit chain broken at record {} ({}); records {}..{} before it verify",
                                r.first_bad.unwrap_or(0),
                                r.reason.unwrap_or_default(),
                                r.first,
                                r.first_bad.unwrap_or(1).saturating_sub(1)
                            );
                        }
                        Ok(())
                    }
                    AuditCommand::Export { since, until, out } => {
                        let n = match out {
                            Some(path) => {
                                let file = std::fs::File::create(&path)
                                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                                let mut w = std::io::BufWriter::new(file);
                                crate::maintenance::audit_export(&config, since.as_deref(), until.as_deref(), &mut w)
                                    .await?
                            }
                            None => {
                                let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                                crate::maintenance::audit_export(&config, since.as_deref(), until.as_deref(), &mut w)
                                    .await?
                            }
                        };
                        eprintln!("exported {n} record(s)");
                        Ok(())
                    }
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("miauflix-gate: {}", format!("{e:#}").replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { timeout } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("miauflix-gate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::healthcheck::check(&config, Duration::from_secs(timeout))) {
                Ok(()) => {
                    println!("healthy");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("miauflix-gate: unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            init_logging(&config);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("miauflix-gate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // One line, printed once: the cause chain joined by ": ".
                    let line = format!("{e:#}").replace('\n', " ");
                    eprintln!("miauflix-gate: {line}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
