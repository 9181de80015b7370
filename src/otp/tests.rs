//! RFC 4226 Appendix D and RFC 6238 Appendix B vectors, the windows at their edges, and
//! properties: whatever generation produced inside a window, the search finds.

use proptest::prelude::*;

use super::*;

const SEED_SHA1: &[u8] = b"12345678901234567890";
const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

fn six() -> OtpLength {
    OtpLength::new(6).unwrap()
}

fn eight() -> OtpLength {
    OtpLength::new(8).unwrap()
}

fn otp(value: u32, length: OtpLength) -> Otp {
    Otp::parse(&format!(
        "{value:0width$}",
        width = usize::from(length.get())
    ))
    .unwrap()
}

fn hotp_token(counter: u64) -> OtpToken {
    OtpToken {
        key: Secret::from_bytes(SEED_SHA1.to_vec()),
        algorithm: HashAlgorithm::Sha1,
        length: six(),
        factor: MovingFactor::Hotp { counter },
    }
}

fn totp_token(time_step: u32, drift: i32, last_step: Option<u64>) -> OtpToken {
    OtpToken {
        key: Secret::from_bytes(SEED_SHA1.to_vec()),
        algorithm: HashAlgorithm::Sha1,
        length: eight(),
        factor: MovingFactor::Totp {
            time_step,
            drift,
            last_step,
        },
    }
}

/// A TOTP check's success: the step it used up, and the token's drift from now on.
fn totp_at(step: u64, drift: i32) -> Option<Advance> {
    Some(Advance::Totp { step, drift })
}

fn code(token: &OtpToken, moving_factor: u64) -> Otp {
    otp(
        hotp(
            token.key.expose(),
            token.algorithm,
            token.length,
            moving_factor,
        ),
        token.length,
    )
}

const WINDOWS: Windows = Windows { hotp: 10, totp: 1 };

#[test]
fn rfc4226_appendix_d() {
    let expected = [
        755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
    ];
    for (counter, want) in expected.into_iter().enumerate() {
        assert_eq!(
            hotp(SEED_SHA1, HashAlgorithm::Sha1, six(), counter as u64),
            want,
            "counter {counter}"
        );
    }
    // The same truncated values, eight digits (Appendix D's "Truncated" column, mod 10^8).
    assert_eq!(hotp(SEED_SHA1, HashAlgorithm::Sha1, eight(), 0), 84755224);
    assert_eq!(hotp(SEED_SHA1, HashAlgorithm::Sha1, eight(), 9), 45520489);
}

#[test]
fn rfc6238_appendix_b() {
    let rows: [(u64, &str, &[u8], HashAlgorithm); 18] = [
        (59, "94287082", SEED_SHA1, HashAlgorithm::Sha1),
        (59, "46119246", SEED_SHA256, HashAlgorithm::Sha256),
        (59, "90693936", SEED_SHA512, HashAlgorithm::Sha512),
        (1111111109, "07081804", SEED_SHA1, HashAlgorithm::Sha1),
        (1111111109, "68084774", SEED_SHA256, HashAlgorithm::Sha256),
        (1111111109, "25091201", SEED_SHA512, HashAlgorithm::Sha512),
        (1111111111, "14050471", SEED_SHA1, HashAlgorithm::Sha1),
        (1111111111, "67062674", SEED_SHA256, HashAlgorithm::Sha256),
        (1111111111, "99943326", SEED_SHA512, HashAlgorithm::Sha512),
        (1234567890, "89005924", SEED_SHA1, HashAlgorithm::Sha1),
        (1234567890, "91819424", SEED_SHA256, HashAlgorithm::Sha256),
        (1234567890, "93441116", SEED_SHA512, HashAlgorithm::Sha512),
        (2000000000, "69279037", SEED_SHA1, HashAlgorithm::Sha1),
        (2000000000, "90698825", SEED_SHA256, HashAlgorithm::Sha256),
        (2000000000, "38618901", SEED_SHA512, HashAlgorithm::Sha512),
        (20000000000, "65353130", SEED_SHA1, HashAlgorithm::Sha1),
        (20000000000, "77737706", SEED_SHA256, HashAlgorithm::Sha256),
        (20000000000, "47863826", SEED_SHA512, HashAlgorithm::Sha512),
    ];
    for (time, want, seed, algorithm) in rows {
        let step = time_step_at(time, 30);
        let got = hotp(seed, algorithm, eight(), step);
        assert_eq!(format!("{got:08}"), want, "{time} {algorithm:?}");
        // And through verify, exactly at that time with no drift.
        let token = OtpToken {
            key: Secret::from_bytes(seed.to_vec()),
            algorithm,
            length: eight(),
            factor: MovingFactor::Totp {
                time_step: 30,
                drift: 0,
                last_step: None,
            },
        };
        let submitted = Otp::parse(want).unwrap();
        let windows = Windows { hotp: 0, totp: 0 };
        assert_eq!(verify(&token, &submitted, time, windows), totp_at(step, 0));
    }
}

