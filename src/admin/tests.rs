//! Tests of the admin request/outcome layer, the socket server and the client's choice
//! between the socket and the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;

use super::client::{run_via, Via};
use super::socket::AdminSocket;
use super::*;
use crate::clock::ManualClock;

const NOW: i64 = 1_700_000_000;

fn config(dir: &std::path::Path) -> Config {
    crate::accounts::admin::tests::test_config(dir)
}

fn apps() -> Vec<String> {
    vec!["portal".to_string(), "analytics".to_string()]
}

fn open(config: &Config) -> Accounts {
    Accounts::open(config, Arc::new(ManualClock::new(NOW))).unwrap()
}

fn add_request(name: &str) -> Request {
    Request::new(
        Command::UserAdd {
            name: name.into(),
            email: format!("{name}@example.com"),
            display_name: Some("Alice Example".into()),
            apps: vec!["portal".into()],
            password_stdin: false,
        },
        None,
    )
}

async fn run(a: &Accounts, command: Command, input: Option<&str>) -> Outcome {
    execute(
        a,
        &apps(),
        Request::new(command, input.map(str::to_string)),
        Actor::Cli,
    )
    .await
}

#[tokio::test]
async fn user_add_prints_the_activation_url_alone_on_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    let out = execute(&a, &apps(), add_request("alice"), Actor::Cli).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.is_empty());
    let last = out.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("http://login.localhost:8080/.portcullis/activate?token="),
        "{last}"
    );
    assert!(!last.contains(' '));
    assert!(out.stdout.ends_with('\n'));
}

#[tokio::test]
async fn user_add_with_password_stdin_needs_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    let command = Command::UserAdd {
        name: "bob".into(),
        email: "bob@example.com".into(),
        display_name: None,
        apps: vec![],
        password_stdin: true,
    };
    for input in [None, Some("")] {
        let out = run(&a, command.clone(), input).await;
        assert_eq!(out.code, 1);
        assert!(out.stderr.starts_with("No password was given"), "{out:?}");
    }
    let out = run(&a, command, Some("a long enough passphrase")).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("sign-in page"), "{}", out.stdout);
}

#[tokio::test]
async fn failures_are_one_sentence_on_stderr_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    run(&a, add_request("alice").command.clone(), None).await;
    let cases = [
        (
            Command::UserShow {
                name: "bob".into(),
                json: false,
            },
            "There is no user named \"bob\". `portcullis user list` shows the existing users.\n",
        ),
        (
            Command::UserGrant {
                name: "alice".into(),
                app: "nope".into(),
            },
            "There is no app \"nope\" in the configuration. Use one of: portal, analytics.\n",
        ),
        (
            Command::UserDisable { name: "bob".into() },
            "There is no user named \"bob\". `portcullis user list` shows the existing users.\n",
        ),
    ];
    for (command, expected) in cases {
        let out = run(&a, command, None).await;
        assert_eq!(out.code, 1);
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr, expected);
    }
}

#[tokio::test]
async fn every_command_answers_for_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    let out = run(&a, Command::UserList { json: false }, None).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("No users yet."));
    let out = run(&a, Command::UserList { json: true }, None).await;
    assert_eq!(out.stdout, "[]\n");
    let out = run(
        &a,
        Command::Audit {
            user: None,
            limit: 10,
            json: false,
        },
        None,
    )
    .await;
    assert_eq!(out.stdout, "No audit events.\n");
    let out = run(&a, Command::StoreExport, None).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("{\"table\":\"header\""));
    assert!(out.stderr.contains("secret key"));
    let out = run(&a, Command::UserImport, Some("")).await;
    assert_eq!(out.code, 1);
}

