//! The command line (SPEC §8): `serve`, `demo`, the admin commands, `config check`, `health`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::admin::{Command as AdminCommand, Outcome, Request};
use crate::config::{Config, LogFormat};
use crate::server::Application;
use crate::state::AppState;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "An authenticating reverse proxy: password + TOTP sign-in in front of your web apps."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "PORTCULLIS_CONFIG",
        default_value = "config.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Serve,
    /// One command: the proxy, two sample apps and a demo user on 127.0.0.1:8080.
    Demo,
    /// Check the configuration file and print "ok" or every problem found.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Exit 0 when the running server's /.portcullis/healthz answers.
    Health,
    /// Manage user accounts (through the running server, or on the store when none runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Show the audit trail, newest first.
    Audit {
        /// Only events about this user.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// At most this many events.
        #[arg(long, value_name = "N", default_value_t = crate::admin::DEFAULT_AUDIT_LIMIT)]
        limit: usize,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Back up or restore the whole store as JSON lines (secrets stay encrypted).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The keys that sign the identity assertions.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Publish a new signing key now; it starts signing 10 minutes later, once apps
    /// caching the JWKS have it. Works while the server runs.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account and print its one-time activation link (on the last line).
    Add {
        /// The user name people sign in with.
        name: String,
        #[arg(long)]
        email: String,
        /// Display name sent to the apps (default: the user name).
        #[arg(long = "name", value_name = "DISPLAY NAME")]
        display_name: Option<String>,
        /// Give access to this app (repeat for several).
        #[arg(long = "app", value_name = "ID")]
        apps: Vec<String>,
        /// Read an initial password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List all accounts.
    List {
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one account: status, 2FA, apps, lockout.
    Show {
        name: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop an account from signing in and end its sessions at once.
    Disable { name: String },
    /// Let a disabled account sign in again (also lifts a sign-in lock).
    Enable { name: String },
    /// Delete an account and its sessions.
    Delete { name: String },
    /// Remove the account's authenticator; the next sign-in shows a new QR code.
    #[command(name = "reset-2fa")]
    Reset2fa { name: String },
    /// Set a new password, read from the first line of standard input.
    SetPassword {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Give an account access to an app.
    Grant { name: String, app: String },
    /// Take an app away from an account.
    Revoke { name: String, app: String },
    /// Import existing users from CSV: name,email,hash,apps (Argon2 or bcrypt hashes).
    Import {
        /// The CSV file ("-" for standard input).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Write the whole store as JSON lines to standard output.
    Export,
    /// Read an export from standard input into an empty store.
    Import,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration file.
    Check,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version succeed; a usage mistake fails with 1 like every other
            // failure (SPEC §8), not clap's customary 2.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.config)?;
            init_logging(config.server.log_format);
            runtime()?.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => crate::demo::run(),
        Command::Config {
            command: ConfigCommand::Check,
        } => match Config::load(&cli.config) {
            Ok(_) => {
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Health => {
            let config = load_config(&cli.config)?;
            runtime()?.block_on(health(&config))
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let config = load_config(&cli.config)?;
            refuse_unless_owner(&config.server.data_dir)?;
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let next = crate::identity::KeyRing::begin_rotation(&config.server.data_dir, now)?;
            println!(
                "Published a new signing key, {}, in the JWKS. It signs the assertions from {} \
                 on, when apps that cache the JWKS have fetched it. A running server picks it \
                 up within a minute; nothing else to do.",
                next.kid,
                crate::admin::format::rfc3339(next.signs_from)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => admin(&cli.config, user_request(command)),
        Command::Audit { user, limit, json } => admin(
            &cli.config,
            Ok(Request::new(
                AdminCommand::Audit { user, limit, json },
                None,
            )),
        ),
        Command::Store {
            command: StoreCommand::Export,
        } => admin(
            &cli.config,
            Ok(Request::new(AdminCommand::StoreExport, None)),
        ),
        Command::Store {
            command: StoreCommand::Import,
        } => admin(
            &cli.config,
            read_stdin_all(
                "portcullis store import < backup.jsonl",
                crate::admin::MAX_IMPORT_BYTES,
            )
            .map(|text| Request::new(AdminCommand::StoreImport, Some(text))),
        ),
    }
}

/// Runs an admin command (through the server's socket or on the store) and prints what it
/// says. A failure is one sentence on stderr and exit code 1.
fn admin(config_path: &Path, request: Result<Request, String>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let request = match request {
        Ok(r) => r,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let outcome = crate::admin::client::run(&config, request);
    Ok(print_outcome(&outcome))
}

fn print_outcome(outcome: &Outcome) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let wrote = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    drop(out);
    eprint!("{}", outcome.stderr);
    match (wrote, outcome.code) {
        (Err(e), _) => {
            eprintln!("The output could not be written: {e}.");
            ExitCode::FAILURE
        }
        (Ok(()), 0) => ExitCode::SUCCESS,
        (Ok(()), code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
    }
}

fn user_request(command: UserCommand) -> Result<Request, String> {
    let request = match command {
        UserCommand::Add {
            name,
            email,
            display_name,
            apps,
            password_stdin,
        } => {
            let input = if password_stdin {
                Some(read_password(true)?)
            } else {
                None
            };
            Request::new(
                AdminCommand::UserAdd {
                    name,
                    email,
                    display_name,
                    apps,
                    password_stdin,
                },
                input,
            )
        }
        UserCommand::List { json } => Request::new(AdminCommand::UserList { json }, None),
        UserCommand::Show { name, json } => {
            Request::new(AdminCommand::UserShow { name, json }, None)
        }
        UserCommand::Disable { name } => Request::new(AdminCommand::UserDisable { name }, None),
        UserCommand::Enable { name } => Request::new(AdminCommand::UserEnable { name }, None),
        UserCommand::Delete { name } => Request::new(AdminCommand::UserDelete { name }, None),
        UserCommand::Reset2fa { name } => Request::new(AdminCommand::UserReset2fa { name }, None),
        UserCommand::SetPassword { name, .. } => Request::new(
            AdminCommand::UserSetPassword { name },
            Some(read_password(true)?),
        ),
        UserCommand::Grant { name, app } => {
            Request::new(AdminCommand::UserGrant { name, app }, None)
        }
        UserCommand::Revoke { name, app } => {
            Request::new(AdminCommand::UserRevoke { name, app }, None)
        }
        UserCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                read_stdin_all(
                    "portcullis user import - < users.csv",
                    crate::admin::MAX_INPUT_BYTES,
                )?
            } else {
                read_file_limited(&file)?
            };
            Request::new(AdminCommand::UserImport, Some(text))
        }
    };
    Ok(request)
}

/// Reads a whole UTF-8 file of at most `MAX_INPUT_BYTES`.
fn read_file_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("{} could not be opened: {e}.", path.display()))?;
    let mut bytes = Vec::new();
    file.take(crate::admin::MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{} could not be read: {e}.", path.display()))?;
    if bytes.len() > crate::admin::MAX_INPUT_BYTES {
        return Err(crate::admin::too_large(crate::admin::MAX_INPUT_BYTES));
    }
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "{} is not UTF-8 text. Save it as UTF-8 and try again.",
            path.display()
        )
    })
}

/// Reads all of standard input (at most `limit` bytes, UTF-8). Refuses a terminal:
/// the data is meant to be piped in, as `example` shows.
fn read_stdin_all(example: &str, limit: usize) -> Result<String, String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(format!(
            "Pipe the data in on standard input, e.g. `{example}`."
        ));
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("Standard input could not be read: {e}."))?;
    if bytes.len() > limit {
        return Err(crate::admin::too_large(limit));
    }
    String::from_utf8(bytes).map_err(|_| "Standard input is not UTF-8 text.".to_string())
}

/// The password for `--password-stdin`: the first line of standard input, without its line
/// ending. From a terminal it is asked for with echo off (twice when `confirm`), so it never
/// shows on screen; it is never an argument, so it never shows in `ps` either.
fn read_password(confirm: bool) -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = prompt_hidden("Password: ")?;
        if confirm {
            let mut again = prompt_hidden("Password again: ")?;
            let same = subtle::ConstantTimeEq::ct_eq(first.as_bytes(), again.as_bytes());
            zeroize::Zeroize::zeroize(&mut again);
            if !bool::from(same) {
                return Err("The two passwords are not the same. Try again.".into());
            }
        }
        return Ok(first);
    }
    read_line_from_stdin()
}

