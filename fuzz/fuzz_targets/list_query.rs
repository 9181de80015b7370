//! The list query strings (token list with its filter, job list, job results) on any input:
//! never panic, and a parsed page size is always within bounds. Cursors round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::routes::cursor;
use oath_service::routes::jobs::{JobListRequest, ResultsRequest};
use oath_service::routes::tokens::ListRequest;
use oath_service::service::tokens::TokenFilter;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = <[u8; 16]>::try_from(&data[..data.len().min(16)]) {
        let id = Uuid::from_bytes(id);
        assert_eq!(cursor::decode(&cursor::encode(id)).ok(), Some(id));
    }
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(list) = ListRequest::parse(query) {
        assert!((1..=1000).contains(&list.paging.limit));
        match list.filter {
            TokenFilter::Serial(serial) => {
                assert!(serial.as_str().bytes().all(|b| b.is_ascii_alphanumeric()))
            }
            TokenFilter::User(user) => {
                assert!(!user.as_str().is_empty() && !user.as_str().chars().any(char::is_control))
            }
            TokenFilter::All => {}
        }
    }
    if let Ok(jobs) = JobListRequest::parse(query) {
        assert!((1..=1000).contains(&jobs.paging.limit));
    }
    if let Ok(results) = ResultsRequest::parse(query) {
        assert!((1..=1000).contains(&results.paging.limit));
    }
    let _ = cursor::decode(query);
});
