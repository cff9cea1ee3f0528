//! When and how long to wait before asking a registry again.
//!
//! oci-client retries nothing, so this is ours: 429 and 5xx answers and
//! transport failures are retried a bounded number of times with
//! exponential backoff, honouring `Retry-After` (seconds or an HTTP date).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest wait a `Retry-After` header may impose on us.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; doubled each retry.
    pub base: Duration,
    /// The longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            base: Duration::from_millis(250),
            max: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// A policy whose base delay may be shortened by `AIRLOCK_RETRY_BASE_MS`
    /// (tests use it to keep fault runs short).
    pub fn with_retries(retries: u32) -> RetryPolicy {
        let mut policy = RetryPolicy {
            retries,
            ..RetryPolicy::default()
        };
        if let Some(ms) = std::env::var("AIRLOCK_RETRY_BASE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            policy.base = Duration::from_millis(ms);
            policy.max = policy.max.min(Duration::from_millis(ms.saturating_mul(32)));
        }
        policy
    }

    /// The wait before retry number `attempt` (1-based), unless the server
    /// named one (its `Retry-After`, as [`retry_after`] reads it).
    pub fn backoff(&self, attempt: u32, server: Option<Duration>) -> Duration {
        if let Some(wait) = server {
            return wait.min(MAX_RETRY_AFTER);
        }
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Whether an answer with this status is worth asking again.
pub fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Whether a transport error is worth trying again (all are, but a
/// malformed URL or a bad request builder is a bug, not weather).
pub fn retryable_error(e: &reqwest::Error) -> bool {
    !e.is_builder() && !e.is_redirect() && !is_tls_failure(e)
}

/// Whether a transport error is a TLS failure (a bad certificate, or HTTPS
/// spoken to a plain-HTTP server): asking again gives the same answer.
/// rustls's errors reach us only as text inside io errors, hence the match
/// on their words.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if [
            "certificate",
            "InvalidContentType",
            "HandshakeFailure",
            "peer sent no certificates",
        ]
        .iter()
        .any(|w| text.contains(w))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Parses `Retry-After` as delta-seconds or as an IMF-fixdate.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = parse_http_date(value)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses the IMF-fixdate form of RFC 9110 section 5.6.7
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form servers send today.
/// Written here because it is twenty lines and no crate we carry does it.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: u64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || year < 1970 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn parses_http_date() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 784_111_777);
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
    }

    #[test]
    fn honours_retry_after_seconds_and_caps_it() {
        let policy = RetryPolicy::default();
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(policy.backoff(1, retry_after(&h)), Duration::from_secs(2));
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(policy.backoff(1, retry_after(&h)), MAX_RETRY_AFTER);
        assert_eq!(policy.backoff(3, None), Duration::from_millis(1000));
        assert_eq!(policy.backoff(30, None), policy.max);
    }
}
