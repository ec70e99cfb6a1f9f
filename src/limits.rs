//! Sizes checked before allocating: a request that cannot fit is refused
//! with [`Error::TooLarge`] instead of aborting the process when the
//! allocation fails.
//!
//! The limit is `SMARTTRIM_MEMORY_LIMIT` (bytes, or with a `K`, `M`, `G` or
//! `T` suffix, powers of 1024) when set, else the memory the system reports
//! available (`MemAvailable` in `/proc/meminfo` on Linux). Where neither is
//! known, nothing is refused. The sizes checked are lower bounds of what
//! the work will allocate, so a refusal is never wrong; work that passes
//! the check may still run out of memory later if the estimate is far
//! below what it really takes.

use crate::{Error, Result};

/// The environment variable that states a memory limit.
pub const MEMORY_LIMIT_VAR: &str = "SMARTTRIM_MEMORY_LIMIT";

/// Parses a size: bytes, or a number with a `K`, `M`, `G` or `T` suffix
/// (powers of 1024; an optional `iB`/`B` after it).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * (1u64 << shift) as f64) as u64)
}

/// The memory limit in bytes and where it comes from, if one is known.
pub fn memory_limit() -> Option<(u64, String)> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_VAR) {
        if let Some(b) = parse_size(&v) {
            return Some((b, format!("{MEMORY_LIMIT_VAR}={}", v.trim())));
        }
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib.saturating_mul(1024), "the memory available".into()))
}

/// Bytes as a short human-readable size (`1.5 GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuses `bytes` of `what` when they exceed [`memory_limit`].
pub fn check_memory(what: &str, bytes: u64) -> Result<()> {
    match memory_limit() {
        Some((limit, source)) if bytes > limit => Err(Error::TooLarge {
            what: what.to_string(),
            needed: bytes,
            limit,
            source_of_limit: source,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("2K"), Some(2048));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4 GiB"), Some(4 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
