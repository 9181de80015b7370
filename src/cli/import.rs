//! `oath-service import`: uploads a seed file through the API as a create job, follows the job on
//! stderr, prints the final counts (or, with `--json`, the final job document alone) on stdout and
//! writes every row that was not created to `--report`.
//!
//! Exit codes: 0 every row created (or, with `--no-wait`, the job accepted), 2 some rows not
//! created, 1 an error (bad input, HTTP, authentication, a `FAILED` job). The bearer token comes
//! from `OATH_TOKEN` only; a PSKC key or password only from stdin, so neither appears in a process
//! list or a shell history, and neither is ever printed. All three go to `--url` alone: https (or
//! http to this machine), and no redirect is followed.

mod api;
mod progress;
mod report;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use self::api::{Client, Job, PskcCredential};
use self::progress::Progress;
use self::report::Report;

/// The exit code when the job finished but some rows were not created.
pub const EXIT_SOME_NOT_CREATED: i32 = 2;

/// The environment variable holding the bearer token.
pub const TOKEN_VARIABLE: &str = "OATH_TOKEN";

/// A secret read from stdin is at most this long (a 32-byte key is 64 hex digits).
const MAX_STDIN_SECRET_BYTES: u64 = 4096;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("pskc_key").args(["key_id", "key_stdin", "password_stdin"])))]
pub struct ImportArgs {
    /// The seed file. Its extension gives its type: .xml, .pskc, .pskcxml (PSKC, RFC 6030),
    /// .csv, or .json (a CREATE_OATH_TOKENS job body).
    pub file: PathBuf,
    /// The service's base URL, e.g. https://oath.example.com (http only to 127.0.0.0/8, [::1] or
    /// localhost). Redirects are not followed.
    #[arg(long, value_name = "BASE")]
    pub url: String,
    /// The environment (tenant) to import into.
    #[arg(long, value_name = "UUID")]
    pub env: Uuid,
    /// PSKC: the id of a pre-shared key configured in the service (sent as X-PSKC-Key-Id).
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// PSKC: read the transport key, in hex, from stdin (sent as X-PSKC-Key).
    #[arg(long)]
    pub key_stdin: bool,
    /// PSKC: read the password of a PBKDF2-protected file from stdin (sent as X-PSKC-Password).
    #[arg(long)]
    pub password_stdin: bool,
    /// Write every row that was not created to this CSV file (with a header row).
    #[arg(long, value_name = "PATH", conflicts_with = "no_wait")]
    pub report: Option<PathBuf>,
    /// Print the final job document (JSON) on stdout instead of the counts.
    #[arg(long)]
    pub json: bool,
    /// Return once the job is accepted, without following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// How a finished import went, when it went at all (errors are `Err`).
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    AllCreated,
    SomeNotCreated,
}

/// The file kinds the service imports, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Pskc,
    Csv,
    JobJson,
}

impl FileKind {
    fn of(path: &Path) -> Result<Self, String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("xml" | "pskc" | "pskcxml") => Ok(Self::Pskc),
            Some("csv") => Ok(Self::Csv),
            Some("json") => Ok(Self::JobJson),
            _ => Err(format!(
                "cannot tell the type of {} from its name: use .xml, .pskc or .pskcxml (PSKC), \
                 .csv, or .json (a create-job body)",
                path.display()
            )),
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Self::Pskc => crate::import::PSKC_MEDIA_TYPE,
            Self::Csv => crate::import::CSV_MEDIA_TYPE,
            Self::JobJson => crate::domain::job::JobType::CREATE_MEDIA_TYPE,
        }
    }
}

