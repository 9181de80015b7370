//! The memory an uploaded file costs, whatever its shape: each upload goes to a real service
//! process, whose peak resident memory (`VmHWM`, reset just before the upload) must stay within
//! its resident memory before the upload plus four times the upload's size. The shapes are those
//! that once made the parser hold many times the file: header parts kept whole, cells collected
//! before they were counted, trees of small elements.

use std::time::Duration;

use oath_service::auth::{self, Scope};
use reqwest::Client;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{parts, test_settings};
use crate::support::service::{database_url, service_env, Service};
use crate::support::tls::scratch_dir;

const PSKC: &str = "application/pskc+xml";
const CSV: &str = "text/csv";
const HEADER: &str = "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep";
/// Size of each upload: half of jobs.max_body_bytes' default.
const UPLOAD: usize = 32 << 20;
/// Growth of the peak allowed, in multiples of the upload's size: the body itself is one.
const FACTOR: u64 = 4;
/// Growth allowed besides, per row of the job: its item (about 100 bytes) and message, however
/// few bytes of the file the row took. The row limit (jobs.max_items) bounds this part.
const PER_ROW: u64 = 256;

/// A line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What one upload cost the service.
struct Upload {
    status: u16,
    body: Value,
    /// Resident memory before the upload, KiB.
    before_kib: u64,
    /// Peak resident memory while the upload was read, parsed and answered, KiB.
    peak_kib: u64,
}

