//! The admin CLI, driven as an operator drives it: the real binary, on the store when no
//! server runs and through the running server's socket when one does (SPEC §6, §8).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{config_text, write_config_file, GOOD_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// What one run of the binary printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    stdout: String,
    stderr: String,
    code: i32,
}

impl Out {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    /// A refusal: exit 1, nothing on stdout, one sentence on stderr.
    fn refused(&self, expected: &str) -> &Self {
        assert_eq!(self.code, 1, "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:#?}");
        assert!(self.stderr.contains(expected), "{self:#?}");
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// A data directory with its config file; the server, when started, is a child process.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    server: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Site {
    fn new() -> Self {
        Self::on_port(free_port())
    }

    /// A site with the standard two apps (their upstreams are not needed here).
    fn on_port(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let config = write_config_file(dir.path(), &config_text(port, nowhere, nowhere, "", ""));
        Site {
            dir,
            config,
            port,
            server: None,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.data().join("admin.sock")
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("PORTCULLIS_SECRET_KEY")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let output = child.wait_with_output().unwrap();
        Out {
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
            code: output.status.code().unwrap_or(-1),
        }
    }

    /// `user list --json`, which must always work.
    fn users(&self) -> serde_json::Value {
        self.run(&["user", "list", "--json"]).ok().json()
    }

    /// Starts `portcullis serve` and waits until its admin socket answers.
    fn start_server(&mut self) {
        self.start_server_logging("warn", Stdio::null());
    }

    fn start_server_logging(&mut self, level: &str, log: Stdio) {
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", level)
            .env_remove("PORTCULLIS_SECRET_KEY")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        // The admin socket opens first, the public port after the keys are loaded: ready
        // means both.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the server did not open its socket and port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as systemd or Docker stop it; returns the exit code.
    fn stop_server(&mut self) -> i32 {
        let mut child = self.server.take().expect("no server running");
        signal(&child, "TERM");
        wait_with_timeout(&mut child, Duration::from_secs(20))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces what legitimately differs between two runs of the same commands — times,
/// user ids, activation tokens — with placeholders.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 20)].iter().collect();
        if is_time(&rest) {
            out.push_str("<time>");
            i += 20;
            continue;
        }
        if rest.starts_with("token=") {
            out.push_str("token=<token>");
            i += 6;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "-_".contains(chars[i])) {
                i += 1;
            }
            continue;
        }
        let word: String = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        let at_word_start = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if at_word_start && word.len() == 32 {
            out.push_str("<id>");
            i += 32;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `2025-06-01T12:34:56Z`
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The commands an operator runs in a day, with what they printed.
fn a_day_of_admin(site: &Site) -> Vec<(String, Out)> {
    let steps: Vec<(Vec<&str>, Option<String>)> = vec![
        (
            vec![
                "user",
                "add",
                "alice",
                "--email",
                "alice@example.com",
                "--name",
                "Alice Example",
                "--app",
                "portal",
            ],
            None,
        ),
        (
            vec![
                "user",
                "add",
                "bob",
                "--email",
                "bob@example.com",
                "--password-stdin",
            ],
            Some(format!("{GOOD_PASSWORD}\n")),
        ),
        (vec!["user", "list"], None),
        (vec!["user", "list", "--json"], None),
        (vec!["user", "show", "alice"], None),
        (vec!["user", "grant", "alice", "analytics"], None),
        (vec!["user", "grant", "alice", "analytics"], None),
        (vec!["user", "revoke", "alice", "portal"], None),
        (vec!["user", "disable", "ALICE"], None),
        (vec!["user", "show", "alice", "--json"], None),
        (vec!["user", "enable", "alice"], None),
        (vec!["user", "reset-2fa", "bob"], None),
        (
            vec!["user", "set-password", "bob", "--password-stdin"],
            Some("another good passphrase\r\n".into()),
        ),
        (vec!["user", "show", "bob"], None),
        (vec!["user", "delete", "bob"], None),
        (vec!["user", "list"], None),
        (vec!["audit", "--user", "bob", "--json"], None),
    ];
    steps
        .into_iter()
        .map(|(args, stdin)| {
            let out = site.run_with_stdin(&args, stdin.as_deref());
            assert_eq!(out.code, 0, "{args:?}: {out:#?}");
            (args.join(" "), out)
        })
        .collect()
}

#[test]
fn admin_commands_print_the_same_with_and_without_a_running_server() {
    let port = free_port();
    let direct = Site::on_port(port);
    let mut served = Site::on_port(port);
    served.start_server();

    let without = a_day_of_admin(&direct);
    let with = a_day_of_admin(&served);
    assert!(
        served.socket().exists(),
        "the commands must have used the socket"
    );
    for ((cmd, a), (_, b)) in without.iter().zip(&with) {
        if cmd.starts_with("audit") {
            continue;
        }
        assert_eq!(
            (normalize(&a.stdout), normalize(&a.stderr)),
            (normalize(&b.stdout), normalize(&b.stderr)),
            "{cmd}"
        );
    }
    // The audit trail says who did it: the CLI on the store, or through the socket.
    let actors = |outs: &[(String, Out)]| -> Vec<String> {
        outs.last()
            .unwrap()
            .1
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["actor"].as_str().unwrap(),
                    e["action"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        actors(&without),
        [
            "cli user.delete ok",
            "cli user.set_password ok",
            "cli user.reset_2fa ok",
            "cli user.add ok"
        ]
    );
    assert!(actors(&with).iter().all(|a| a.starts_with("socket ")));

    // The activation link is alone on the last line.
    let add = &with[0].1;
    assert!(add.last_line().starts_with(&format!(
        "http://login.localhost:{port}/.portcullis/activate?token="
    )));
    // What was done shows.
    let alice = &with[9].1.json();
    assert_eq!(alice["status"], "disabled");
    assert_eq!(alice["apps"], serde_json::json!(["analytics"]));

    // On the same data, the server and the store print exactly the same.
    let list_served = served.run(&["user", "list"]);
    let show_served = served.run(&["user", "show", "alice"]);
    assert_eq!(served.stop_server(), 0);
    assert!(!served.socket().exists(), "the socket goes with the server");
    assert_eq!(served.run(&["user", "list"]), list_served);
    assert_eq!(served.run(&["user", "show", "alice"]), show_served);
}

/// Every refusal both ways: exit 1, one sentence, store unchanged.
fn refusals(site: &Site) {
    site.run(&["user", "add", "alice", "--email", "alice@example.com"])
        .ok();
    let before = site.users();
    let weak = "unbelievable\n";
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["user", "show", "nobody"],
            None,
            "There is no user named \"nobody\"",
        ),
        (
            vec!["user", "disable", "nobody"],
            None,
            "There is no user named",
        ),
        (
            vec!["user", "enable", "nobody"],
            None,
            "There is no user named",
        ),
        (
            vec!["user", "delete", "nobody"],
            None,
            "There is no user named",
        ),
        (
            vec!["user", "reset-2fa", "nobody"],
            None,
            "There is no user named",
        ),
        (
            vec!["user", "grant", "nobody", "portal"],
            None,
            "There is no user named",
        ),
        (
            vec!["user", "grant", "alice", "billing"],
            None,
            "There is no app \"billing\"",
        ),
        (
            vec!["user", "revoke", "alice", "billing"],
            None,
            "There is no app \"billing\"",
        ),
        (
            vec![
                "user",
                "add",
                "bob",
                "--email",
                "b@example.com",
                "--app",
                "billing",
            ],
            None,
            "There is no app \"billing\"",
        ),
        (
            vec!["user", "add", "ALICE", "--email", "x@example.com"],
            None,
            "A user named \"alice\" already exists (names are not case-sensitive)",
        ),
        (
            vec!["user", "add", "bob", "--email", "bob-at-example.com"],
            None,
            "is not a valid e-mail address",
        ),
        (
            vec!["user", "add", "bob smith", "--email", "b@example.com"],
            None,
            "is not a valid user name",
        ),
        (
            vec![
                "user",
                "add",
                "bob",
                "--email",
                "b@example.com",
                "--password-stdin",
            ],
            Some(weak),
            "That password cannot be used.",
        ),
        (
            vec![
                "user",
                "add",
                "bob",
                "--email",
                "b@example.com",
                "--password-stdin",
            ],
            Some(""),
            "No password was given on standard input.",
        ),
        (
            vec!["user", "set-password", "alice", "--password-stdin"],
            Some("short\n"),
            "Choose a password of at least 12 characters.",
        ),
        (
            vec!["user", "set-password", "nobody", "--password-stdin"],
            Some("a perfectly good passphrase\n"),
            "There is no user named",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = site.run_with_stdin(&args, Some(stdin.unwrap_or("")));
        out.refused(expected);
        if let Some(pw) = stdin {
            let pw = pw.trim_end();
            if !pw.is_empty() {
                assert!(
                    !out.stderr.contains(pw),
                    "the password was echoed: {out:#?}"
                );
            }
        }
        assert_eq!(site.users(), before, "{args:?} changed the store");
    }
}

#[test]
fn refused_commands_exit_1_with_one_sentence_and_change_nothing() {
    let direct = Site::new();
    refusals(&direct);
    let mut served = Site::new();
    served.start_server();
    refusals(&served);
    // Refusals are in the audit trail too.
    let trail = served
        .run(&["audit", "--json", "--limit", "200"])
        .ok()
        .json();
    let refused = trail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .count();
    assert!(refused >= 14, "{trail}");
    assert_eq!(served.stop_server(), 0);
}

#[test]
fn a_usage_mistake_exits_1_and_changes_nothing() {
    let site = Site::new();
    let before = site.users();
    let out = site.run(&["user", "add", "bob"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("--email"), "{out:#?}");
    // A password is never an argument.
    let out = site.run(&["user", "set-password", "bob", "--password", "x"]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(site.users(), before);
    assert_eq!(site.run(&["user", "--help"]).code, 0);
}

#[tokio::test]
async fn the_activation_link_printed_through_the_socket_opens_the_activation_page() {
    let port = free_port();
    let mut site = Site::on_port(port);
    site.start_server();
    let out = tokio::task::spawn_blocking({
        let config = site.config.clone();
        move || {
            let output = Command::new(BIN)
                .arg("-c")
                .arg(&config)
                .args([
                    "user",
                    "add",
                    "carol",
                    "--email",
                    "carol@example.com",
                    "--app",
                    "portal",
                ])
                .output()
                .unwrap();
            assert!(output.status.success());
            String::from_utf8(output.stdout).unwrap()
        }
    })
    .await
    .unwrap();
    let url = out.lines().last().unwrap().to_string();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let browser = crate::helpers::Browser::new(addr);
    let page = browser.get(&url).await;
    assert_eq!(page.status, http::StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("action=\"/.portcullis/activate\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("new-password"), "{}", page.body);
    assert_eq!(site.stop_server(), 0);
}

#[test]
fn user_import_reports_each_bad_line_and_a_good_file_imports_all() {
    let mut site = Site::new();
    site.start_server();
    site.run(&["user", "add", "alice", "--email", "alice@example.com"])
        .ok();
    let before = site.users();
    let argon = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$6W+V2kmo2/Nd+hsqVYz4tC6J8ECJj9dKfphB6bYxnA0";
    let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    let bad = format!(
        "name,email,hash,apps\n\
         carol,carol@example.com,{argon},portal\n\
         dave,dave-at-example.com,{bcrypt},portal\n\
         Carol,carol2@example.com,{bcrypt},portal\n\
         ALICE,a@example.com,{bcrypt},portal\n\
         erin,erin@example.com,{bcrypt},billing\n\
         frank,frank@example.com,md5:abcdef,portal\n"
    );
    let file = site.dir.path().join("bad.csv");
    std::fs::write(&file, bad).unwrap();
    let out = site.run(&["user", "import", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(out.stdout, "");
    for line in ["line 3:", "line 4:", "line 5:", "line 6:", "line 7:"] {
        assert!(out.stderr.contains(line), "{line} missing: {}", out.stderr);
    }
    assert!(!out.stderr.contains("line 2:"), "{}", out.stderr);
    assert!(out
        .stderr
        .starts_with("Nothing was imported: 5 lines have problems."));
    assert_eq!(site.users(), before);

    let good = format!(
        "carol,carol@example.com,{argon},portal;analytics\n\
         dave,dave@example.com,{bcrypt},analytics\n\
         erin,erin@example.com,\"{argon}\",\n"
    );
    let file = site.dir.path().join("good.csv");
    std::fs::write(&file, good).unwrap();
    let out = site.run(&["user", "import", file.to_str().unwrap()]);
    out.ok();
    assert!(
        out.stdout
            .starts_with("Imported 3 users: carol, dave, erin."),
        "{}",
        out.stdout
    );
    let users = site.users();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "carol", "dave", "erin"]);
    for u in users.as_array().unwrap().iter().skip(1) {
        assert_eq!(u["status"], "active");
        assert_eq!(u["two_factor"], false);
        assert_eq!(u["password_set"], true);
    }
    assert_eq!(site.stop_server(), 0);
    // The import arrived on disk: the store, opened by the CLI itself, has them.
    assert_eq!(site.users(), users);

    let missing = site.run(&["user", "import", "/nonexistent/users.csv"]);
    missing.refused("could not be opened");
}

#[test]
fn store_export_then_import_into_a_fresh_data_dir_round_trips() {
    let mut old = Site::new();
    old.run(&[
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--app",
        "portal",
    ])
    .ok();
    old.run_with_stdin(
        &[
            "user",
            "add",
            "bob",
            "--email",
            "bob@example.com",
            "--password-stdin",
        ],
        Some(&format!("{GOOD_PASSWORD}\n")),
    )
    .ok();
    old.run(&["user", "disable", "bob"]).ok();
    // Exported through the running server's socket, like a nightly backup.
    old.start_server();
    let export = old.run(&["store", "export"]);
    export.ok();
    assert!(export.stderr.contains("secret key"), "{}", export.stderr);
    assert!(!export.stdout.contains(GOOD_PASSWORD));
    assert_eq!(old.stop_server(), 0);
    let users = old.users();

    // A new data directory that made its own key: refused, and nothing imported.
    let new = Site::new();
    new.users();
    let out = new.run_with_stdin(&["store", "import"], Some(&export.stdout));
    out.refused("another secret key");
    assert_eq!(new.users(), serde_json::json!([]));

    // With the old key in place, the same import works.
    std::fs::copy(old.data().join("secret.key"), new.data().join("secret.key")).unwrap();
    let out = new.run_with_stdin(&["store", "import"], Some(&export.stdout));
    out.ok();
    assert!(out.stdout.starts_with("Imported "), "{}", out.stdout);
    assert_eq!(new.users(), users);
    // Only into an empty store.
    new.run_with_stdin(&["store", "import"], Some(&export.stdout))
        .refused("The store is not empty.");
    // And the store's own export is the same data.
    let again = new.run(&["store", "export"]);
    again.ok();
    let user_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("\"table\":\"user\""))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(user_lines(&again.stdout), user_lines(&export.stdout));
}

#[test]
fn the_server_owns_a_private_socket_and_replaces_a_stale_one() {
    use std::os::unix::fs::PermissionsExt;
    let mut site = Site::new();
    site.start_server();
    let meta = std::fs::metadata(site.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    site.run(&["user", "add", "alice", "--email", "alice@example.com"])
        .ok();

    // kill -9 leaves the socket file behind.
    let mut child = site.server.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(site.socket().exists());
    // With no server, the CLI gets past the stale socket to the store.
    let users = site.users();
    assert_eq!(users[0]["name"], "alice");
    // The next server removes it and listens anew.
    site.start_server();
    assert_eq!(site.users(), users);
    assert_eq!(site.stop_server(), 0);
    assert!(!site.socket().exists());
}

/// A few random numbers without a dependency (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn spawn_user_add(site: &Site, name: &str) -> Child {
    Command::new(BIN)
        .arg("-c")
        .arg(&site.config)
        .args([
            "user",
            "add",
            name,
            "--email",
            &format!("{name}@example.com"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn killing_user_add_at_any_moment_never_loses_an_acknowledged_user() {
    let site = Site::new();
    site.users();
    // How long one `user add` takes here, so the kills land all over its life: before the
    // store is open, during its commits, and after it printed.
    let t = Instant::now();
    let baseline = spawn_user_add(&site, "baseline")
        .wait_with_output()
        .unwrap();
    assert!(baseline.status.success());
    let span_ms = (t.elapsed().as_millis() as u64 * 3 / 2).max(30);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut acknowledged = vec!["baseline".to_string()];
    let mut killed_early = 0;
    let mut rounds = 0;
    while rounds < 30 || (rounds < 60 && started.elapsed() < Duration::from_secs(10)) {
        let name = format!("u{rounds}");
        let mut child = spawn_user_add(&site, &name);
        std::thread::sleep(Duration::from_millis(rng.below(span_ms + 1)));
        let _ = child.kill(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let printed_url = stdout.lines().last().is_some_and(|l| {
            l.contains("/.portcullis/activate?token=")
                && l.rsplit_once("token=").unwrap().1.len() == 43
        });
        if printed_url {
            acknowledged.push(name);
        } else {
            killed_early += 1;
        }
        rounds += 1;
    }
    // The store opens cleanly after every kill, and everyone acknowledged is there.
    let users = site.users();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for name in &acknowledged {
        assert!(names.contains(&name.as_str()), "{name} was lost: {names:?}");
    }
    // Whoever is there is whole: shown without error.
    for name in &names {
        site.run(&["user", "show", name]).ok();
    }
    eprintln!(
        "{rounds} rounds in {:?} (kills within {span_ms} ms): {} acknowledged, {killed_early} killed before, {} stored",
        started.elapsed(),
        acknowledged.len() - 1,
        names.len()
    );
    assert!(
        acknowledged.len() > 1 && killed_early > 0,
        "the kills should land both before and after the commit"
    );
}

#[test]
fn normalize_hides_only_what_differs_between_runs() {
    assert_eq!(
        normalize("at 2025-06-01T12:34:56Z id 0123456789abcdef0123456789abcdef x"),
        "at <time> id <id> x"
    );
    assert_eq!(normalize("?token=abc-_DEF123 next"), "?token=<token> next");
    assert_eq!(normalize("short abc123"), "short abc123");
}

#[test]
fn security_events_reach_the_server_log_as_well_as_the_audit_trail() {
    let mut site = Site::new();
    let log_path = site.dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    site.start_server_logging("info", Stdio::from(log));
    site.run(&[
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--app",
        "portal",
    ])
    .ok();
    site.run(&["user", "disable", "alice"]).ok();
    assert_eq!(site.stop_server(), 0);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("portcullis::audit") && l.contains("user.disable"))
        .unwrap_or_else(|| panic!("no audit line for the disable in the log:\n{text}"));
    assert!(
        line.contains("alice") && line.contains("ok") && line.contains("socket"),
        "{line}"
    );
    let trail = site
        .run(&["audit", "--user", "alice", "--json"])
        .ok()
        .json();
    assert_eq!(trail[0]["action"], "user.disable", "{trail}");
}

/// Sends one HTTP/1.1 request and returns the status line.
fn raw_request(port: u16, head: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn the_access_log_has_one_line_per_request_and_no_secrets() {
    let port = free_port();
    let mut site = Site::on_port(port);
    let log_path = site.dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    site.start_server_logging("info", Stdio::from(log));
    // The portal's upstream is down: a 502, still one line naming the app.
    let status = raw_request(
        port,
        &format!(
            "GET /echo?q=app-query-secret HTTP/1.1\r\nHost: portal.localhost:{port}\r\nCookie: portcullis-app=cookie-secret; theirs=also-secret\r\nAuthorization: Bearer bearer-secret\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.contains("502"), "{status}");
    let status = raw_request(
        port,
        &format!(
            "GET /.portcullis/activate?token=token-secret HTTP/1.1\r\nHost: login.localhost:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.starts_with("HTTP/1.1 "), "{status}");
    assert_eq!(site.stop_server(), 0);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("portcullis::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let portal = lines[0];
    for part in [
        "method=GET",
        &format!("host=portal.localhost:{port}"),
        "path=/echo",
        "status=502",
        "duration_ms=",
        "app=\"portal\"",
    ] {
        assert!(portal.contains(part), "{part} missing: {portal}");
    }
    assert!(
        lines[1].contains("path=/.portcullis/activate"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("app=\"-\""), "{}", lines[1]);
    for secret in [
        "app-query-secret",
        "cookie-secret",
        "also-secret",
        "bearer-secret",
        "token-secret",
    ] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

/// `keys rotate` publishes a new key while the server runs; a second one waits for it.
#[test]
fn keys_rotate_publishes_a_new_key_and_a_second_rotation_waits() {
    let mut site = Site::new();
    site.start_server();
    let index_path = site.data().join("signing-keys").join("index.json");
    let index = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap()
    };
    let current = index()["current"].as_str().unwrap().to_string();

    let out = site.run(&["keys", "rotate"]);
    out.ok();
    let next = index()["next"]["kid"].as_str().unwrap().to_string();
    assert_ne!(next, current);
    assert!(out.stdout.contains(&next), "{out:#?}");
    assert!(out.stdout.contains("signs the assertions from"), "{out:#?}");
    assert_eq!(index()["current"], current.as_str());
    assert!(site
        .data()
        .join("signing-keys")
        .join(format!("{next}.p8"))
        .exists());

    site.run(&["keys", "rotate"]).refused("already published");
    assert_eq!(index()["next"]["kid"], next.as_str());
    assert_eq!(site.stop_server(), 0);
}

/// A key made by another user (root, say) could not be read by the server at its next
/// start, so `keys rotate` runs only as the owner of the data directory.
#[test]
fn keys_rotate_refuses_a_data_directory_of_another_user() {
    let site = Site::new();
    std::fs::create_dir_all(site.data()).unwrap();
    // Needs the right to give the directory away: root, as in CI's container.
    if std::os::unix::fs::chown(site.data(), Some(65534), Some(65534)).is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "under CI this test must run: it needs root to give a directory away"
        );
        eprintln!("skipped: changing a directory's owner needs root");
        return;
    }
    site.run(&["keys", "rotate"])
        .refused("belongs to another user");
    // And as the owner, before the server has made a first key: nothing to rotate.
    std::os::unix::fs::chown(site.data(), Some(0), Some(0)).unwrap();
    site.run(&["keys", "rotate"]).refused("no signing key");
    assert!(!site.data().join("signing-keys").exists());
}

/// The README's main command, as a person runs it: `portcullis demo` in an empty folder.
/// It binds the fixed demo port 8080 (the README's URLs name it), so it fails, saying so,
/// if something else holds that port.
#[test]
fn the_demo_command_serves_prints_its_link_and_stops_on_ctrl_c() {
    /// Stops the demo however the test ends, so a failed run does not leave port 8080 held.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let start_demo = |stderr: Stdio| {
        Running(
            Command::new(BIN)
                .arg("demo")
                .current_dir(dir.path())
                .env_remove("RUST_LOG")
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    };
    let mut running = start_demo(Stdio::piped());
    let child = &mut running.0;
    let stdout = child.stdout.take().unwrap();
    let banner = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            // Stop reading here, closing the pipe, as `portcullis demo | head` would: the
            // demo must still stop cleanly when it cannot print its last line.
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !banner.is_finished() {
        assert!(Instant::now() < deadline, "no banner within 30 s");
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).ok();
            panic!("the demo exited with {status} before it was ready (port 8080 taken?): {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let banner = banner.join().unwrap();
    assert!(
        banner.contains("http://login.localhost:8080/.portcullis/activate?token="),
        "{banner}"
    );

    // The proxy answers as the banner says.
    let mut conn = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
    conn.write_all(
        b"GET /.portcullis/healthz HTTP/1.1\r\nHost: portal.localhost:8080\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    signal(child, "INT");
    assert_eq!(wait_with_timeout(child, Duration::from_secs(15)), 0);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    // The log goes to stderr, plain: colour codes are for terminals, not files or pipes.
    assert!(log.contains("action=\"user.add\""), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(dir.path().join("demo-data").is_dir());
    drop(running);

    // Again with nobody reading its output at all: it still serves and stops cleanly
    // (printing the banner into a closed pipe made it panic).
    let mut running = start_demo(Stdio::null());
    let child = &mut running.0;
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the demo exited when its output could not be written"
        );
        assert!(Instant::now() < deadline, "no answer on 8080 within 30 s");
        let mut answer = String::new();
        let asked = std::net::TcpStream::connect("127.0.0.1:8080").and_then(|mut conn| {
            conn.write_all(
                b"GET /.portcullis/healthz HTTP/1.1\r\nHost: portal.localhost:8080\r\nConnection: close\r\n\r\n",
            )?;
            std::io::Read::read_to_string(&mut conn, &mut answer)
        });
        if asked.is_ok() && !answer.is_empty() {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    signal(child, "INT");
    assert_eq!(wait_with_timeout(child, Duration::from_secs(15)), 0);
}
