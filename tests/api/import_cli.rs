//! `oath-service import`, the real binary, against the real service (in this process, with its job
//! runners, on a test database): exit codes, stdout and stderr, the report, re-runs, and the
//! progress bar on a real terminal (`script` gives the process a pseudo-terminal). Against a
//! small HTTP stub instead of the service: a redirect is not followed, and plain http to another
//! host is refused before anything is sent.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use oath_service::auth::Scope;
use oath_service::jobs::runner::RunnerPool;
use serde_json::Value;
use sqlx::PgPool;

use crate::support::app::{create_job, numbered, spawn_app_with, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_oath-service");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pskc");
const RFC_SECRET: &str = "3132333435363738393031323334353637383930";

/// The service with running job runners (the CLI waits for its job like any client).
struct Service {
    app: TestApp,
    _runners: RunnerPool,
}

async fn service(pool: PgPool) -> Service {
    let app = spawn_app_with(pool, |s| {
        s.jobs.runners = 1;
        s.jobs.poll_interval_ms = 20;
        s.jobs.chunk_size = 200;
    })
    .await;
    let runners = RunnerPool::start(app.pool.clone(), Arc::new(app.settings.clone()));
    Service {
        app,
        _runners: runners,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Whether `text` appears on stdout or stderr.
    fn mentions(&self, text: &str) -> bool {
        self.stdout.contains(text) || self.stderr.contains(text)
    }
}

/// `oath-service import FILE --url URL --env ENV` with an empty environment (but `PATH`) and
/// stdin, stdout and stderr pipes.
fn import_command(url: &str, env: &str, file: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("import")
        .arg(file)
        .args(["--url", url, "--env", env])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end with `stdin` on its stdin.
async fn run(mut cmd: Command, stdin: &str) -> Run {
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("oath-service starts");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

impl Service {
    fn token(&self) -> String {
        self.app.token(&Scope::ALL)
    }

    /// `oath-service import FILE --url .. --env .. EXTRA..` with stderr a pipe.
    async fn import(&self, file: &Path, extra: &[&str], token: Option<String>, stdin: &str) -> Run {
        let mut cmd = import_command(&self.app.address, &self.app.env.to_string(), file);
        cmd.args(extra);
        if let Some(token) = token {
            cmd.env("OATH_TOKEN", token);
        }
        run(cmd, stdin).await
    }

    /// `import FILE FLAG` with `secret` on stdin (`--password-stdin`, `--key-stdin`).
    async fn import_with_stdin(&self, file: &Path, flag: &str, secret: &str) -> Run {
        self.import(file, &[flag], Some(self.token()), &format!("{secret}\n"))
            .await
    }

    /// Asserts that `run` succeeded with `n` rows, all created, and that the environment holds
    /// `n` tokens.
    async fn assert_created_all(&self, run: &Run, n: u64) {
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let (total, created, _, _, _) = summary(run);
        assert_eq!((total, created), (n, n));
        assert_eq!(self.tokens().await, n as i64);
    }

    /// `oath-service import FILE --url .. --env .. REST` run by script(1) under a
    /// pseudo-terminal, after the shell commands `setup`, with this service's token in
    /// `OATH_TOKEN` and the extra environment `env`.
    async fn in_terminal(
        &self,
        setup: &str,
        file: &Path,
        rest: &str,
        env: &[(&str, &str)],
    ) -> std::process::Output {
        let inner = format!(
            "{setup}exec {BIN} import {} --url {} --env {} {rest}",
            file.display(),
            self.app.address,
            self.app.env
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .env("OATH_TOKEN", self.token())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || cmd.output().expect("script(1) runs"))
            .await
            .unwrap()
    }

    async fn tokens(&self) -> i64 {
        self.app
            .count(&format!(
                "select count(*) from oath_tokens where environment_id = '{}'",
                self.app.env
            ))
            .await
    }

    async fn jobs(&self) -> i64 {
        self.app
            .count(&format!(
                "select count(*) from oath_jobs where environment_id = '{}'",
                self.app.env
            ))
            .await
    }
}

/// A PSKC file of tests/fixtures/pskc.
fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// A fresh folder for one test's files.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oath-import-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn csv_file(dir: &Path, name: &str, rows: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("serialNumber,secret,type,otpLength\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn valid_rows(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i},{RFC_SECRET},HOTP,6"))
        .collect()
}

/// The one stdout line of a finished import: `NAME: N rows: C created, D duplicate(s), F failed (job ID)`.
fn summary(run: &Run) -> (u64, u64, u64, u64, String) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {:?}", run.stdout);
    let (counts, job) = lines[0]
        .split_once(" (job ")
        .unwrap_or_else(|| panic!("no job id: {}", lines[0]));
    let counts = counts
        .split_once(" rows: ")
        .map(|(name_total, rest)| format!("{} {rest}", name_total.rsplit(' ').next().unwrap()))
        .unwrap_or_else(|| panic!("no counts: {}", lines[0]));
    let numbers: Vec<u64> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 4, "{}", lines[0]);
    let job = job
        .strip_suffix(')')
        .expect("closing parenthesis")
        .to_string();
    (numbers[0], numbers[1], numbers[2], numbers[3], job)
}