#[test]
fn hotp_window_edges() {
    let token = hotp_token(5);
    // The expected counter and the last one of the look-ahead window are accepted.
    assert_eq!(
        verify(&token, &code(&token, 5), 0, WINDOWS),
        Some(Advance::Hotp { last: 5 })
    );
    assert_eq!(
        verify(&token, &code(&token, 15), 0, WINDOWS),
        Some(Advance::Hotp { last: 15 })
    );
    // One past the window, and every counter already consumed, are not.
    assert_eq!(verify(&token, &code(&token, 16), 0, WINDOWS), None);
    for behind in 0..5 {
        assert_eq!(verify(&token, &code(&token, behind), 0, WINDOWS), None);
    }
    // A code of another length never matches.
    let eight_digits = otp(hotp(SEED_SHA1, HashAlgorithm::Sha1, eight(), 5), eight());
    assert_eq!(verify(&token, &eight_digits, 0, WINDOWS), None);
}

#[test]
fn hotp_never_passes_the_storable_counter() {
    let token = hotp_token(MAX_COUNTER - 1);
    assert_eq!(
        verify(&token, &code(&token, MAX_COUNTER), 0, WINDOWS),
        Some(Advance::Hotp { last: MAX_COUNTER })
    );
    assert_eq!(
        verify(&token, &code(&token, MAX_COUNTER + 1), 0, WINDOWS),
        None
    );
}

#[test]
fn totp_window_drift_and_replay() {
    let now = 1_234_567_890;
    let t = time_step_at(now, 30);
    let token = totp_token(30, 0, None);
    assert_eq!(
        verify(&token, &code(&token, t + 1), now, WINDOWS),
        totp_at(t + 1, 1)
    );
    assert_eq!(
        verify(&token, &code(&token, t - 1), now, WINDOWS),
        totp_at(t - 1, -1)
    );
    assert_eq!(verify(&token, &code(&token, t + 2), now, WINDOWS), None);
    // With a learnt drift of +2 the window is centred on t + 2.
    let drifted = totp_token(30, 2, None);
    assert_eq!(
        verify(&drifted, &code(&drifted, t + 3), now, WINDOWS),
        totp_at(t + 3, 3)
    );
    assert_eq!(verify(&drifted, &code(&drifted, t), now, WINDOWS), None);
    // The last accepted step, and any before it, are never accepted again.
    let used = totp_token(30, 0, Some(t));
    assert_eq!(verify(&used, &code(&used, t), now, WINDOWS), None);
    assert_eq!(verify(&used, &code(&used, t - 1), now, WINDOWS), None);
    assert_eq!(
        verify(&used, &code(&used, t + 1), now, WINDOWS),
        totp_at(t + 1, 1)
    );
}

#[test]
fn totp_near_the_epoch_has_no_negative_steps() {
    let token = totp_token(30, -5, None);
    assert_eq!(verify(&token, &code(&token, 0), 10, WINDOWS), None);
    let token = totp_token(30, -1, None);
    assert_eq!(verify(&token, &code(&token, 0), 10, WINDOWS), totp_at(0, 0));
}

const RESYNC: ResyncWindows = ResyncWindows {
    hotp: 1000,
    totp_seconds: 86_400,
};

#[test]
fn hotp_resync_needs_two_consecutive_codes() {
    let token = hotp_token(100);
    let pair = |a: u64, b: u64| [code(&token, a), code(&token, b)];
    assert_eq!(
        resync(&token, &pair(600, 601), 0, RESYNC),
        Some(Advance::Hotp { last: 601 })
    );
    assert_eq!(
        resync(&token, &pair(1100, 1101), 0, RESYNC),
        Some(Advance::Hotp { last: 1101 })
    );
    assert_eq!(resync(&token, &pair(1101, 1102), 0, RESYNC), None);
    assert_eq!(resync(&token, &pair(600, 602), 0, RESYNC), None);
    assert_eq!(resync(&token, &pair(601, 600), 0, RESYNC), None);
    // Never backwards.
    assert_eq!(resync(&token, &pair(50, 51), 0, RESYNC), None);
}

#[test]
fn totp_resync_within_a_day_either_way() {
    let now = 2_000_000_000;
    let t = time_step_at(now, 30);
    let token = totp_token(30, 0, None);
    let pair = |a: u64| [code(&token, a), code(&token, a + 1)];
    // The token runs 2 hours behind: the second code is the current one, so drift is -240.
    assert_eq!(
        resync(&token, &pair(t - 241), now, RESYNC),
        totp_at(t - 240, -240)
    );
    // 24 hours ahead is the edge; beyond it, nothing.
    assert_eq!(
        resync(&token, &pair(t + 2879), now, RESYNC),
        totp_at(t + 2880, 2880)
    );
    assert_eq!(resync(&token, &pair(t + 2880), now, RESYNC), None);
    assert_eq!(resync(&token, &pair(t - 2881), now, RESYNC), None);
    // Steps already accepted are not accepted again.
    let used = totp_token(30, 0, Some(t));
    assert_eq!(resync(&used, &pair(t - 1), now, RESYNC), None);
    assert_eq!(resync(&used, &pair(t), now, RESYNC), None);
    assert_eq!(resync(&used, &pair(t + 1), now, RESYNC), totp_at(t + 2, 2));
}

