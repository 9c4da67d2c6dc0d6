//! The command line: `serve` (default), `config check`, `healthcheck`, and the admin
//! commands (`user`, `sessions`, `keys`, `audit`, `backup`, `restore`, `vpn`), which go to the
//! running gate over its admin socket, or open the store directly when no gate runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::admin::{AdminCommand, Reply, Response, Secret};
use crate::auth::Role;
use crate::config::{Config, LogFormat, Overrides};

/// `--version`: the crate version and the git commit it was built from
/// (`MIAUFLIX_GIT_COMMIT` at build time, set by `just release`).
pub static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| match option_env!("MIAUFLIX_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("{} (commit {c})", env!("CARGO_PKG_VERSION")),
        _ => format!("{} (commit unknown)", env!("CARGO_PKG_VERSION")),
    });

#[derive(Debug, Parser)]
#[command(name = "miauflix-gate", version = VERSION.as_str(), about = "The security gate in front of a Miauflix media server")]
pub struct Cli {
    /// Machine-readable output (JSON) for admin commands.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// Users, by email (through the running gate, or the data file when it is stopped).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Sessions of a user.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// A consistent snapshot of the data file, written 0600 (the master key is not in it).
    Backup {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Replace the data file with a backup (gate stopped; the replaced file is kept aside).
    Restore {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// The WireGuard supervisor.
    Vpn {
        #[command(subcommand)]
        command: VpnCommand,
    },
    /// Named secrets for routes' upstream_headers (write-only).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log.
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
    /// Delete an old data key; refused while any value is still sealed with it.
    Retire {
        #[arg(long, value_name = "ID")]
        key_id: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        #[arg(long)]
        email: String,
        /// admin | user | guest
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Every user.
    List,
    /// Change a user's role.
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    /// Disable a user (their sessions end at once).
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled user.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// Set a new password (read from standard input); signs the user out everywhere.
    ResetPassword {
        #[arg(long)]
        email: String,
    },
    /// Lift a sign-in lockout.
    Unlock {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// A user's live sessions.
    List {
        #[arg(long)]
        email: String,
    },
    /// End one session (`--session ID`) or all of a user's sessions.
    Revoke {
        #[arg(long)]
        email: String,
        #[arg(long)]
        session: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VpnCommand {
    /// Tunnel state.
    Status,
    /// Store the WireGuard private key (read from standard input).
    SetKey,
    /// Reconnect now.
    Reconnect,
    /// Stop supervising the tunnel.
    Disable,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a named secret (its value read from standard input); never shown again.
    Set { name: String },
    /// Names, when each was set and its data key (never a value).
    List,
    /// Delete a named secret.
    Delete { name: String },
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
        Err(e) => {
            eprintln!("miauflix-gate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { command: ConfigCommand::Check } => {
            for w in config.warnings() {
                eprintln!("miauflix-gate: warning: {w}");
            }
            println!(
                "configuration is valid (listen {}, tls {}, data {})",
                config.listen,
                config.tls.mode.as_str(),
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Command::Restore { from } => {
            let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
            match runtime.block_on(crate::maintenance::restore(&config, &from)) {
                Ok(aside) => {
                    println!(
                        "restored {} into {}; the replaced data file is kept at {}",
                        from.display(),
                        config.store_path().display(),
                        aside.map(|p| p.display().to_string()).unwrap_or_else(|| "(there was none)".into())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("miauflix-gate: {}", format!("{e:#}").replace('\n', " "));
                    ExitCode::FAILURE
                }
            }
        }
        cmd @ (Command::User { .. }
        | Command::Sessions { .. }
        | Command::Backup { .. }
        | Command::Vpn { .. }
        | Command::Secrets { .. }
        | Command::Keys { .. }
        | Command::Audit { .. }) => admin_command(&config, cmd, cli.json),
        Command::Healthcheck { timeout } => {
            let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
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
            // What `config check` warns about, said once at start too.
            for w in config.warnings() {
                tracing::warn!(warning = %w, "configuration");
            }
            raise_nofile_limit(
                config.http.max_connections,
                config.http.max_upstream_requests.saturating_add(config.http.max_tunnels.saturating_mul(2)),
            );
            let Some(runtime) = runtime(true) else { return ExitCode::FAILURE };
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

/// Raises the soft descriptor limit to the hard one (systemd's soft default is 1024; the unit
/// sets 65536) and warns when the connection cap could exceed it: each client connection
/// may hold an upstream connection as well.
fn raise_nofile_limit(max_connections: usize, max_upstream: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    // Listeners, the store, the admin socket, logs and the VPN's helpers need a few more.
    // Each client connection, its own upstream connection, the shared pool's upstream sockets,
    // and both sockets of each WebSocket tunnel (no longer counted as a client connection).
    let needed = (max_connections as u64).saturating_mul(2).saturating_add(max_upstream as u64).saturating_add(64);
    if needed > soft {
        tracing::warn!(
            limit = soft,
            max_connections,
            needed,
            "the descriptor limit (RLIMIT_NOFILE) is below what http.max_connections may use; raise LimitNOFILE or lower the cap"
        );
    } else {
        tracing::debug!(limit = soft, "descriptor limit");
    }
}

/// A tokio runtime (multi-threaded for `serve`, one thread for the short commands); on
/// failure the one-line error is already printed.
fn runtime(multi_thread: bool) -> Option<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    match builder.enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("miauflix-gate: cannot start runtime: {e}");
            None
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

/// Reads a password from standard input (one line; the trailing newline is dropped).
fn read_secret(what: &str) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{what} (input is visible; pipe it in to avoid that): ");
    }
    let mut text = String::new();
    stdin.lock().take(4096).read_to_string(&mut text)?;
    let line = text.lines().next().unwrap_or("").to_string();
    zeroize::Zeroize::zeroize(&mut text);
    if line.is_empty() {
        anyhow::bail!("no {what} on standard input");
    }
    Ok(line)
}

fn role(r: &str) -> anyhow::Result<Role> {
    Role::parse(r).ok_or_else(|| anyhow::anyhow!("role must be admin, user or guest, not {r:?}"))
}

fn time_ms(name: &str, v: Option<String>) -> anyhow::Result<Option<i64>> {
    v.map(|v| {
        crate::audit::parse_rfc3339_ms(&v)
            .ok_or_else(|| anyhow::anyhow!("--{name} must be an RFC 3339 time such as 2026-11-29T08:00:00Z"))
    })
    .transpose()
}

impl Command {
    /// The admin command this CLI command asks for, and where its payload goes; `secret`
    /// reads a password or key (its prompt) from standard input.
    fn into_admin(
        self,
        secret: impl FnOnce(&str) -> anyhow::Result<Secret>,
    ) -> anyhow::Result<(AdminCommand, Option<PathBuf>)> {
        use AdminCommand as A;
        let cmd = match self {
            Command::User { command } => match command {
                UserCommand::Add { email, role: r, display_name } => {
                    let password = secret("password")?;
                    A::UserAdd { email, role: role(&r)?, display_name, password }
                }
                UserCommand::List => A::UserList {},
                UserCommand::SetRole { email, role: r } => A::UserSetRole { email, role: role(&r)? },
                UserCommand::Disable { email } => A::UserDisable { email },
                UserCommand::Enable { email } => A::UserEnable { email },
                UserCommand::ResetPassword { email } => {
                    A::UserResetPassword { email, password: secret("new password")? }
                }
                UserCommand::Unlock { email } => A::UserUnlock { email },
            },
            Command::Sessions { command: SessionsCommand::List { email } } => A::SessionsList { email },
            Command::Sessions { command: SessionsCommand::Revoke { email, session } } => {
                A::SessionsRevoke { email, session }
            }
            Command::Backup { out } => return Ok((A::Backup {}, Some(out))),
            Command::Vpn { command } => match command {
                VpnCommand::Status => A::VpnStatus {},
                VpnCommand::SetKey => A::VpnSetKey { private_key: secret("WireGuard private key")? },
                VpnCommand::Reconnect => A::VpnReconnect {},
                VpnCommand::Disable => A::VpnDisable {},
            },
            Command::Secrets { command } => match command {
                SecretsCommand::Set { name } => A::SecretsSet { name, value: secret("secret value")? },
                SecretsCommand::List => A::SecretsList {},
                SecretsCommand::Delete { name } => A::SecretsDelete { name },
            },
            Command::Keys { command: KeysCommand::Rotate } => A::KeysRotate {},
            Command::Keys { command: KeysCommand::Retire { key_id } } => A::KeysRetire { key_id },
            Command::Audit { command: AuditCommand::Verify } => A::AuditVerify {},
            Command::Audit { command: AuditCommand::Export { since, until, out } } => {
                let cmd = A::AuditExport { since_ms: time_ms("since", since)?, until_ms: time_ms("until", until)? };
                return Ok((cmd, out));
            }
            _ => anyhow::bail!("not an admin command"),
        };
        Ok((cmd, None))
    }
}

/// Where a payload goes: a new 0600 file renamed over `--out` when complete (an existing file
/// is replaced, never written through, so neither its old mode nor a symlink there survives),
/// or standard output.
enum PayloadSink {
    File(crate::store::files::Replacement),
    Stdout(std::io::BufWriter<std::io::Stdout>),
}

impl PayloadSink {
    fn open(out: Option<&PathBuf>) -> anyhow::Result<PayloadSink> {
        Ok(match out {
            Some(path) => PayloadSink::File(
                crate::store::files::Replacement::new(path, 0o600)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
            ),
            None => PayloadSink::Stdout(std::io::BufWriter::new(std::io::stdout())),
        })
    }

    fn writer(&mut self) -> &mut dyn std::io::Write {
        match self {
            PayloadSink::File(f) => f,
            PayloadSink::Stdout(s) => s,
        }
    }

    fn finish(self, out: Option<&PathBuf>) -> anyhow::Result<()> {
        use std::io::Write;
        match self {
            PayloadSink::File(f) => f.commit().map_err(|e| {
                anyhow::anyhow!("cannot write {}: {e}", out.map(|p| p.display().to_string()).unwrap_or_default())
            }),
            PayloadSink::Stdout(mut s) => s.flush().map_err(Into::into),
        }
    }
}

async fn run_admin(config: &Config, cmd: AdminCommand, out: Option<&PathBuf>) -> anyhow::Result<(Reply, bool)> {
    use tokio::io::AsyncReadExt;
    let sock = config.admin_socket_path();
    if let Some((resp, mut reader)) = crate::admin::socket::send(&sock, &cmd).await? {
        let (reply, payload_bytes) = match resp {
            Response::Ok { reply, payload_bytes } => (reply, payload_bytes),
            Response::Error(error) => anyhow::bail!("{error}"),
        };
        if payload_bytes > 0 {
            let mut sink = PayloadSink::open(out)?;
            let mut left = payload_bytes;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = reader.read(&mut buf[..want]).await?;
                if n == 0 {
                    anyhow::bail!("the gate ended the transfer early");
                }
                sink.writer().write_all(&buf[..n])?;
                left -= n as u64;
            }
            sink.finish(out)?;
        }
        return Ok((reply, true));
    }
    // No gate answers: open the data file directly and run the same command.
    let core = crate::core::Core::open(config.clone(), crate::core::Opening::Offline).await?;
    let result = cmd.apply(&core, crate::admin::socket::own_uid()).await;
    let outcome = match result {
        // Display only: it already holds the cause, so the `{:#}` chain would repeat it.
        Err(e) => Err(anyhow::anyhow!("{e}")),
        Ok((reply, payload)) => {
            let written = match payload {
                None => Ok(()),
                Some(crate::admin::Payload::TempFile(path)) => {
                    let r = PayloadSink::open(out).and_then(|mut s| {
                        // Our own temporary file in the data directory: never through a symlink.
                        let mut f = crate::store::files::open_existing(&path)?;
                        std::io::copy(&mut f, s.writer())?;
                        s.finish(out)
                    });
                    let _ = std::fs::remove_file(&path);
                    r
                }
            };
            written.map(|_| (reply, false))
        }
    };
    core.store.close().await;
    outcome
}

fn admin_command(config: &Config, cmd: Command, json: bool) -> ExitCode {
    let fail = |e: anyhow::Error| {
        eprintln!("miauflix-gate: {}", format!("{e:#}").replace('\n', " "));
        ExitCode::FAILURE
    };
    let (cmd, out) = match cmd.into_admin(|what| read_secret(what).map(Secret::new)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let Some(runtime) = runtime(false) else { return ExitCode::FAILURE };
    let (reply, online) = match runtime.block_on(run_admin(config, cmd, out.as_ref())) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if json {
        println!("{}", reply.data());
    } else {
        print_human(&reply, out.as_ref(), config, online);
    }
    if matches!(&reply, Reply::AuditVerified(r) if !r.ok) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A number, or `null` (what the JSON showed) when there is none.
fn or_null(n: Option<u64>) -> String {
    n.map_or_else(|| "null".into(), |n| n.to_string())
}

fn print_human(reply: &Reply, out: Option<&PathBuf>, config: &Config, online: bool) {
    let user_line = |u: &crate::auth::UserView| {
        let state = if u.disabled { "disabled" } else { "enabled" };
        format!("{:<32} {:<6} {:<9} {}", u.email, u.role.as_str(), state, u.id)
    };
    match reply {
        Reply::Users(users) => {
            println!("{:<32} {:<6} {:<9} id", "email", "role", "state");
            for u in users {
                println!("{}", user_line(u));
            }
        }
        Reply::User(u) => println!("{}", user_line(u)),
        Reply::PasswordReset { email, sessions_revoked } => {
            println!("password set for {email}; {sessions_revoked} session(s) ended")
        }
        Reply::Unlocked { email, was_locked } => {
            println!("{email}: {}", if *was_locked { "unlocked" } else { "was not locked" })
        }
        Reply::Sessions(sessions) => {
            for s in sessions {
                println!("{}  last used {}  from {}", s.id, s.last_used_at, s.ip);
            }
        }
        Reply::Revoked { email, revoked } => println!("{revoked} session(s) of {email} ended"),
        Reply::Rotated(r) => println!(
            "rotated: data key {} is active, signing key {} signs, {} encrypted field(s) re-encrypted{}",
            r.data_key_id,
            r.signing_kid,
            r.reencrypted_fields,
            if online { " (live in the running gate)" } else { "" }
        ),
        Reply::Retired { retired, data_keys } => {
            let left: Vec<String> = data_keys.iter().map(u32::to_string).collect();
            println!("data key {retired} retired; data keys left: [{}]", left.join(","))
        }
        Reply::AuditVerified(r) if r.ok => {
            println!("audit chain verifies: records {}..{} ({} checked)", r.first, r.last, r.checked)
        }
        Reply::AuditVerified(r) => eprintln!(
            "miauflix-gate: audit chain broken at record {} ({}); records {}..{} before it verify",
            or_null(r.first_bad),
            r.reason.as_deref().unwrap_or(""),
            r.first,
            r.first_bad.unwrap_or(1).saturating_sub(1)
        ),
        Reply::AuditExported { records } => eprintln!("exported {records} record(s)"),
        Reply::Backup { bytes, .. } => println!(
            "backup written to {} ({bytes} bytes, 0600). The master key is NOT in it: keep {} safe; restore needs it.",
            out.map(|p| p.display().to_string()).unwrap_or_default(),
            config.master_key_path().display()
        ),
        Reply::Vpn(s) => {
            let state = s.state.as_str();
            match (s.server.as_deref(), s.reason.as_deref()) {
                (Some(server), _) if state == "up" || state == "degraded" => println!(
                    "vpn: {state} via {server} ({}), handshake {} s ago, kill switch {}",
                    s.endpoint.as_deref().unwrap_or("?"),
                    or_null(s.handshake_age_secs),
                    if s.killswitch.installed { "on" } else { "off" }
                ),
                (_, Some(reason)) => println!("vpn: {state} ({reason})"),
                _ => println!("vpn: {state}"),
            }
        }
        Reply::VpnStopped { reason, .. } => println!("vpn: stopped ({reason})"),
        Reply::Message { message } => println!("{message}"),
        Reply::Secret(s) => println!("secret {} set (data key {})", s.name, s.key_id),
        Reply::Secrets(list) => {
            for s in list {
                println!("{}\tset {}\tdata key {}", s.name, s.updated_at, s.key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_stdin(what: &str) -> anyhow::Result<Secret> {
        panic!("{what} read from standard input")
    }

    #[test]
    fn subcommands_become_typed_admin_commands() {
        let set_role =
            |r: &str| Command::User { command: UserCommand::SetRole { email: "a@b.c".into(), role: r.into() } };
        let (cmd, out) = set_role("guest").into_admin(no_stdin).unwrap();
        assert!(matches!(cmd, AdminCommand::UserSetRole { role: Role::Guest, .. }) && out.is_none());
        let err = set_role("emperor").into_admin(no_stdin).unwrap_err().to_string();
        assert_eq!(err, r#"role must be admin, user or guest, not "emperor""#);
        let add = Command::User {
            command: UserCommand::Add { email: "a@b.c".into(), role: "user".into(), display_name: None },
        };
        let (cmd, _) = add.into_admin(|what| Ok(Secret::new(format!("{what}-value")))).unwrap();
        let AdminCommand::UserAdd { password, .. } = cmd else { panic!("{cmd:?}") };
        assert_eq!(&*password.require("the password").unwrap(), "password-value");
        let export = |since: &str| Command::Audit {
            command: AuditCommand::Export { since: Some(since.into()), until: None, out: Some("x".into()) },
        };
        let (cmd, out) = export("1970-01-01T00:00:01Z").into_admin(no_stdin).unwrap();
        assert!(matches!(cmd, AdminCommand::AuditExport { since_ms: Some(1000), until_ms: None }));
        assert_eq!(out, Some(PathBuf::from("x")));
        assert!(export("yesterday").into_admin(no_stdin).unwrap_err().to_string().starts_with("--since must be"));
        assert!(Command::Serve.into_admin(no_stdin).is_err());
    }
}
