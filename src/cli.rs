//! The command line (SPEC §8): `serve`, `demo`, the admin commands, `config check`, `health`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

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
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration file.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let accounts = Arc::new(crate::accounts::Accounts::open(&config, clock)?);
    let state = Arc::new(AppState::new(config, accounts)?);
    let app = Application::build(state).await?;
    tracing::info!(addr = %app.local_addr(), "portcullis is listening");
    app.run(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (systemd, Docker, Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
