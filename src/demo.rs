//! `portcullis demo`: the proxy, two sample apps and a demo user in one command (SPEC §8).
//!
//! The demo is built from the same parts as `portcullis serve` — a `Config` parsed and
//! validated from TOML text, `Accounts`, `AppState`, `Application` — so what it shows is
//! what an operator gets. The browser test (`tests/it/browser.rs`) runs it on a free port.

pub mod sample_app;

use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::accounts::{Accounts, AccountsError, Actor};
use crate::auth::SecretToken;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::server::{Application, ServerError};
use crate::state::{AppState, StartError};
use crate::store::{Invitation, UserStatus};

/// The port the demo listens on, on 127.0.0.1.
pub const DEMO_PORT: u16 = 8080;
/// The data directory, relative to where the demo is started.
pub const DATA_DIR: &str = "demo-data";
pub const DEMO_USER: &str = "demo";
const DEMO_EMAIL: &str = "demo@example.com";
const DEMO_DISPLAY_NAME: &str = "Demo Partner";
/// The two apps: id, name, host.
const APPS: [(&str, &str, &str); 2] = [
    ("portal", "Partner Portal", "portal"),
    ("analytics", "Partner Analytics", "analytics"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("Port {port} on 127.0.0.1 is already in use: stop the program using it (perhaps another `portcullis demo`) and start the demo again.")]
    PortInUse { port: u16 },
    #[error("Cannot listen on 127.0.0.1:{port}: {reason}.")]
    Listen { port: u16, reason: String },
    #[error("Cannot start the sample apps: {0}.")]
    SampleApps(std::io::Error),
    #[error("The demo configuration is not valid (this is a bug in Portcullis): {0}")]
    Config(String),
    #[error("Cannot open the demo data in {dir}: {source} To start fresh, remove it (rm -rf {dir}) and start the demo again.")]
    Data { dir: String, source: AccountsError },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("Cannot set up the demo user: {0} To start fresh, remove {dir} (rm -rf {dir}) and start the demo again.", dir = DATA_DIR)]
    DemoUser(String),
}

/// The demo's `config.toml`, as text: validated by `Config::parse` like any other.
/// `portal` and `analytics` are where the sample apps listen.
pub fn config_text(port: u16, portal: SocketAddr, analytics: SocketAddr) -> String {
    let mut text = format!(
        r#"# The configuration `portcullis demo` runs with.
[server]
listen = "127.0.0.1:{port}"
auth_url = "http://login.localhost:{port}"
data_dir = "{DATA_DIR}"
# Ctrl-C should not wait long for idle browser connections.
drain_timeout = "3s"

[totp]
issuer = "Partner Portal"

[branding]
company = "Example Partners"
support_contact = "partners@example.com"
"#
    );
    for ((id, name, host), upstream) in APPS.iter().zip([portal, analytics]) {
        text.push_str(&format!(
            r#"
[[app]]
id = "{id}"
name = "{name}"
url = "http://{host}.localhost:{port}"
upstream = "http://{upstream}"
"#
        ));
    }
    text
}

/// Where the demo user stands, and what to tell the person at the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoUser {
    /// A fresh activation link: for a new user (`created`), or one who never used theirs
    /// (the old link cannot be shown again: only its hash is stored).
    Invited {
        link: String,
        created: bool,
    },
    /// A password was chosen but two-factor authentication is not set up yet.
    PasswordChosen,
    Active,
    Disabled,
}

/// The proxy and the sample apps, bound and ready to run.
pub struct Demo {
    pub config: Config,
    pub accounts: Arc<Accounts>,
    /// Whether the data directory existed before this start.
    pub reused_data: bool,
    app: Application,
    samples: Vec<sample_app::Running>,
}

/// Binds the demo's public listener on 127.0.0.1. Done first, so that a busy port is one
/// clear sentence before anything is created on disk.
pub fn bind(port: u16) -> Result<std::net::TcpListener, DemoError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => DemoError::PortInUse { port },
        _ => DemoError::Listen {
            port,
            reason: e.to_string(),
        },
    })
}

