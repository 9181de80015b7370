//! `parse_job` on any bytes, as either job type: never panics; a job holds 1 to `max_items`
//! items; refusals list at most `MAX_DETAILS` details and count them all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::domain::job::{parse_job, JobRequestError, JobType, MAX_DETAILS};

fuzz_target!(|data: &[u8]| {
    const MAX_ITEMS: usize = 50;
    for expected in [JobType::CreateTokens, JobType::RevokeTokens] {
        match parse_job(data, expected, MAX_ITEMS) {
            Ok(job) => {
                assert_eq!(job.job_type(), expected);
                assert!((1..=MAX_ITEMS).contains(&job.len()));
            }
            Err(JobRequestError::Syntax(message)) => assert!(!message.is_empty()),
            Err(JobRequestError::Invalid { details, total }) => {
                assert!(!details.is_empty() && details.len() <= MAX_DETAILS);
                assert!(total >= details.len());
            }
        }
    }
});