#[tokio::test]
async fn list_and_show_as_json_carry_what_scripts_need() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    run(&a, add_request("alice").command.clone(), None).await;
    let out = run(&a, Command::UserList { json: true }, None).await;
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let alice = &list[0];
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["status"], "invited");
    assert_eq!(alice["two_factor"], false);
    assert_eq!(alice["apps"], serde_json::json!(["portal"]));
    assert_eq!(alice["created_at"], "2023-11-14T22:13:20Z");
    assert!(alice.get("locked_until").is_none());
    let out = run(
        &a,
        Command::UserShow {
            name: "ALICE".into(),
            json: true,
        },
        None,
    )
    .await;
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["display_name"], "Alice Example");
    assert_eq!(shown["recent_failures"], 0);
    assert!(shown["locked_until"].is_null());
    let out = run(
        &a,
        Command::UserShow {
            name: "alice".into(),
            json: false,
        },
        None,
    )
    .await;
    assert!(
        out.stdout
            .contains("2FA:              not set up: the next sign-in shows a QR code"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn request_of_another_protocol_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    let mut request = add_request("alice");
    request.version = 99;
    let out = execute(&a, &apps(), request, Actor::Socket).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("same version"), "{}", out.stderr);
    assert!(a.list_users().unwrap().is_empty());
}

#[test]
fn request_debug_never_shows_the_password() {
    let r = Request::new(
        Command::UserSetPassword {
            name: "alice".into(),
        },
        Some("hunter2 hunter2".into()),
    );
    let dbg = format!("{r:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
}

#[test]
fn requests_round_trip_through_json_and_unknown_fields_are_refused() {
    let r = add_request("alice");
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
    let extra = text.replacen('{', "{\"surprise\":1,", 1);
    assert!(serde_json::from_str::<Request>(&extra).is_err());
    for garbage in [
        "",
        "null",
        "[]",
        "{\"version\":1}",
        "{\"command\":\"nope\"}",
    ] {
        assert!(
            serde_json::from_str::<Request>(garbage).is_err(),
            "{garbage}"
        );
    }
}

// --- the socket --------------------------------------------------------------------------

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn serve(socket: AdminSocket, accounts: Arc<Accounts>) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(socket.serve(accounts, apps(), async {
        let _ = rx.await;
    }));
    Running { stop, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0600_answers_like_the_store_and_is_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let accounts = Arc::new(open(&config));
    let path = socket_path(&config);
    // A stale socket from a server that was killed.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let socket = AdminSocket::bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let running = serve(socket, accounts.clone());

    let cfg = config.clone();
    let (out, via) = tokio::task::spawn_blocking(move || run_via(&cfg, add_request("alice")))
        .await
        .unwrap();
    assert_eq!(via, Some(Via::Socket));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.lines().last().unwrap().contains("token="));
    let event = accounts.audit_trail(None, 1).unwrap().remove(0);
    assert_eq!(event.actor, "socket");

    // The same command through the socket and on the store prints the same.
    let list = || {
        Request::new(
            Command::UserShow {
                name: "alice".into(),
                json: false,
            },
            None,
        )
    };
    let cfg = config.clone();
    let (through_socket, _) = tokio::task::spawn_blocking(move || run_via(&cfg, list()))
        .await
        .unwrap();
    let direct = execute(&accounts, &apps(), list(), Actor::Cli).await;
    assert_eq!(through_socket, direct);

    // The password of a request never reaches the audit trail or the answer.
    let cfg = config.clone();
    let (out, _) = tokio::task::spawn_blocking(move || {
        run_via(
            &cfg,
            Request::new(
                Command::UserSetPassword {
                    name: "alice".into(),
                },
                Some("secret passphrase 42".into()),
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!format!("{out:?}").contains("secret passphrase 42"));
    for e in accounts.audit_trail(None, 100).unwrap() {
        assert!(!format!("{e:?}").contains("secret passphrase 42"));
    }

    running.stop.send(()).unwrap();
    running.task.await.unwrap();
    assert!(!path.exists(), "the socket file must go at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_gets_an_answer_not_a_panic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let accounts = Arc::new(open(&config));
    let path = socket_path(&config);
    let running = serve(AdminSocket::bind(&path).unwrap(), accounts.clone());
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"{".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        b"{\"version\":1,\"command\":{\"command\":\"user-list\",\"json\":\"yes\"},\"input\":null}"
            .to_vec(),
        vec![b'['; 100_000],
    ];
    for bytes in garbage {
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let out: Outcome = serde_json::from_slice(&answer).unwrap();
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("could not read"), "{}", out.stderr);
    }
    // A client that connects and goes away does not hurt either.
    drop(tokio::net::UnixStream::connect(&path).await.unwrap());
    // And the server still answers.
    let cfg = config.clone();
    let (out, via) = tokio::task::spawn_blocking(move || {
        run_via(&cfg, Request::new(Command::UserList { json: true }, None))
    })
    .await
    .unwrap();
    assert_eq!((out.code, via), (0, Some(Via::Socket)));
    running.stop.send(()).unwrap();
    running.task.await.unwrap();
}

#[tokio::test]
async fn a_file_in_the_way_of_the_socket_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    std::fs::write(&path, "important").unwrap();
    let err = AdminSocket::bind(&path).unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "important");
}

