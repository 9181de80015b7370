//! RFC 6238 time steps: `T = floor((now - T0) / X)` with `T0 = 0` (the Unix epoch).

/// The time step that contains `unix_seconds` for steps of `time_step` seconds (at least 1).
pub fn time_step_at(unix_seconds: u64, time_step: u32) -> u64 {
    unix_seconds / u64::from(time_step.max(1))
}