/// Asserts that `run` failed with exit 1, nothing on stdout and one error line, the last on
/// stderr, that contains `needle`.
fn assert_one_line_error(run: &Run, needle: &str) {
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("oath-service: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {}", run.stderr);
    assert!(
        run.stderr.ends_with(&format!("{}\n", errors[0])),
        "{}",
        run.stderr
    );
    assert!(errors[0].contains(needle), "{}", errors[0]);
}

#[sqlx::test]
async fn a_pskc_file_is_imported_and_a_rerun_imports_nothing_twice(pool: PgPool) {
    let svc = service(pool).await;
    let file = fixture("rfc6030-figure3.pskcxml");

    let first = svc.import(&file, &[], Some(svc.token()), "").await;
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let (total, created, duplicates, failed, job) = summary(&first);
    assert_eq!((total, created, duplicates, failed), (1, 1, 0, 0));
    assert!(first
        .stdout
        .starts_with("rfc6030-figure3.pskcxml: 1 rows: 1 created"));
    assert_eq!(svc.tokens().await, 1);
    // stderr is a pipe: plain lines, no terminal control sequences.
    assert!(
        first
            .stderr
            .contains(&format!("job {job} accepted: 1 rows")),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("1/1 rows processed (100%)"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains(&format!("job {job}: DONE")),
        "{}",
        first.stderr
    );
    assert!(!first.stderr.contains('\x1b'), "{}", first.stderr);

    // The same file again (as after a dropped connection): the first job answers, nothing is
    // imported again. With --json, stdout is that job's document and nothing else.
    let again = svc.import(&file, &["--json"], Some(svc.token()), "").await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let doc: Value = serde_json::from_str(&again.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["id"], job.as_str());
    assert_eq!(doc["status"], "DONE");
    assert_eq!(doc["result"]["created"], 1);
    assert!(again.stderr.contains("accepted before"), "{}", again.stderr);
    assert_eq!((svc.tokens().await, svc.jobs().await), (1, 1));

    // Once the idempotency record is gone (after 24 h), a re-run is a new job whose every row is
    // a duplicate: exit 2, and still nothing is imported twice.
    sqlx::query("delete from idempotency_keys")
        .execute(&svc.app.pool)
        .await
        .unwrap();
    let later = svc.import(&file, &[], Some(svc.token()), "").await;
    assert_eq!(later.code, 2, "{}{}", later.stdout, later.stderr);
    let (total, created, duplicates, failed, second_job) = summary(&later);
    assert_eq!((total, created, duplicates, failed), (1, 0, 1, 0));
    assert_ne!(second_job, job);
    assert_eq!((svc.tokens().await, svc.jobs().await), (1, 2));
}

#[sqlx::test]
async fn a_csv_with_invalid_rows_exits_2_and_reports_them(pool: PgPool) {
    let svc = service(pool).await;
    let dir = scratch();
    let bad_secret = "ABCDEF0123456789ABCDEF01234567";
    let mut rows = valid_rows("CSV", 3);
    rows.insert(1, format!("BAD1,{RFC_SECRET},HOTP,7"));
    rows.insert(3, format!("BAD2,{bad_secret},HOTP,6"));
    rows.push(format!("SHIFTED,{RFC_SECRET},HOTP,6,extra"));
    let file = csv_file(&dir, "tokens.csv", &rows);
    let report = dir.join("report.csv");

    let run = svc
        .import(
            &file,
            &["--report", report.to_str().unwrap()],
            Some(svc.token()),
            "",
        )
        .await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let (total, created, duplicates, failed, _) = summary(&run);
    assert_eq!((total, created, duplicates, failed), (6, 3, 0, 3));
    assert_eq!(svc.tokens().await, 3);
    assert!(
        run.stderr.contains("report: 3 row(s) not created"),
        "{}",
        run.stderr
    );

    let text = std::fs::read_to_string(&report).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "rowNumber",
            "index",
            "serialNumber",
            "outcome",
            "tokenId",
            "maskedSecret",
            "message"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let rows: Vec<(&str, &str)> = records.iter().map(|r| (&r[0], &r[3])).collect();
    assert_eq!(rows, [("2", "INVALID"), ("4", "INVALID"), ("6", "INVALID")]);
    assert_eq!((&records[0][2], &records[1][2]), ("BAD1", "BAD2"));
    assert!(records.iter().all(|r| !r[6].is_empty()), "{text}");
    assert!(
        !text.contains(RFC_SECRET) && !text.contains(bad_secret),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test]
async fn a_bad_token_or_bad_input_is_one_line_and_exit_1(pool: PgPool) {
    let svc = service(pool).await;
    let file = fixture("vendor-plain.pskcxml");

    // A token signed with another secret: 401, said once, the token never repeated.
    let mut settings = svc.app.settings.clone();
    settings.auth.hs256_secret = Some("another-secret-of-at-least-thirty-two-bytes".into());
    let forged = oath_service::auth::mint_dev_token(
        &settings.auth,
        svc.app.env,
        &["oath:jobs:write".to_string(), "oath:jobs:read".to_string()],
        std::time::Duration::from_secs(300),
    )
    .unwrap();
    let run = svc.import(&file, &[], Some(forged.clone()), "").await;
    assert_one_line_error(&run, "HTTP 401 ACCESS_FAILED");
    assert!(
        run.stderr.contains("check the token in OATH_TOKEN"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&forged[forged.len() - 20..]));
    // A token for another environment: 403.
    let other = svc.app.token_for(uuid::Uuid::new_v4(), &Scope::ALL);
    assert_one_line_error(&svc.import(&file, &[], Some(other), "").await, "HTTP 403");
    assert_eq!(svc.jobs().await, 0);

    // No token at all, a file that is not there, a type the name does not tell, a bad key on
    // stdin, a key option on a CSV, a usage error: each one line, exit 1, nothing sent.
    assert_one_line_error(
        &svc.import(&file, &[], None, "").await,
        "OATH_TOKEN is not set",
    );
    let missing = fixture("no-such-file.pskcxml");
    assert_one_line_error(
        &svc.import(&missing, &[], Some(svc.token()), "").await,
        "cannot read",
    );
    let txt = fixture("README.md");
    assert_one_line_error(
        &svc.import(&txt, &[], Some(svc.token()), "").await,
        "cannot tell the type",
    );
    let secret_key = "not-hex-but-secret-0123456789abcdef";
    let run = svc
        .import(&file, &["--key-stdin"], Some(svc.token()), secret_key)
        .await;
    assert_one_line_error(&run, "hex of 16, 24 or 32 bytes");
    assert!(!run.stderr.contains(secret_key));
    let dir = scratch();
    let csv = csv_file(&dir, "t.csv", &valid_rows("K", 1));
    assert_one_line_error(
        &svc.import(&csv, &["--key-id", "v7"], Some(svc.token()), "")
            .await,
        "PSKC files only",
    );
    assert_one_line_error(
        &svc.import(
            &file,
            &["--key-id", "v7", "--password-stdin"],
            Some(svc.token()),
            "",
        )
        .await,
        "cannot be used with",
    );
    // A report that cannot be written is found out before anything is sent.
    assert_one_line_error(
        &svc.import(
            &file,
            &["--report", "/nonexistent/dir/report.csv"],
            Some(svc.token()),
            "",
        )
        .await,
        "cannot write the report /nonexistent/dir/report.csv",
    );
    // Missing arguments: clap's list, on the one line.
    let out = Command::new(BIN).arg("import").output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not provided: --url <BASE> --env <UUID> <FILE>"),
        "{stderr}"
    );
    // A file the service refuses as a whole (not XML at all): the service's message, exit 1.
    let broken = dir.join("broken.xml");
    std::fs::write(&broken, "this is not xml").unwrap();
    assert_one_line_error(
        &svc.import(&broken, &[], Some(svc.token()), "").await,
        "HTTP 400 INVALID_REQUEST",
    );
    assert_eq!(svc.jobs().await, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[sqlx::test]
async fn a_password_from_stdin_unlocks_a_pbkdf2_file(pool: PgPool) {
    let svc = service(pool).await;
    let file = fixture("vendor-pbkdf2.pskcxml");
    let password = "correct horse battery staple";
    let run = svc
        .import_with_stdin(&file, "--password-stdin", password)
        .await;
    svc.assert_created_all(&run, 3).await;
    assert!(!run.mentions(password));
}

/// A caller's own transport key from stdin (`X-PSKC-Key`): the RFC 6030 figure 6 file imports;
/// the same file under another key is another request (409 for the same idempotency key, exit 1),
/// and the key appears in no output.
#[sqlx::test]
async fn a_transport_key_from_stdin_decrypts_a_pskc_file(pool: PgPool) {
    let svc = service(pool).await;
    let file = fixture("rfc6030-figure6.pskcxml");
    let key = "12345678901234567890123456789012";
    let run = svc.import_with_stdin(&file, "--key-stdin", key).await;
    svc.assert_created_all(&run, 1).await;
    assert!(!run.mentions(key));

    let wrong = "00112233445566778899aabbccddeeff";
    let run = svc.import_with_stdin(&file, "--key-stdin", wrong).await;
    assert_one_line_error(&run, "HTTP 409");
    assert_eq!(svc.tokens().await, 1);
    assert!(!run.mentions(wrong));
}

/// Under a pseudo-terminal stderr shows the bar (rows of total, rate, ETA); stdout, redirected to
/// a file, still carries the counts alone.
#[sqlx::test]
async fn progress_is_a_bar_on_a_terminal(pool: PgPool) {
    let svc = service(pool).await;
    let dir = scratch();
    let file = csv_file(&dir, "bar.csv", &valid_rows("BAR", 2000));
    let out = dir.join("stdout.txt");
    let redirect = format!("> {}", out.display());
    let output = svc
        .in_terminal(
            "stty cols 120 rows 30; ",
            &file,
            &redirect,
            &[("TERM", "xterm-256color")],
        )
        .await;
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{screen}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(screen.contains('\x1b'), "no terminal drawing: {screen:?}");
    assert!(screen.contains("=====] 2000/2000 rows"), "{screen:?}");
    assert!(screen.contains(" accepted: 2000 rows"), "{screen:?}");
    assert!(screen.contains(" rows/s"), "{screen:?}");
    assert!(screen.contains("ETA "), "{screen:?}");
    assert!(screen.contains("DONE"), "{screen:?}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(
        stdout.starts_with("bar.csv: 2000 rows: 2000 created, 0 duplicate(s), 0 failed (job "),
        "{stdout:?}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!stdout.contains('\x1b'));
    assert_eq!(svc.tokens().await, 2000);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `.json` file is a create-job body; `--no-wait --json` prints the accepted job alone.
#[sqlx::test]
async fn a_json_job_with_no_wait_prints_the_accepted_job(pool: PgPool) {
    let svc = service(pool).await;
    let dir = scratch();
    let file = dir.join("job.json");
    let body = create_job(numbered("J", 0..3));
    std::fs::write(&file, body.to_string()).unwrap();
    let run = svc
        .import(&file, &["--no-wait", "--json"], Some(svc.token()), "")
        .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["progress"]["total"], 3);
    assert_eq!(doc["type"], "CREATE_OATH_TOKENS");
    assert!(!run.stderr.contains("DONE"), "{}", run.stderr);
    assert_eq!(svc.jobs().await, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A password is never read from a terminal, where it would be echoed.
#[sqlx::test]
async fn a_password_is_not_read_from_a_terminal(pool: PgPool) {
    let svc = service(pool).await;
    let file = fixture("vendor-pbkdf2.pskcxml");
    let output = svc.in_terminal("", &file, "--password-stdin", &[]).await;
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{screen}");
    assert!(
        screen.contains("reads the password from a pipe or a file, not a terminal"),
        "{screen}"
    );
    assert_eq!(svc.jobs().await, 0);
}

/// A proxy to `upstream` that forwards the first connection's request but closes it as soon as
/// the service starts to answer, as a network that drops the connection at the worst moment:
/// the job is accepted, the client never hears of it. Later connections pass through.
fn dropping_proxy(upstream: std::net::SocketAddr) -> String {
    use std::net::Shutdown;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(upstream).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                if n == 0 {
                    let mut first = [0u8; 1];
                    let _ = std::io::Read::read(&mut s_in, &mut first);
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                } else {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                }
            });
        }
    });
    address
}

/// The answer to the upload is lost after the service stored the job: the retry, with the same
/// Idempotency-Key, gets the first job back, and nothing is imported twice.
#[sqlx::test]
async fn a_dropped_answer_is_retried_without_importing_twice(pool: PgPool) {
    let svc = service(pool).await;
    let upstream = svc
        .app
        .address
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = dropping_proxy(upstream);
    let file = fixture("rfc6030-figure3.pskcxml");
    let mut cmd = Command::new(BIN);
    cmd.arg("import")
        .arg(&file)
        .args(["--url", &proxy, "--env", &svc.app.env.to_string()])
        .env_clear()
        .env("OATH_TOKEN", svc.token())
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("trying again in 2s (attempt 2 of 4)"),
        "{stderr}"
    );
    assert!(stderr.contains("accepted before"), "{stderr}");
    assert!(stdout.contains(": 1 rows: 1 created"), "{stdout}");
    assert_eq!((svc.tokens().await, svc.jobs().await), (1, 1));
}