impl Demo {
    /// Starts the sample apps and prepares the proxy on `listener`, with its data in
    /// `base/demo-data`. Uses the system clock: the demo is for real authenticator apps.
    pub async fn start(listener: std::net::TcpListener, base: &Path) -> Result<Demo, DemoError> {
        let proxy = listener.local_addr().map_err(|e| DemoError::Listen {
            port: 0,
            reason: e.to_string(),
        })?;
        let reused_data = base.join(DATA_DIR).exists();
        let sample_listener = || tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
        let portal = sample_listener().await.map_err(DemoError::SampleApps)?;
        let analytics = sample_listener().await.map_err(DemoError::SampleApps)?;
        let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(DemoError::SampleApps);
        let text = config_text(proxy.port(), addr(&portal)?, addr(&analytics)?);
        let config = Config::parse(&text, base).map_err(DemoError::Config)?;

        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut samples = Vec::new();
        for ((id, _, _), listener) in APPS.iter().zip([portal, analytics]) {
            let app = sample_app::SampleApp::from_config(&config, id, proxy)
                .ok_or_else(|| DemoError::Config(format!("no [[app]] with id {id}")))?;
            samples.push(
                sample_app::spawn(listener, app, clock.clone()).map_err(DemoError::SampleApps)?,
            );
        }

        let accounts = Accounts::open(&config, clock).map_err(|source| DemoError::Data {
            dir: config.server.data_dir.display().to_string(),
            source,
        })?;
        let accounts = Arc::new(accounts);
        let state = Arc::new(AppState::new(config.clone(), accounts.clone())?);
        let app = Application::with_listener(state, listener).await?;
        Ok(Demo {
            config,
            accounts,
            reused_data,
            app,
            samples,
        })
    }

    pub fn port(&self) -> u16 {
        self.app.port()
    }

    /// Creates the demo user on first start (no password: the activation page asks for
    /// one); on later starts reports where it stands, with a fresh link if it never
    /// activated.
    pub async fn ensure_demo_user(&self) -> Result<DemoUser, DemoError> {
        let err = |e: &dyn std::fmt::Display| DemoError::DemoUser(e.to_string());
        let existing = self
            .accounts
            .store
            .user_by_name(DEMO_USER)
            .map_err(|e| err(&e))?;
        let Some(user) = existing else {
            let apps: Vec<String> = APPS.iter().map(|(id, _, _)| id.to_string()).collect();
            let (_, link) = self
                .accounts
                .add_user(
                    DEMO_USER,
                    DEMO_EMAIL,
                    Some(DEMO_DISPLAY_NAME.to_string()),
                    apps.clone(),
                    None,
                    &apps,
                    Actor::System,
                )
                .await
                .map_err(|e| err(&e))?;
            return Ok(DemoUser::Invited {
                link,
                created: true,
            });
        };
        Ok(match user.status {
            UserStatus::Disabled => DemoUser::Disabled,
            UserStatus::Active => DemoUser::Active,
            UserStatus::Invited if user.password_hash.is_some() => DemoUser::PasswordChosen,
            UserStatus::Invited => DemoUser::Invited {
                link: self.new_invitation(&user)?,
                created: false,
            },
        })
    }

    /// A fresh activation link for a user who has not activated yet: the old link cannot
    /// be shown again, as only its hash is stored.
    fn new_invitation(&self, user: &crate::store::User) -> Result<String, DemoError> {
        let err = |e: &dyn std::fmt::Display| DemoError::DemoUser(e.to_string());
        let token = SecretToken::generate().map_err(|e| err(&e))?;
        let now = self.accounts.clock.now();
        self.accounts
            .store
            .create_invitation(Invitation {
                token_hash: token.hash(),
                user_id: user.id,
                created_at: now,
                expires_at: now + self.accounts.settings.invitation_ttl,
                used_at: None,
            })
            .map_err(|e| err(&e))?;
        self.accounts.audit(
            Actor::System,
            "user.invite",
            Some(&user.name),
            "ok",
            Some("a new activation link for the demo".into()),
            None,
        );
        Ok(self.accounts.activation_url(&token))
    }

