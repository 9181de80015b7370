//! The OATH engine: HOTP (RFC 4226) and TOTP (RFC 6238) code generation, the window searches of
//! validation, and resynchronisation, as pure functions of the key, the token's moving factor and
//! the time. No I/O: the caller loads a token, asks [`verify`] or [`resync`] for an [`Advance`],
//! and stores it atomically.
//!
//! Every search computes and compares every candidate in its window, with constant-time
//! comparisons, so the time a check takes does not tell whether or where a code matched.

mod hotp;
mod totp;

pub use hotp::{hotp, MAX_COUNTER};
pub use totp::time_step_at;

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::domain::{HashAlgorithm, Otp, OtpLength, Secret};

/// What the engine needs to know of a token.
#[derive(Clone, Debug)]
pub struct OtpToken {
    pub key: Secret,
    pub algorithm: HashAlgorithm,
    pub length: OtpLength,
    pub factor: MovingFactor,
}

/// The token's moving factor as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MovingFactor {
    /// `counter` is the next counter value expected.
    Hotp { counter: u64 },
    /// `time_step` in seconds; `drift` in steps (the token's clock minus ours); `last_step` the
    /// last accepted step, never accepted again.
    Totp {
        time_step: u32,
        drift: i32,
        last_step: Option<u64>,
    },
}

/// How far validation searches: HOTP counters after the expected one, TOTP steps either side of
/// the expected one.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub hotp: u32,
    pub totp: u32,
}

/// How far resynchronisation searches: HOTP counters after the expected one, TOTP seconds either
/// side of now.
#[derive(Clone, Copy, Debug)]
pub struct ResyncWindows {
    pub hotp: u32,
    pub totp_seconds: u32,
}

/// The new moving factor after codes were accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advance {
    /// `last` is the last counter consumed; the next one expected is `last + 1`.
    Hotp { last: u64 },
    /// `step` is the last time step consumed (never accepted again); `drift` is `step` minus the
    /// current step.
    Totp { step: u64, drift: i32 },
}

/// Checks one OTP at `now` (Unix seconds). HOTP: counters `counter ..= counter + window`, the
/// lowest match wins. TOTP: steps `expected - window ..= expected + window` where `expected` is
/// the current step plus the drift, excluding steps up to the last accepted one; the match
/// nearest `expected` wins (the earlier one on a tie).
pub fn verify(token: &OtpToken, otp: &Otp, now: u64, windows: Windows) -> Option<Advance> {
    if otp.length() != token.length {
        return None;
    }
    let code = |c: u64| hotp(token.key.expose(), token.algorithm, token.length, c);
    match token.factor {
        MovingFactor::Hotp { counter } => {
            let last = counter
                .saturating_add(u64::from(windows.hotp))
                .min(MAX_COUNTER);
            first_match(counter..=last, |c| code(c).ct_eq(&otp.value()))
                .map(|last| Advance::Hotp { last })
        }
        MovingFactor::Totp {
            time_step,
            drift,
            last_step,
        } => {
            let now_step = time_step_at(now, time_step);
            let expected = now_step as i128 + i128::from(drift);
            let candidates = around(expected, i128::from(windows.totp))
                .filter(|s| last_step.is_none_or(|l| *s > l));
            first_match(candidates, |s| code(s).ct_eq(&otp.value()))
                .map(|step| totp_advance(step, now_step))
        }
    }
}

/// Finds two consecutive OTPs. HOTP: the first at a counter in `counter ..= counter + window`
/// (lowest wins). TOTP: both at steps within `window` seconds of now, after the last accepted
/// step (the pair nearest now wins). The advance consumes both codes.
pub fn resync(
    token: &OtpToken,
    otps: &[Otp; 2],
    now: u64,
    windows: ResyncWindows,
) -> Option<Advance> {
    if otps.iter().any(|o| o.length() != token.length) {
        return None;
    }
    let code = |c: u64| hotp(token.key.expose(), token.algorithm, token.length, c);
    // Each code of the range is computed once; candidate `i` is the pair (lo + i, lo + i + 1).
    let pair_search = |lo: u64, hi: u64, order: &mut dyn Iterator<Item = u64>| {
        let codes: Vec<u32> = (lo..=hi).map(code).collect();
        first_match(order, |first| {
            let i = (first - lo) as usize;
            codes[i].ct_eq(&otps[0].value()) & codes[i + 1].ct_eq(&otps[1].value())
        })
    };
    match token.factor {
        MovingFactor::Hotp { counter } => {
            let hi = counter
                .saturating_add(u64::from(windows.hotp) + 1)
                .min(MAX_COUNTER);
            if hi <= counter {
                return None;
            }
            pair_search(counter, hi, &mut (counter..hi))
                .map(|first| Advance::Hotp { last: first + 1 })
        }
        MovingFactor::Totp {
            time_step,
            last_step,
            ..
        } => {
            let now_step = time_step_at(now, time_step);
            let radius = u64::from(windows.totp_seconds).div_ceil(u64::from(time_step));
            let lo = now_step
                .saturating_sub(radius)
                .max(last_step.map_or(0, |l| l.saturating_add(1)));
            let hi = now_step.saturating_add(radius);
            if hi <= lo {
                return None;
            }
            // The pair whose second step is nearest now: that code is what the token shows.
            let mut order = around(i128::from(now_step), i128::from(radius))
                .map(|second| second.wrapping_sub(1))
                .filter(|first| (lo..hi).contains(first));
            pair_search(lo, hi, &mut order).map(|first| totp_advance(first + 1, now_step))
        }
    }
}

fn totp_advance(step: u64, now_step: u64) -> Advance {
    // Windows are bounded by configuration far below i32::MAX steps.
    let drift = i32::try_from(step as i128 - now_step as i128).unwrap_or(i32::MAX);
    Advance::Totp { step, drift }
}

/// `center, center - 1, center + 1, center - 2, ...` out to `radius`, without negative values.
fn around(center: i128, radius: i128) -> impl Iterator<Item = u64> {
    (0..=radius)
        .flat_map(move |d| {
            let below = (d > 0).then_some(center - d);
            below.into_iter().chain([center + d])
        })
        .filter_map(|s| u64::try_from(s).ok())
}

/// The first candidate for which `matches` holds, in iteration order. Every candidate is examined
/// and the choice is made with constant-time selects, so timing does not reveal the match.
fn first_match(
    candidates: impl IntoIterator<Item = u64>,
    mut matches: impl FnMut(u64) -> Choice,
) -> Option<u64> {
    let mut found = Choice::from(0);
    let mut chosen = 0u64;
    for candidate in candidates {
        let take = matches(candidate) & !found;
        chosen = u64::conditional_select(&chosen, &candidate, take);
        found |= take;
    }
    bool::from(found).then_some(chosen)
}

#[cfg(test)]
mod tests;