/// Runs the import; `Err` is the one line to show before exiting 1.
pub async fn run(args: ImportArgs) -> Result<Completion, String> {
    let token = bearer_token()?;
    let kind = FileKind::of(&args.file)?;
    // A --url the secrets may not go to is refused before stdin is read or a report created.
    let client = Client::new(&args.url, args.env, token)?;
    let credential = pskc_credential(&args, kind)?;
    let body = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let report = args.report.as_deref().map(Report::create).transpose()?;
    let key = idempotency_key(&body, args.env, &credential);
    let name = args.file.file_name().map_or_else(
        || args.file.display().to_string(),
        |n| n.to_string_lossy().into(),
    );

    let mut progress = Progress::new(std::io::stderr().is_terminal());
    progress.uploading(&name, body.len());
    let accepted = client
        .submit(body, kind.media_type(), &key, &credential, &mut |line| {
            progress.note(line)
        })
        .await;
    let job = match accepted {
        Ok(job) => job,
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };
    progress.accepted(&job);
    if args.no_wait {
        progress.finish(&job);
        print_outcome(&args, &job, &name)?;
        return Ok(Completion::AllCreated);
    }

    let job = match follow(&client, job, &mut progress).await {
        Ok(job) => job,
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };
    progress.finish(&job);
    if job.status == "FAILED" {
        if args.json {
            print_stdout(&job.document)?;
        }
        return Err(format!(
            "job {} FAILED: {}",
            job.id,
            job.reason
                .as_deref()
                .unwrap_or("the service gave no reason")
        ));
    }
    if let (Some(report), Some(path)) = (report, &args.report) {
        let rows = if job.not_created() > 0 {
            client.rows_not_created(job.id).await?
        } else {
            Vec::new()
        };
        report.write(&rows)?;
        progress.note(&format!(
            "report: {} row(s) not created written to {}",
            rows.len(),
            path.display()
        ));
    }
    print_outcome(&args, &job, &name)?;
    Ok(if job.not_created() > 0 {
        Completion::SomeNotCreated
    } else {
        Completion::AllCreated
    })
}

/// Polls the job until it is `DONE` or `FAILED`, showing its progress. Transient failures
/// (the connection, a 503) are retried for a while: the job runs on regardless.
async fn follow(client: &Client, mut job: Job, progress: &mut Progress) -> Result<Job, String> {
    let mut interval = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    while !job.is_finished() {
        tokio::time::sleep(interval).await;
        interval = (interval * 3 / 2).min(Duration::from_secs(1));
        match client.job(job.id).await {
            Ok(current) => {
                failing_since = None;
                job = current;
                progress.update(&job);
            }
            Err(e) if e.transient => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > api::TRANSIENT_PATIENCE {
                    return Err(still_running(e.message));
                }
            }
            Err(e) => return Err(still_running(e.message)),
        }
    }
    Ok(job)
}

/// The job runs on without this client: say how to pick it up again.
fn still_running(message: String) -> String {
    format!("{message} (the job goes on in the service: run the same command again to follow it)")
}

fn print_outcome(args: &ImportArgs, job: &Job, name: &str) -> Result<(), String> {
    if args.json {
        return print_stdout(&job.document);
    }
    let line = if args.no_wait {
        format!(
            "{name}: job {} accepted ({}, {} rows)",
            job.id, job.status, job.total
        )
    } else {
        format!(
            "{name}: {} rows: {} created, {} duplicate(s), {} failed (job {})",
            job.total, job.created, job.duplicates, job.failed, job.id
        )
    };
    print_stdout(&line)
}

fn print_stdout(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn bearer_token() -> Result<Zeroizing<String>, String> {
    let token = std::env::var(TOKEN_VARIABLE).unwrap_or_default();
    let token = Zeroizing::new(token.trim().to_string());
    if token.is_empty() {
        return Err(format!(
            "{TOKEN_VARIABLE} is not set: export the bearer token in it (for a development \
             service: {TOKEN_VARIABLE}=$(oath-service dev-token --env <uuid>))"
        ));
    }
    Ok(token)
}

/// The PSKC key or password the arguments ask for, read from stdin when they say so.
fn pskc_credential(args: &ImportArgs, kind: FileKind) -> Result<PskcCredential, String> {
    let asked = args.key_id.is_some() || args.key_stdin || args.password_stdin;
    if asked && kind != FileKind::Pskc {
        return Err(
            "--key-id, --key-stdin and --password-stdin apply to PSKC files only (.xml, .pskc, \
             .pskcxml)"
                .into(),
        );
    }
    if let Some(id) = &args.key_id {
        let id = id.trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("--key-id must be a non-empty id of visible ASCII characters".into());
        }
        return Ok(PskcCredential::KeyId(id.to_string()));
    }
    if args.key_stdin {
        let line = stdin_line("--key-stdin", "key")?;
        let hex = Zeroizing::new(line.trim().to_ascii_lowercase());
        let valid = hex.bytes().all(|b| b.is_ascii_hexdigit()) && matches!(hex.len(), 32 | 48 | 64);
        if !valid {
            return Err(
                "the key on stdin must be hex of 16, 24 or 32 bytes (32, 48 or 64 hex digits)"
                    .into(),
            );
        }
        return Ok(PskcCredential::Key(hex));
    }
    if args.password_stdin {
        let password = stdin_line("--password-stdin", "password")?;
        if password.is_empty() {
            return Err("the password on stdin is empty".into());
        }
        if password.chars().any(char::is_control) {
            return Err("the password on stdin contains a control character".into());
        }
        return Ok(PskcCredential::Password(password));
    }
    Ok(PskcCredential::None)
}

