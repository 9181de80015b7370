//! `[jobs]`: the bulk job runners, chunking, leases, retention and the per-environment backlog.

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobSettings {
    /// Job runners per service process; 0 runs none (an API-only replica).
    pub runners: usize,
    /// Items per chunk: one transaction each.
    pub chunk_size: usize,
    /// Chunks of one create job a runner writes at once, each on a connection of its own; they
    /// commit one after another, in item order.
    pub parallel_chunks: usize,
    /// How long a claim lasts without progress before another runner may take the job over.
    pub lease_seconds: u64,
    /// Fallback polling period when no notification arrives.
    pub poll_interval_ms: u64,
    /// Takeovers (claims of a job whose runner's lease expired: it died or stalled) after which
    /// the job is marked FAILED. Giving a job back between chunks does not count.
    pub max_attempts: i32,
    /// Largest accepted job body.
    pub max_body_bytes: usize,
    /// Items per job.
    pub max_items: usize,
    /// How long an `"async": false` request waits for its job.
    pub sync_wait_seconds: u64,
    /// Finished jobs (DONE, FAILED) are deleted with their results this long after completion.
    pub retention_seconds: u64,
    /// How often each process looks for finished jobs past their retention.
    pub purge_interval_seconds: u64,
    /// Jobs an environment may have PENDING or IN_PROGRESS at once; beyond it a submission is 429.
    pub max_unfinished_per_environment: u32,
}

/// Ten years: longer retention is no retention, and the interval stays far from overflow.
const MAX_RETENTION_SECONDS: u64 = 10 * 366 * 86_400;

/// The most chunks of one job written at once.
const MAX_PARALLEL_CHUNKS: usize = 8;

impl JobSettings {
    /// Checks what serde cannot: the ranges.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.chunk_size == 0 || self.chunk_size > 10_000 {
            return fail("jobs.chunk_size must be from 1 to 10000".into());
        }
        if !(1..=MAX_PARALLEL_CHUNKS).contains(&self.parallel_chunks) {
            return fail(format!(
                "jobs.parallel_chunks must be from 1 to {MAX_PARALLEL_CHUNKS}"
            ));
        }
        if self.lease_seconds < 2 {
            return fail("jobs.lease_seconds must be at least 2".into());
        }
        if self.poll_interval_ms == 0 {
            return fail("jobs.poll_interval_ms must be at least 1".into());
        }
        if self.max_attempts < 1 {
            return fail("jobs.max_attempts must be at least 1".into());
        }
        if self.max_items == 0 || self.max_items > i32::MAX as usize {
            return fail("jobs.max_items must be from 1 to 2147483647".into());
        }
        if !(1..=MAX_RETENTION_SECONDS).contains(&self.retention_seconds) {
            return fail(format!(
                "jobs.retention_seconds must be from 1 to {MAX_RETENTION_SECONDS}"
            ));
        }
        if !(1..=86_400).contains(&self.purge_interval_seconds) {
            return fail("jobs.purge_interval_seconds must be from 1 to 86400".into());
        }
        if !(1..=100_000).contains(&self.max_unfinished_per_environment) {
            return fail("jobs.max_unfinished_per_environment must be from 1 to 100000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn job_retention_defaults_and_ranges() {
        let s = load_with(VALID).unwrap();
        assert_eq!(s.jobs.retention_seconds, 2_592_000);
        assert_eq!(s.jobs.purge_interval_seconds, 300);
        let s = load_with(&format!(
            "{VALID}\n[jobs]\nretention_seconds = 1\npurge_interval_seconds = 86400"
        ))
        .unwrap();
        assert_eq!(
            (s.jobs.retention_seconds, s.jobs.purge_interval_seconds),
            (1, 86_400)
        );
        for (extra, key) in [
            ("retention_seconds = 0", "jobs.retention_seconds"),
            ("retention_seconds = 316224001", "jobs.retention_seconds"),
            ("purge_interval_seconds = 0", "jobs.purge_interval_seconds"),
            (
                "purge_interval_seconds = 86401",
                "jobs.purge_interval_seconds",
            ),
        ] {
            let err = load_with(&format!("{VALID}\n[jobs]\n{extra}")).unwrap_err();
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn parallel_chunks_from_a_file_or_the_environment() {
        assert_eq!(load_with(VALID).unwrap().jobs.parallel_chunks, 2);
        let s = load_with(&format!("{VALID}\n[jobs]\nparallel_chunks = 1")).unwrap();
        assert_eq!(s.jobs.parallel_chunks, 1);
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[secret, ("OATH__JOBS__PARALLEL_CHUNKS", "8")]).unwrap();
        assert_eq!(s.jobs.parallel_chunks, 8);
        for value in ["0", "9"] {
            let err = load_env(&[secret, ("OATH__JOBS__PARALLEL_CHUNKS", value)]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("jobs.parallel_chunks must be from 1 to 8"),
                "{value}: {err}"
            );
        }
    }
}