/// A plain HTTP/1.1 server on a loopback port that answers every request with what `answer`
/// returns for the request's head, and keeps every request head it received (lowercased).
struct Stub {
    address: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Stub {
    fn start(answer: impl Fn(&str) -> String + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let Some(head) = read_request(&mut stream) else {
                    continue;
                };
                // Kept before the answer, so it is there once the client has its answer.
                kept.lock().unwrap().push(head.clone());
                let _ = stream.write_all(answer(&head).as_bytes());
            }
        });
        Self { address, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The head of one request on `stream` (lowercased), its body read and dropped.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = data.len() - end;
    while body < length {
        body += stream.read(&mut buf).ok().filter(|&n| n > 0)?;
    }
    Some(head)
}

/// An answer with `status` (and its reason), the extra header lines `headers` and `body`.
fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A transport key and a token that must reach no one but `--url`.
const STOLEN_KEY: &str = "12345678901234567890123456789012";
const STOLEN_TOKEN: &str = "eyJ0b2tlbi1mb3ItLXVybC1vbmx5In0";

/// `--url` answers the upload with a 307 to another server: the CLI does not follow it, so
/// neither the `X-PSKC-Key` nor the token reaches that server; the error names the Location.
#[tokio::test]
async fn a_redirect_of_the_upload_is_not_followed() {
    let elsewhere = Stub::start(|_| answer("404 Not Found", "", ""));
    let location = format!("{}/v1/collect", elsewhere.address);
    let redirect = format!("location: {location}\r\n");
    let service = Stub::start(move |_| answer("307 Temporary Redirect", &redirect, ""));

    let file = fixture("rfc6030-figure6.pskcxml");
    let mut cmd = import_command(&service.address, &uuid::Uuid::new_v4().to_string(), &file);
    cmd.arg("--key-stdin").env("OATH_TOKEN", STOLEN_TOKEN);
    let run = run(cmd, &format!("{STOLEN_KEY}\n")).await;

    assert_one_line_error(&run, "HTTP 307");
    assert!(run.stderr.contains(&location), "{}", run.stderr);
    // The upload reached --url, with the key, once: a redirect is not retried either.
    let heads = service.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("post /v1/environments/"), "{heads:?}");
    assert!(heads[0].contains(&format!("x-pskc-key: {STOLEN_KEY}")));
    assert!(elsewhere.heads().is_empty(), "{:?}", elsewhere.heads());
    assert!(!run.mentions(STOLEN_KEY) && !run.mentions(STOLEN_TOKEN));
}

