//! The admin commands (SPEC §6, §8) as one request in, one outcome out.
//!
//! The CLI turns its arguments (and any stdin payload: a password line, a CSV file, an
//! export) into a [`Request`]. While `portcullis serve` runs, redb's lock keeps the store
//! to the server, so the CLI sends the request over the Unix socket `data_dir/admin.sock`
//! ([`socket`]) and the server runs [`execute`] with `Actor::Socket`; with no server, the
//! CLI opens the store itself and runs the same [`execute`] with `Actor::Cli` ([`client`]).
//! Either way the CLI prints the outcome's stdout and stderr and exits with its code, so
//! the same command prints the same thing by construction.

pub mod client;
pub mod format;
pub mod socket;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::accounts::admin::AdminError;
use crate::accounts::{Accounts, Actor};
use crate::auth::Password;
use crate::config::Config;
use format::{AuditJson, UserJson};

/// Version of the socket protocol; a request of another version is refused with a message.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest CSV file `user import` takes, in bytes; a bigger list can be split, since
/// each import adds to the store.
pub const MAX_INPUT_BYTES: usize = 32 * 1024 * 1024;
/// Largest export `store import` takes. An export cannot be split (it goes into an empty
/// store in one piece) and a store with many sessions and a long audit trail is large.
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024 * 1024;

/// The most input `command` takes.
pub fn input_limit(command: &Command) -> usize {
    match command {
        Command::StoreImport => MAX_IMPORT_BYTES,
        _ => MAX_INPUT_BYTES,
    }
}
/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Default number of events `audit` shows.
pub const DEFAULT_AUDIT_LIMIT: usize = 50;

/// Where the running server listens for admin commands.
pub fn socket_path(config: &Config) -> PathBuf {
    config.server.data_dir.join(SOCKET_FILE)
}

/// An admin command, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    UserAdd {
        name: String,
        email: String,
        display_name: Option<String>,
        apps: Vec<String>,
        /// The password is the request's input.
        password_stdin: bool,
    },
    UserList {
        json: bool,
    },
    UserShow {
        name: String,
        json: bool,
    },
    UserDisable {
        name: String,
    },
    UserEnable {
        name: String,
    },
    UserDelete {
        name: String,
    },
    UserReset2fa {
        name: String,
    },
    /// The password is the request's input.
    UserSetPassword {
        name: String,
    },
    UserGrant {
        name: String,
        app: String,
    },
    UserRevoke {
        name: String,
        app: String,
    },
    /// The CSV text is the request's input.
    UserImport,
    Audit {
        user: Option<String>,
        limit: usize,
        json: bool,
    },
    StoreExport,
    /// The export is the request's input.
    StoreImport,
}

/// What the CLI sends: the command and its stdin payload. The payload may be a password,
/// so Debug does not show it and it is wiped when the request is dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub command: Command,
    pub input: Option<String>,
}

impl Request {
    pub fn new(command: Command, input: Option<String>) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            command,
            input,
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("version", &self.version)
            .field("command", &self.command)
            .field("input", &self.input.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(input) = &mut self.input {
            input.zeroize();
        }
    }
}

/// What the CLI prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    pub fn ok(stdout: impl Into<String>) -> Self {
        Outcome {
            stdout: stdout.into(),
            stderr: String::new(),
            code: 0,
        }
    }

    /// A refusal: one message on stderr, exit code 1.
    pub fn fail(message: impl fmt::Display) -> Self {
        let mut stderr = message.to_string();
        if !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        Outcome {
            stdout: String::new(),
            stderr,
            code: 1,
        }
    }
}

/// Runs one admin command against the account service and says what to print. The one
/// function behind both the CLI on the store and the admin socket.
pub async fn execute(
    accounts: &Accounts,
    known_apps: &[String],
    mut request: Request,
    actor: Actor,
) -> Outcome {
    if request.version != PROTOCOL_VERSION {
        return Outcome::fail(format!(
            "This admin command speaks protocol version {}, the server speaks {PROTOCOL_VERSION}. Use the portcullis binary of the same version as the server.",
            request.version
        ));
    }
    let input = request.input.take();
    let limit = input_limit(&request.command);
    if input.as_ref().is_some_and(|i| i.len() > limit) {
        return Outcome::fail(too_large(limit));
    }
    let command = request.command.clone();
    let result = run_command(accounts, known_apps, command, input, actor).await;
    match result {
        Ok(outcome) => outcome,
        Err(e) => Outcome::fail(e),
    }
}

pub(crate) fn too_large(limit: usize) -> String {
    if limit == MAX_IMPORT_BYTES {
        format!(
            "The export is larger than {} MiB, the most `store import` takes. Remove old audit events from it and try again.",
            limit / (1024 * 1024)
        )
    } else {
        format!(
            "The input is larger than {} MiB. Split it into smaller files and run the command once for each.",
            limit / (1024 * 1024)
        )
    }
}

/// The password line of a request: required, and never empty.
fn password_from(input: Option<String>) -> Result<Password, AdminError> {
    match input {
        Some(text) if !text.is_empty() => Ok(Password::new(text)),
        Some(mut text) => {
            text.zeroize();
            Err(AdminError::NoPassword)
        }
        None => Err(AdminError::NoPassword),
    }
}

fn json<T: Serialize>(value: &T) -> Result<String, AdminError> {
    serde_json::to_string_pretty(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| AdminError::Invalid(format!("The result could not be written as JSON: {e}.")))
}

fn sessions(n: usize) -> String {
    match n {
        0 => "no sessions were open".into(),
        1 => "ended 1 session".into(),
        n => format!("ended {n} sessions"),
    }
}

