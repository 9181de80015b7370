//! The process-wide log subscriber, writing JSON into memory for a test to read. A binary that
//! installs it runs alone: tests/logs.rs and tests/audit.rs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use oath_service::config::{LogFormat, LogSettings};
use tracing_subscriber::fmt::MakeWriter;

/// What the subscriber wrote.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Installs the service's subscriber at `trace`, in JSON, writing here (`RUST_LOG` unset),
    /// once per process: every test of the binary reads the one capture, and tells its own
    /// lines apart (by environment, request id).
    pub fn install() -> Self {
        static INSTALLED: OnceLock<Capture> = OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let capture = Capture::default();
                std::env::remove_var("RUST_LOG");
                oath_service::telemetry::init_with_writer(
                    &LogSettings {
                        level: "trace".into(),
                        format: LogFormat::Json,
                    },
                    capture.clone(),
                );
                capture
            })
            .clone()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