/// The upload is accepted, then reading the job answers a 307 to another server: not followed
/// either, so the token goes nowhere else.
#[tokio::test]
async fn a_redirect_while_following_the_job_is_not_followed() {
    let elsewhere = Stub::start(|_| answer("404 Not Found", "", ""));
    let location = format!("{}/v1/collect", elsewhere.address);
    let redirect = format!("location: {location}\r\n");
    let job = uuid::Uuid::new_v4();
    let service = Stub::start(move |head| {
        if head.starts_with("post ") {
            let doc = format!(
                r#"{{"id":"{job}","status":"RUNNING","progress":{{"processed":0,"total":1}}}}"#
            );
            answer("202 Accepted", "content-type: application/json\r\n", &doc)
        } else {
            answer("307 Temporary Redirect", &redirect, "")
        }
    });

    let file = fixture("rfc6030-figure3.pskcxml");
    let mut cmd = import_command(&service.address, &uuid::Uuid::new_v4().to_string(), &file);
    cmd.env("OATH_TOKEN", STOLEN_TOKEN);
    let run = run(cmd, "").await;

    assert_one_line_error(&run, "HTTP 307");
    assert!(run.stderr.contains(&location), "{}", run.stderr);
    assert_eq!(service.heads().len(), 2, "{:?}", service.heads());
    assert!(elsewhere.heads().is_empty(), "{:?}", elsewhere.heads());
}

/// Plain http to a host other than this machine is refused before anything is sent: the proxy
/// the environment names (which would otherwise carry the request) sees nothing, and no report
/// is created.
#[tokio::test]
async fn plain_http_to_another_host_is_refused_before_anything_is_sent() {
    let proxy = Stub::start(|_| answer("404 Not Found", "", ""));
    let file = fixture("rfc6030-figure6.pskcxml");
    let dir = scratch();
    let report = dir.join("report.csv");
    for url in ["http://example.invalid", "http://10.11.12.13:8080"] {
        let mut cmd = import_command(url, &uuid::Uuid::new_v4().to_string(), &file);
        cmd.arg("--key-stdin")
            .args(["--report", report.to_str().unwrap()])
            .env("OATH_TOKEN", STOLEN_TOKEN)
            .env("http_proxy", &proxy.address)
            .env("HTTP_PROXY", &proxy.address);
        let run = run(cmd, &format!("{STOLEN_KEY}\n")).await;
        assert_one_line_error(&run, "plain http");
        assert!(run.stderr.contains("use https"), "{}", run.stderr);
        assert!(!report.exists());
    }
    assert!(proxy.heads().is_empty(), "{:?}", proxy.heads());
    std::fs::remove_dir_all(dir).unwrap();
}