/// The first line of stdin, without its line ending. A terminal is refused: what is typed there
/// is echoed on the screen.
fn stdin_line(flag: &str, what: &str) -> Result<Zeroizing<String>, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(format!(
            "{flag} reads the {what} from a pipe or a file, not a terminal \
             (e.g. `oath-service import ... {flag} < {what}.txt`)"
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    stdin
        .lock()
        .take(MAX_STDIN_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} from stdin: {e}"))?;
    if bytes.len() as u64 > MAX_STDIN_SECRET_BYTES {
        return Err(format!(
            "the {what} on stdin is longer than {MAX_STDIN_SECRET_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("the {what} on stdin is not UTF-8 text"))?;
    let line = text.split('\n').next().unwrap_or("");
    Ok(Zeroizing::new(
        line.strip_suffix('\r').unwrap_or(line).to_string(),
    ))
}

/// The `Idempotency-Key` of an upload: the same file for the same environment under the same key
/// id is the same request, so a re-run (after a dropped connection, say) returns the first job
/// instead of importing again. A key or password given on stdin enters only as the way the file
/// is unlocked, never itself (the service binds the request to it).
fn idempotency_key(body: &[u8], env: Uuid, credential: &PskcCredential) -> String {
    let file = Sha256::digest(body);
    let unlock = match credential {
        PskcCredential::None => String::new(),
        PskcCredential::KeyId(id) => format!("key-id:{id}"),
        PskcCredential::Key(_) => "key:stdin".into(),
        PskcCredential::Password(_) => "password:stdin".into(),
    };
    let mut hash = Sha256::new();
    for part in [
        b"oath-service import v1".as_slice(),
        env.as_bytes().as_slice(),
        unlock.as_bytes(),
        file.as_slice(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("import-{}", hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_follows_the_extension() {
        for (name, kind) in [
            ("a.xml", FileKind::Pskc),
            ("a.PSKC", FileKind::Pskc),
            ("dir/a.pskcxml", FileKind::Pskc),
            ("a.csv", FileKind::Csv),
            ("a.json", FileKind::JobJson),
        ] {
            assert_eq!(FileKind::of(Path::new(name)), Ok(kind), "{name}");
        }
        for name in ["a.txt", "a", "a.csv.gz"] {
            assert!(FileKind::of(Path::new(name)).is_err(), "{name}");
        }
    }

    #[test]
    fn idempotency_key_binds_file_environment_and_key_id() {
        let env = Uuid::from_u128(1);
        let none = PskcCredential::None;
        let a = idempotency_key(b"file", env, &none);
        assert_eq!(a, idempotency_key(b"file", env, &none));
        assert!(a.starts_with("import-") && a.len() == 7 + 64);
        let others = [
            idempotency_key(b"file2", env, &none),
            idempotency_key(b"file", Uuid::from_u128(2), &none),
            idempotency_key(b"file", env, &PskcCredential::KeyId("v7".into())),
            idempotency_key(b"file", env, &PskcCredential::KeyId("v8".into())),
            idempotency_key(
                b"file",
                env,
                &PskcCredential::Password(Zeroizing::new("pw".into())),
            ),
        ];
        for other in &others {
            assert_ne!(&a, other);
        }
        // A key given on stdin does not enter the header.
        let k1 = idempotency_key(
            b"f",
            env,
            &PskcCredential::Key(Zeroizing::new("00".repeat(16))),
        );
        let k2 = idempotency_key(
            b"f",
            env,
            &PskcCredential::Key(Zeroizing::new("11".repeat(16))),
        );
        assert_eq!(k1, k2);
    }
}