    /// What to print at the terminal once the demo is up.
    pub fn banner(&self, user: &DemoUser) -> String {
        let data = self.config.server.data_dir.display();
        let mut out = format!(
            "\nPortcullis demo is running on http://127.0.0.1:{}\n",
            self.port()
        );
        out.push_str(&if self.reused_data {
            format!("Reusing the existing demo data in {data}.\n")
        } else {
            format!("Created the demo data in {data}.\n")
        });
        out.push_str(&format!(
            "\n  {:<19} {}/\n",
            "Sign-in pages", self.config.server.auth_url
        ));
        for (app, sample) in self.config.apps.iter().zip(&self.samples) {
            out.push_str(&format!(
                "  {:<19} {:<34} (sample app on {})\n",
                app.name,
                format!("{}/", app.url),
                sample.addr
            ));
        }
        let fresh = format!(
            "To start fresh: stop the demo (Ctrl-C), run `rm -rf {DATA_DIR}`, and start it again.\n"
        );
        let rule = "=".repeat(78);
        match user {
            DemoUser::Invited { link, created } => {
                out.push_str(&format!("\n{rule}\n"));
                out.push_str(&if *created {
                    format!(" Activate the demo user \"{DEMO_USER}\" ({DEMO_DISPLAY_NAME}) with this link:\n")
                } else {
                    format!(" The demo user \"{DEMO_USER}\" is not activated yet. A new activation link\n (the earlier one cannot be shown again):\n")
                });
                out.push_str(&format!("\n   {link}\n\n"));
                out.push_str(" 1. Install any authenticator app on your phone (Google Authenticator,\n    Microsoft Authenticator, ...).\n");
                out.push_str(" 2. Open the link above in your browser.\n");
                out.push_str(" 3. Choose a password and scan the QR code with the app.\n");
                out.push_str(&format!("{rule}\n"));
            }
            DemoUser::PasswordChosen => out.push_str(&format!(
                "\nThe demo user \"{DEMO_USER}\" chose a password but has not set up an authenticator app yet.\nLog in at {}/ with that password to see the QR code.\n{fresh}",
                self.config.server.auth_url
            )),
            DemoUser::Active => out.push_str(&format!(
                "\nThe demo user \"{DEMO_USER}\" is already active: open {}/ and log in with its\npassword and a code from your authenticator app.\n{fresh}",
                self.config.apps.first().map(|a| a.url.to_string()).unwrap_or_default()
            )),
            DemoUser::Disabled => out.push_str(&format!(
                "\nThe demo user \"{DEMO_USER}\" is disabled.\n{fresh}"
            )),
        }
        out.push_str("\nPress Ctrl-C to stop.\n");
        out
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish and stops
    /// the sample apps.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.app.run(shutdown).await;
        drop(self.samples);
    }
}