fn read_line_from_stdin() -> Result<String, String> {
    use std::io::{BufRead, Read};
    // A password longer than this is refused by the policy anyway; do not read megabytes.
    let limit = crate::auth::MAX_PASSWORD_BYTES as u64 + 3;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit)
        .read_until(b'\n', &mut bytes)
        .map_err(|e| format!("Standard input could not be read: {e}."))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        "The password on standard input is not UTF-8 text.".to_string()
    })
}

/// Asks on the terminal with echo turned off (by `stty`, which every Unix has).
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    use std::process::{Command as Process, Stdio};
    let stty = |arg: &str| {
        Process::new("stty")
            .arg(arg)
            .stdin(Stdio::inherit())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    eprint!("{prompt}");
    if !stty("-echo") {
        eprintln!();
        return Err("The terminal's echo could not be turned off, so the password would show. Pipe it in instead, e.g. `printf '%s\\n' \"$PASSWORD\" | portcullis user set-password NAME --password-stdin`.".into());
    }
    let line = read_line_from_stdin();
    stty("echo");
    eprintln!();
    line
}

/// Files this command writes must be readable by the server: a key made by root in the
/// data directory of an unprivileged server would stop that server at its next start.
/// And there must be a key to rotate: with a mistyped `-c` this would otherwise make a
/// new data directory somewhere.
fn refuse_unless_owner(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let no_key_yet = || {
        anyhow::anyhow!(
            "There is no signing key in {} yet. Start the server once (it makes the first key), then rotate; or check that -c names the right config.",
            data_dir.display()
        )
    };
    let meta = match std::fs::metadata(data_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_key_yet()),
        Err(e) => anyhow::bail!("{} cannot be read: {e}.", data_dir.display()),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        anyhow::bail!(
            "{} belongs to another user (uid {}). Run this as that user, the one the server runs as, e.g. `sudo -u <that user> portcullis keys rotate -c <config>`.",
            data_dir.display(),
            meta.uid()
        );
    }
    let index = data_dir
        .join(crate::identity::SIGNING_KEYS_DIR)
        .join("index.json");
    if !index.exists() {
        return Err(no_key_yet());
    }
    Ok(())
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(crate::server::runtime::build()?)
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into journald or `docker logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs aws-lc-rs as the process's one crypto provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    install_crypto_provider();
    let shutdown = shutdown_signal();
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let accounts = Arc::new(crate::accounts::Accounts::open(&config, clock)?);
    // Bound only now that this process holds the store, so a socket file already there is
    // a stale one (SPEC §6).
    let socket = crate::admin::socket::AdminSocket::bind(&crate::admin::socket_path(&config))?;
    let known_apps: Vec<String> = config.apps.iter().map(|a| a.id.clone()).collect();
    let state = Arc::new(AppState::new(config, accounts.clone())?);
    let app = Application::build(state).await?;
    tracing::info!(addr = %app.local_addr(), "portcullis is listening");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(socket.serve(accounts, known_apps, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    app.run(shutdown).await;
    let _ = stop_tx.send(true);
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (systemd, Docker, Kubernetes) or Ctrl-C. The SIGTERM handler is installed when
/// this is called, not when the future is first polled, so a server told to stop while it
/// is still starting stops gracefully too. Call it inside the tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        {
            match term {
                Some(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Asks the running server's healthz over the listener address in the config.
async fn health(config: &Config) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let host = config.server.auth_url.authority();
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET /.portcullis/healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let mut buf = Vec::new();
        if config.tls.is_some() {
            let connector = tls_connector_accepting_any_cert();
            let name = rustls_pki_types::ServerName::try_from(config.server.auth_url.host.clone())?;
            let mut tls = connector.connect(name, stream).await?;
            tls.write_all(request.as_bytes()).await?;
            tls.read_to_end(&mut buf).await?;
        } else {
            let mut stream = stream;
            stream.write_all(request.as_bytes()).await?;
            stream.read_to_end(&mut buf).await?;
        }
        anyhow::Ok(buf)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(buf)) if buf.starts_with(b"HTTP/1.1 200") => {
            println!("healthy");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(_)) => {
            eprintln!("the server at {addr} answered, but not healthy");
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("the server at {addr} is not answering: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("the server at {addr} did not answer within 5 seconds");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The health probe talks to our own listener on loopback; it checks liveness, not the
/// certificate (which names the public host, not 127.0.0.1).
fn tls_connector_accepting_any_cert() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )),
    }
}