async fn run_command(
    accounts: &Accounts,
    known_apps: &[String],
    command: Command,
    input: Option<String>,
    actor: Actor,
) -> Result<Outcome, AdminError> {
    let out = match command {
        Command::UserAdd {
            name,
            email,
            display_name,
            apps,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(password_from(input)?)
            } else {
                None
            };
            let with_password = password.is_some();
            let (user, url) = accounts
                .add_user(
                    &name,
                    &email,
                    display_name,
                    apps,
                    password,
                    known_apps,
                    actor,
                )
                .await?;
            let expires = format::rfc3339(
                user.created_at
                    .saturating_add(accounts.settings.invitation_ttl),
            );
            let next = if with_password {
                "it leads to the sign-in page, where they set up 2FA"
            } else {
                "they choose a password, then set up 2FA"
            };
            // The URL alone on the last line: scripts and tests take the last line.
            format!(
                "Created user {} ({}).\nSend them this activation link; it works once, until {expires}, and {next}:\n{url}\n",
                user.name,
                if user.apps.is_empty() {
                    "no apps yet: `portcullis user grant NAME APP` gives access".to_string()
                } else {
                    format!(
                        "apps: {}",
                        user.apps.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            )
        }
        Command::UserList { json: as_json } => {
            let users = accounts.list_users()?;
            if as_json {
                json(&users.iter().map(UserJson::new).collect::<Vec<_>>())?
            } else {
                format::user_table(&users)
            }
        }
        Command::UserShow {
            name,
            json: as_json,
        } => {
            let details = accounts.show_user(&name)?;
            if as_json {
                json(&UserJson::detailed(&details))?
            } else {
                format::user_details(&details)
            }
        }
        Command::UserDisable { name } => {
            let c = accounts.disable_user(&name, actor)?;
            let name = &c.user.name;
            if c.changed {
                format!(
                    "Disabled {name}; {}. They cannot sign in until `portcullis user enable {name}`.\n",
                    sessions(c.sessions_ended)
                )
            } else {
                format!(
                    "{name} was already disabled; {}.\n",
                    sessions(c.sessions_ended)
                )
            }
        }
        Command::UserEnable { name } => {
            let (c, lifted) = accounts.enable_user(&name, actor)?;
            let name = &c.user.name;
            let lock = if lifted {
                " The sign-in lock after too many failed attempts is lifted."
            } else {
                ""
            };
            if c.changed {
                format!("Enabled {name}. They can sign in again.{lock}\n")
            } else {
                format!("{name} was not disabled; nothing to enable.{lock}\n")
            }
        }
        Command::UserDelete { name } => {
            let c = accounts.delete_user(&name, actor)?;
            format!("Deleted {}; {}.\n", c.user.name, sessions(c.sessions_ended))
        }
        Command::UserReset2fa { name } => {
            let c = accounts.reset_2fa(&name, actor)?;
            let name = &c.user.name;
            if c.changed {
                format!(
                    "Reset two-factor authentication for {name}; {}. At the next sign-in they scan a new QR code.\n",
                    sessions(c.sessions_ended)
                )
            } else {
                format!(
                    "{name} had not set up two-factor authentication yet; {}. At the next sign-in they set it up.\n",
                    sessions(c.sessions_ended)
                )
            }
        }
        Command::UserSetPassword { name } => {
            let password = password_from(input)?;
            let c = accounts.set_password(&name, password, actor).await?;
            format!(
                "Set a new password for {}; {}.\n",
                c.user.name,
                sessions(c.sessions_ended)
            )
        }
        Command::UserGrant { name, app } => {
            let c = accounts.grant_app(&name, &app, known_apps, actor)?;
            if c.changed {
                format!("Granted {} access to {app}.\n", c.user.name)
            } else {
                format!("{} already has access to {app}.\n", c.user.name)
            }
        }
        Command::UserRevoke { name, app } => {
            let c = accounts.revoke_app(&name, &app, known_apps, actor)?;
            if c.changed {
                format!(
                    "Revoked {}'s access to {app}; it ends at once.\n",
                    c.user.name
                )
            } else {
                format!("{} had no access to {app}.\n", c.user.name)
            }
        }
        Command::UserImport => {
            let text = input.unwrap_or_default();
            let users = accounts.import_csv(&text, known_apps, actor)?;
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            format!(
                "Imported {} user{}: {}.\nThey sign in with their existing passwords and set up two-factor authentication at their first sign-in.\n",
                users.len(),
                if users.len() == 1 { "" } else { "s" },
                names.join(", ")
            )
        }
        Command::Audit {
            user,
            limit,
            json: as_json,
        } => {
            let events = accounts.audit_trail(user.as_deref(), limit)?;
            if as_json {
                json(&events.iter().map(AuditJson::new).collect::<Vec<_>>())?
            } else {
                format::audit_table(&events)
            }
        }
        Command::StoreExport => {
            let (text, lines) = accounts.export_store()?;
            return Ok(Outcome {
                stdout: text,
                stderr: format!(
                    "Exported {lines} lines. The TOTP secrets in it are encrypted: back up the secret key (secret.key in the data directory, or PORTCULLIS_SECRET_KEY) too, but apart from this file, or they cannot be restored.\n"
                ),
                code: 0,
            });
        }
        Command::StoreImport => {
            let text = input.unwrap_or_default();
            let count = accounts.import_store(&text, actor)?;
            format!("Imported {count} records.\n")
        }
    };
    Ok(Outcome::ok(out))
}

#[cfg(test)]
mod tests;