/// Logs to stderr, so the banner on stdout stays readable: by default only the audit
/// trail (sign-ins, enrolment, sign-outs) and problems; `RUST_LOG` as usual otherwise.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,portcullis::audit=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `portcullis demo`.
pub fn run() -> anyhow::Result<ExitCode> {
    let listener = bind(DEMO_PORT)?;
    init_logging();
    crate::cli::install_crypto_provider();
    let runtime = crate::server::runtime::build()?;
    runtime.block_on(async {
        let demo = Demo::start(listener, Path::new(".")).await?;
        let user = demo.ensure_demo_user().await?;
        // Not println!: a reader may stop at the banner's last line, or never read at all
        // (`portcullis demo | head -3`); the demo keeps serving either way. A failed write
        // here once made it panic and drop the connections waiting to be accepted.
        let _ = writeln!(std::io::stdout(), "{}", demo.banner(&user));
        demo.run(crate::cli::shutdown_signal()).await;
        // Not println!: when whoever read the banner has gone (`portcullis demo | head`),
        // a failed write must not turn a clean stop into a panic.
        let _ = writeln!(std::io::stdout(), "The demo has stopped.");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::accounts::signin::Activation;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn demo_config_is_valid_and_names_the_demo_hosts() {
        let text = config_text(8080, addr(9001), addr(9002));
        let c = Config::parse(&text, Path::new("/srv")).unwrap();
        assert_eq!(c.server.listen, addr(8080));
        assert_eq!(c.server.auth_url.to_string(), "http://login.localhost:8080");
        assert_eq!(c.server.data_dir, Path::new("/srv/demo-data"));
        assert!(c.tls.is_none());
        assert_eq!(c.totp.issuer, "Partner Portal");
        assert_eq!(c.branding.company, "Example Partners");
        let apps: Vec<(String, String, String)> = c
            .apps
            .iter()
            .map(|a| (a.id.clone(), a.name.clone(), a.url.to_string()))
            .collect();
        assert_eq!(
            apps,
            [
                (
                    "portal".to_string(),
                    "Partner Portal".to_string(),
                    "http://portal.localhost:8080".to_string()
                ),
                (
                    "analytics".to_string(),
                    "Partner Analytics".to_string(),
                    "http://analytics.localhost:8080".to_string()
                ),
            ]
        );
        assert_eq!(c.apps[0].upstream.authority, "127.0.0.1:9001");
        assert_eq!(c.apps[1].upstream.authority, "127.0.0.1:9002");
    }

    #[test]
    fn busy_port_is_one_clear_sentence() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind(port).unwrap_err();
        assert!(matches!(err, DemoError::PortInUse { port: p } if p == port));
        let text = err.to_string();
        assert!(text.starts_with(&format!("Port {port} on 127.0.0.1 is already in use")));
        assert!(!text.contains('\n'));
        assert_eq!(text.matches(". ").count(), 0, "one sentence: {text}");
    }

    async fn start(base: &Path) -> Demo {
        crate::cli::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Demo::start(listener, base).await.unwrap()
    }

    fn token_of(link: &str) -> SecretToken {
        SecretToken::parse(link.rsplit_once("token=").unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn first_start_creates_the_demo_user_and_prints_its_activation_link() {
        let base = tempfile::tempdir().unwrap();
        let demo = start(base.path()).await;
        assert!(!demo.reused_data);
        let DemoUser::Invited { link, created } = demo.ensure_demo_user().await.unwrap() else {
            panic!("no activation link");
        };
        assert!(created);
        let prefix = format!(
            "http://login.localhost:{}/.portcullis/activate?token=",
            demo.port()
        );
        assert!(link.starts_with(&prefix), "{link}");

        let user = demo.accounts.store.user_by_name("demo").unwrap().unwrap();
        assert_eq!(user.email, "demo@example.com");
        assert_eq!(user.display_name, "Demo Partner");
        assert_eq!(
            user.apps.iter().map(String::as_str).collect::<Vec<_>>(),
            ["analytics", "portal"]
        );
        assert_eq!(user.status, UserStatus::Invited);
        assert!(user.password_hash.is_none());
        // No password: the link asks the person to choose one.
        assert!(matches!(
            demo.accounts.activation(&token_of(&link)).unwrap(),
            Activation::ChoosePassword { .. }
        ));

        let banner = demo.banner(&DemoUser::Invited {
            link: link.clone(),
            created,
        });
        assert!(banner.contains(&format!("\n   {link}\n")), "{banner}");
        assert!(banner.contains("Created the demo data in"));
        assert!(banner.contains("Google Authenticator"));
        assert!(banner.contains("Open the link above in your browser."));
        assert!(banner.contains("Choose a password and scan the QR code with the app."));
        assert!(banner.contains(&format!("http://portal.localhost:{}/", demo.port())));
    }

    #[tokio::test]
    async fn a_later_start_reuses_the_data_and_says_where_the_demo_user_stands() {
        let base = tempfile::tempdir().unwrap();
        let first_link = {
            let demo = start(base.path()).await;
            match demo.ensure_demo_user().await.unwrap() {
                DemoUser::Invited { link, .. } => link,
                other => panic!("{other:?}"),
            }
        };

        // Still invited: a new link, and it works (the old one cannot be shown again).
        let demo = start(base.path()).await;
        assert!(demo.reused_data);
        let DemoUser::Invited { link, created } = demo.ensure_demo_user().await.unwrap() else {
            panic!("no new activation link");
        };
        assert!(!created);
        assert_ne!(link, first_link);
        assert!(matches!(
            demo.accounts.activation(&token_of(&link)).unwrap(),
            Activation::ChoosePassword { .. }
        ));
        let banner = demo.banner(&DemoUser::Invited {
            link: link.clone(),
            created,
        });
        assert!(
            banner.contains("Reusing the existing demo data in"),
            "{banner}"
        );
        assert!(banner.contains("is not activated yet"), "{banner}");
        assert!(banner.contains(&link));
        assert_eq!(demo.accounts.store.list_users().unwrap().len(), 1);

        // A password chosen, no authenticator yet.
        let user = demo.accounts.store.user_by_name("demo").unwrap().unwrap();
        demo.accounts
            .store
            .update_user(&user.id, &mut |u| {
                u.password_hash =
                    Some("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            demo.ensure_demo_user().await.unwrap(),
            DemoUser::PasswordChosen
        );
        let banner = demo.banner(&DemoUser::PasswordChosen);
        assert!(banner.contains("rm -rf demo-data"), "{banner}");

        // Active: nothing to activate; say how to start fresh.
        demo.accounts
            .store
            .update_user(&user.id, &mut |u| {
                u.status = UserStatus::Active;
                Ok(())
            })
            .unwrap();
        assert_eq!(demo.ensure_demo_user().await.unwrap(), DemoUser::Active);
        let banner = demo.banner(&DemoUser::Active);
        assert!(banner.contains("is already active"), "{banner}");
        assert!(banner.contains("rm -rf demo-data"), "{banner}");
        assert!(!banner.contains("activate?token="));
    }

    #[tokio::test]
    async fn demo_serves_the_sample_apps_behind_the_proxy_and_stops_on_shutdown() {
        let base = tempfile::tempdir().unwrap();
        let demo = start(base.path()).await;
        let port = demo.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(demo.run(async {
            let _ = stopped.await;
        }));
        // Signed out, the app is behind the sign-in page.
        let res = raw_get(port, "portal.localhost", "/").await;
        assert!(res.starts_with("HTTP/1.1 302"), "{res}");
        assert!(
            res.contains(&format!(
                "location: http://login.localhost:{port}/.portcullis/login?rd="
            )),
            "{res}"
        );
        let _ = stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    async fn raw_get(port: u16, host: &str, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out)
            .to_lowercase()
            .replace("http/1.1", "HTTP/1.1")
    }
}
