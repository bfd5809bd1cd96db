//! Numbers, sizes and times written for people.

/// `n` with thousands separators: `1,234,567`.
///
/// ```
/// assert_eq!(sfs_dump::thousands(1234567), "1,234,567");
/// assert_eq!(sfs_dump::thousands(12), "12");
/// ```
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// A size in binary units with one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
///
/// ```
/// assert_eq!(sfs_dump::human(512), "512 B");
/// assert_eq!(sfs_dump::human(1536), "1.5 KiB");
/// assert_eq!(sfs_dump::human(3 << 30), "3.0 GiB");
/// ```
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scale = 1024u128;
    while unit + 1 < UNITS.len() && u128::from(n) >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    // One decimal, rounded, in integers: no float formatting surprises.
    let tenths = (u128::from(n) * 10 + scale / 2) / scale;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// A size both ways: `1.2 MiB (1,234,567 bytes)`, or `512 bytes` when small.
pub fn size_both(n: u64) -> String {
    if n < 1024 {
        format!("{} byte{}", n, plural(n))
    } else {
        format!("{} ({} bytes)", human(n), thousands(n))
    }
}

pub(super) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub(super) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    fraction(part as f64 / whole as f64)
}

pub(super) fn fraction(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// Milliseconds since the UNIX epoch as an ISO 8601 UTC time to the second,
/// for any value (years past 9999 get a sign, as ISO 8601 allows).
///
/// ```
/// assert_eq!(sfs_dump::iso8601(0), "1970-01-01T00:00:00Z");
/// assert_eq!(sfs_dump::iso8601(1_700_000_000_000), "2023-11-14T22:13:20Z");
/// assert_eq!(sfs_dump::iso8601(-1), "1969-12-31T23:59:59Z");
/// ```
pub fn iso8601(ms: i128) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else {
        format!("{y:+05}")
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day number (0 = 1970-01-01), after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

/// How far `at` is from `now` (both in ms), in the largest whole unit:
/// `in 3 min`, `2 h ago`.
///
/// ```
/// assert_eq!(sfs_dump::relative(180_000, 0), "in 3 min");
/// assert_eq!(sfs_dump::relative(0, 7_200_000), "2 h ago");
/// ```
pub fn relative(at: i128, now: i64) -> String {
    let d = at - i128::from(now);
    let s = d.unsigned_abs() / 1000;
    let span = match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..172_800 => format!("{} h", s / 3600),
        172_800..63_072_000 => format!("{} d", s / 86_400),
        _ => format!("{} y", s / 31_557_600),
    };
    if d > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}