impl Upload {
    /// Asserts that the peak stayed within the bound for an upload of `size` bytes and `rows`
    /// rows; prints the numbers for the record.
    fn assert_bounded(&self, shape: &str, size: usize, rows: u64) {
        let growth = self.peak_kib.saturating_sub(self.before_kib);
        let bound = (FACTOR * size as u64 + PER_ROW * rows) / 1024;
        eprintln!(
            "{shape}: upload {} KiB, resident {} KiB before, peak {} KiB: +{growth} KiB ({:.2}x the upload; bound {bound} KiB)",
            size / 1024,
            self.before_kib,
            self.peak_kib,
            growth as f64 * 1024.0 / size as f64,
        );
        assert!(
            growth <= bound,
            "{shape}: the peak grew by {growth} KiB for an upload of {} KiB (bound {bound} KiB)",
            size / 1024
        );
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// Starts a service process on the test's database (no job runners: the upload is what is
/// measured), warms it up with a small file, then POSTs `body` and measures the peak.
async fn upload(pool: &PgPool, name: &str, media_type: &str, body: Vec<u8>) -> Upload {
    let dir = scratch_dir(name);
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__WORKERS", "1".to_string()),
        ("OATH__JOBS__RUNNERS", "0".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    let mut service = Service::start(&["serve", "--no-migrate"], &env, dir.join("service.log"));
    service.wait_ready(Duration::from_secs(60)).await;
    let environment = Uuid::new_v4();
    let bearer = auth::mint_dev_token(
        &test_settings().auth,
        environment,
        &[Scope::JobsWrite.as_str().to_string()],
        Duration::from_secs(600),
    )
    .unwrap();
    let client = Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let url = format!("{}/v1/environments/{environment}/oathJobs", service.base);
    let post = |media_type: &str, body: Vec<u8>| {
        client
            .post(&url)
            .bearer_auth(&bearer)
            .header("content-type", media_type)
            .body(body)
            .send()
    };
    // Warm-up: the blocking pool, the database connections, the first job written.
    let warm_up = format!("{HEADER}\nW1,3132333435363738393031323334353637383930,HOTP,6,,,\n");
    let (status, res) = parts(post(CSV, warm_up.into_bytes()).await.unwrap()).await;
    assert_eq!(status, 202, "{res}");

    let pid = service.pid();
    let before_kib = status_kib(pid, "VmRSS:");
    // Writing 5 resets the peak to the present resident size.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (status, body) = parts(post(media_type, body).await.unwrap()).await;
    let peak_kib = status_kib(pid, "VmHWM:");
    service.assert_running();
    Upload {
        status,
        body,
        before_kib,
        peak_kib,
    }
}

/// A PSKC document: the container's start, `part` repeated until the body holds about `UPLOAD`
/// bytes, then `tail` and the container's end.
fn pskc(part: &str, tail: &str) -> Vec<u8> {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<KeyContainer Version=\"1.0\" xmlns=\"urn:ietf:params:xml:ns:keyprov:pskc\">\n",
    );
    while body.len() + part.len() < UPLOAD {
        body.push_str(part);
    }
    body.push_str(tail);
    body.push_str("</KeyContainer>\n");
    body.into_bytes()
}

/// A key package the service imports.
const KEY_PACKAGE: &str = "<KeyPackage><DeviceInfo><SerialNo>P1</SerialNo></DeviceInfo>\
    <Key Algorithm=\"urn:ietf:params:xml:ns:keyprov:pskc:hotp\">\
    <AlgorithmParameters><ResponseFormat Length=\"6\" Encoding=\"DECIMAL\"/></AlgorithmParameters>\
    <Data><Secret><PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret></Data></Key></KeyPackage>\n";

/// `EncryptionKey` parts before the first key package, each of many small elements: once each
/// was kept whole until the first key package (32 MB took the process to 1.13 GB).
#[sqlx::test]
async fn pskc_encryption_key_parts_before_the_first_key_package(pool: PgPool) {
    // Each part as large a tree as a part may be (991 elements, 98 children at most).
    let group = format!("<g>{}</g>", "<KeyName/>".repeat(98));
    let part = format!("<EncryptionKey>{}</EncryptionKey>\n", group.repeat(10));
    let body = pskc(&part, KEY_PACKAGE);
    let size = body.len();
    let upload = upload(&pool, "pskc-encryption-keys", PSKC, body).await;
    upload.assert_bounded("PSKC, EncryptionKey parts", size, 0);
    assert_eq!(upload.status, 400, "{}", upload.body);
    assert!(
        upload.message().starts_with("Line 4: ") && upload.message().contains("EncryptionKey"),
        "{}",
        upload.body
    );
}

/// Key packages that are wide trees of elements with many attributes: each is read whole, so
/// each may cost many times its bytes, but only one at a time.
#[sqlx::test]
async fn pskc_key_packages_of_wide_trees(pool: PgPool) {
    let attributes: String = (0..32).map(|i| format!(" a{i}=\"\"")).collect();
    let group = format!("<g>{}</g>", format!("<e{attributes}/>").repeat(99));
    let part = format!("<KeyPackage>{}</KeyPackage>\n", group.repeat(9));
    let body = pskc(&part, KEY_PACKAGE);
    let (size, packages) = (body.len(), (body.len() / part.len()) as u64 + 1);
    let upload = upload(&pool, "pskc-wide", PSKC, body).await;
    upload.assert_bounded("PSKC, wide key packages", size, packages);
    assert_eq!(upload.status, 202, "{}", upload.body);
}

/// Key packages that are deep trees (chains of 30 nested elements).
#[sqlx::test]
async fn pskc_key_packages_of_deep_trees(pool: PgPool) {
    let chain = format!("{}{}", "<deep>".repeat(30), "</deep>".repeat(30));
    let part = format!("<KeyPackage>{}</KeyPackage>\n", chain.repeat(33));
    let body = pskc(&part, KEY_PACKAGE);
    let (size, packages) = (body.len(), (body.len() / part.len()) as u64 + 1);
    let upload = upload(&pool, "pskc-deep", PSKC, body).await;
    upload.assert_bounded("PSKC, deep key packages", size, packages);
    assert_eq!(upload.status, 202, "{}", upload.body);
}

/// A CSV row of 32 M empty cells: once every cell was collected before their number was
/// compared with the header's (809 MB at the peak).
#[sqlx::test]
async fn csv_row_of_commas(pool: PgPool) {
    let mut body = format!("{HEADER}\nS1").into_bytes();
    body.resize(UPLOAD, b',');
    body.push(b'\n');
    let size = body.len();
    let upload = upload(&pool, "csv-commas", CSV, body).await;
    upload.assert_bounded("CSV, a row of commas", size, 1);
    assert_eq!(upload.status, 202, "{}", upload.body);
    assert_eq!(upload.body["progress"]["total"], 1, "{}", upload.body);
}

/// A CSV header row of 32 M cells: read as a record like any other, and each unknown name
/// repeated in the message.
#[sqlx::test]
async fn csv_header_of_commas(pool: PgPool) {
    let mut body = b"serialNumber,secret,type,otpLength".to_vec();
    body.resize(UPLOAD, b',');
    body.extend_from_slice(b"\nS1,3132333435363738393031323334353637383930,HOTP,6\n");
    let size = body.len();
    let upload = upload(&pool, "csv-header", CSV, body).await;
    upload.assert_bounded("CSV, a header of commas", size, 0);
    assert_eq!(upload.status, 400, "{}", upload.body);
    assert!(upload.message().starts_with("Line 1: "), "{}", upload.body);
    assert!(upload.message().len() < 1000, "{}", upload.message().len());
}

/// A CSV cell of 32 MB: collected, then copied into the row's fields.
#[sqlx::test]
async fn csv_cell_of_32_mb(pool: PgPool) {
    let mut body = format!("{HEADER}\nS1,").into_bytes();
    body.resize(UPLOAD, b'A');
    body.extend_from_slice(b",HOTP,6,,,\n");
    let size = body.len();
    let upload = upload(&pool, "csv-cell", CSV, body).await;
    upload.assert_bounded("CSV, a cell of 32 MB", size, 1);
    assert_eq!(upload.status, 202, "{}", upload.body);
    assert_eq!(upload.body["progress"]["total"], 1, "{}", upload.body);
}

/// As many one-cell CSV rows as a job may hold (jobs.max_items): each an INVALID item.
#[sqlx::test]
async fn csv_rows_at_the_row_limit(pool: PgPool) {
    let mut body = format!("{HEADER}\n").into_bytes();
    for _ in 0..100_000 {
        body.extend_from_slice(b",\n");
    }
    let size = body.len();
    let upload = upload(&pool, "csv-rows", CSV, body).await;
    upload.assert_bounded("CSV, 100,000 one-cell rows", size, 100_000);
    assert_eq!(upload.status, 202, "{}", upload.body);
}

/// As many empty key packages as a job may hold: each an INVALID item.
#[sqlx::test]
async fn pskc_empty_key_packages_at_the_row_limit(pool: PgPool) {
    let mut body = String::from("<KeyContainer>");
    body.push_str(&"<KeyPackage/>".repeat(100_000));
    body.push_str("</KeyContainer>");
    let body = body.into_bytes();
    let size = body.len();
    let upload = upload(&pool, "pskc-rows", PSKC, body).await;
    upload.assert_bounded("PSKC, 100,000 empty key packages", size, 100_000);
    assert_eq!(upload.status, 202, "{}", upload.body);
}