#[test]
fn without_a_server_the_cli_runs_on_the_store_even_past_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(socket_path(&config)).unwrap());
    let (out, via) = run_via(&config, add_request("alice"));
    assert_eq!((out.code, via), (0, Some(Via::Store)), "{out:?}");
    let (out, _) = run_via(
        &config,
        Request::new(Command::UserList { json: true }, None),
    );
    assert!(out.stdout.contains("\"alice\""));
    let accounts = open(&config);
    assert_eq!(accounts.audit_trail(None, 1).unwrap()[0].actor, "cli");
}

#[test]
fn a_store_held_by_a_process_without_a_socket_is_reported_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let _holder = open(&config);
    let (out, via) = run_via(
        &config,
        Request::new(Command::UserList { json: false }, None),
    );
    assert_eq!((out.code, via), (1, None));
    assert!(
        out.stderr.contains("is in use by another process"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1);
}

#[tokio::test]
async fn an_export_larger_than_a_csv_limit_still_imports() {
    // A store with a long audit trail exports to more than 32 MiB; an export cannot be
    // split (it only goes into an empty store), so `store import` must take it whole.
    let dir = tempfile::tempdir().unwrap();
    let a = open(&config(dir.path()));
    assert_eq!(
        execute(&a, &apps(), add_request("alice"), Actor::Cli)
            .await
            .code,
        0
    );
    let export = run(&a, Command::StoreExport, None).await.stdout;
    let mut text = String::with_capacity(MAX_INPUT_BYTES + (2 << 20));
    text.push_str(&export);
    let detail = "x".repeat(4000);
    let mut seq = 1_000u64;
    while text.len() <= MAX_INPUT_BYTES {
        seq += 1;
        text.push_str(&format!(
            "{{\"table\":\"audit\",\"seq\":{seq},\"at\":{NOW},\"actor\":\"cli\",\"action\":\"user.add\",\"user\":\"alice\",\"target\":null,\"outcome\":\"ok\",\"detail\":\"{detail}\",\"ip\":null}}\n"
        ));
    }
    // A fresh data directory with the same secret key: the export's canary is sealed
    // with it.
    let first = config(dir.path());
    drop(a);
    let fresh = tempfile::tempdir().unwrap();
    let cfg = config(fresh.path());
    std::fs::create_dir_all(&cfg.server.data_dir).unwrap();
    std::fs::copy(
        first.server.data_dir.join("secret.key"),
        cfg.server.data_dir.join("secret.key"),
    )
    .unwrap();
    let b = open(&cfg);
    let out = run(&b, Command::StoreImport, Some(&text)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trail = b.audit_trail(Some("alice"), 5).unwrap();
    assert_eq!(trail[0].detail.as_deref(), Some(detail.as_str()));
    // Past the export limit the refusal says what to do instead of splitting.
    let huge = Request::new(Command::StoreImport, Some(String::new()));
    assert!(input_limit(&huge.command) > MAX_INPUT_BYTES);
    assert!(!too_large(MAX_IMPORT_BYTES).contains("Split"));
}