#[test]
fn first_match_takes_the_first_in_order() {
    assert_eq!(
        first_match([4, 7, 9, 12], |c| Choice::from(u8::from(c > 5))),
        Some(7)
    );
    assert_eq!(first_match([4, 7], |_| Choice::from(0)), None);
    let order: Vec<u64> = around(5, 2).collect();
    assert_eq!(order, [5, 4, 6, 3, 7]);
    let clipped: Vec<u64> = around(1, 2).collect();
    assert_eq!(clipped, [1, 0, 2, 3]);
}

fn algorithm() -> impl Strategy<Value = HashAlgorithm> {
    prop_oneof![
        Just(HashAlgorithm::Sha1),
        Just(HashAlgorithm::Sha256),
        Just(HashAlgorithm::Sha512),
    ]
}

fn length() -> impl Strategy<Value = OtpLength> {
    prop_oneof![Just(six()), Just(eight())]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn codes_have_the_token_length(
        key in prop::collection::vec(any::<u8>(), 16..100),
        algorithm in algorithm(),
        length in length(),
        counter in any::<u64>(),
    ) {
        let value = hotp(&key, algorithm, length, counter);
        prop_assert!(value < 10u32.pow(u32::from(length.get())));
    }

    #[test]
    fn hotp_search_finds_what_generation_produced(
        key in prop::collection::vec(any::<u8>(), 16..100),
        length in length(),
        counter in 0u64..(1 << 62),
        window in 0u32..30,
        ahead in 0u32..30,
    ) {
        let ahead = ahead.min(window);
        let token = OtpToken { key: Secret::from_bytes(key), algorithm: HashAlgorithm::Sha1, length,
                            factor: MovingFactor::Hotp { counter } };
        let submitted = code(&token, counter + u64::from(ahead));
        let windows = Windows { hotp: window, totp: 0 };
        let Some(Advance::Hotp { last }) = verify(&token, &submitted, 0, windows) else {
            return Err(TestCaseError::fail("not found"));
        };
        // The lowest matching counter: the one generated, or an earlier collision.
        prop_assert!(last >= counter && last <= counter + u64::from(ahead));
        prop_assert_eq!(code(&token, last).value(), submitted.value());
    }

    #[test]
    fn totp_search_finds_what_generation_produced(
        key in prop::collection::vec(any::<u8>(), 16..100),
        algorithm in algorithm(),
        length in length(),
        time_step in 10u32..=300,
        now in 1_000_000_000u64..4_000_000_000,
        drift in -100i32..100,
        window in 0u32..5,
        offset in -5i64..=5,
    ) {
        let offset = offset.clamp(-i64::from(window), i64::from(window));
        let token = OtpToken { key: Secret::from_bytes(key), algorithm, length,
                            factor: MovingFactor::Totp { time_step, drift, last_step: None } };
        let t = time_step_at(now, time_step);
        let step = (t as i64 + i64::from(drift) + offset) as u64;
        let submitted = code(&token, step);
        let windows = Windows { hotp: 0, totp: window };
        let Some(Advance::Totp { step: found, drift: new_drift }) =
            verify(&token, &submitted, now, windows) else {
            return Err(TestCaseError::fail("not found"));
        };
        prop_assert_eq!(code(&token, found).value(), submitted.value());
        prop_assert_eq!(i64::from(new_drift), found as i64 - t as i64);
        let expected = t as i64 + i64::from(drift);
        prop_assert!((found as i64 - expected).abs() <= (step as i64 - expected).abs());
        // Once accepted, that step is refused.
        let used = OtpToken { factor: MovingFactor::Totp { time_step, drift: new_drift,
                                                        last_step: Some(found) }, ..token };
        let replayed = match verify(&used, &submitted, now, windows) {
            Some(Advance::Totp { step, .. }) => step <= found,
            _ => false,
        };
        prop_assert!(!replayed, "step {} accepted twice", found);
    }

    #[test]
    fn resync_finds_consecutive_codes(
        key in prop::collection::vec(any::<u8>(), 16..100),
        counter in 0u64..(1 << 62),
        ahead in 0u64..=200,
    ) {
        let token = OtpToken { key: Secret::from_bytes(key), algorithm: HashAlgorithm::Sha1,
                            length: six(), factor: MovingFactor::Hotp { counter } };
        let first = counter + ahead;
        let otps = [code(&token, first), code(&token, first + 1)];
        let windows = ResyncWindows { hotp: 200, totp_seconds: 0 };
        let Some(Advance::Hotp { last }) = resync(&token, &otps, 0, windows) else {
            return Err(TestCaseError::fail("not found"));
        };
        prop_assert!(last > counter && last <= first + 1);
        prop_assert_eq!(
            [code(&token, last - 1).value(), code(&token, last).value()],
            [otps[0].value(), otps[1].value()]
        );
    }
}
