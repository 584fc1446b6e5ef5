//! The client's deadline: `grpc-timeout`, and when a call counts as having
//! reached it.

use std::time::Duration;

use http::HeaderValue;

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC over HTTP/2 specification writes it. `None`
/// for anything else: a malformed deadline is no deadline.
pub(crate) fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    grpc_timeout_value(value.as_bytes())
}

/// The deadline a `grpc-timeout` value gives (as [`grpc_timeout`](crate::grpc_timeout)
/// reads it from headers), for sources that have the value's bytes alone.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(clientgone::grpc_timeout_value(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(clientgone::grpc_timeout_value(b"soon"), None);
/// ```
pub fn grpc_timeout_value(bytes: &[u8]) -> Option<Duration> {
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a call that ended `elapsed` after it arrived had reached the
/// client's deadline `timeout`: the rule that makes a break
/// `deadline_exceeded`, for every source of calls.
///
/// The server starts its clock after the client started its own, and a
/// client may round its timeout up when it writes it (gRPC C-core by up to
/// 1 %), so a client that resets the stream at its deadline arrives up to a
/// little *before* the deadline the server computed. A slack of 5 ms plus
/// 1 % of the timeout covers both; a cancel sooner than that is the client's
/// own choice.
///
/// ```
/// use std::time::Duration;
/// let second = Duration::from_secs(1);
/// assert!(clientgone::deadline_reached(Duration::from_millis(990), second));
/// assert!(!clientgone::deadline_reached(Duration::from_millis(900), second));
/// ```
pub fn deadline_reached(elapsed: Duration, timeout: Duration) -> bool {
    let slack = Duration::from_millis(5) + timeout / 100;
    elapsed + slack >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specification_units() {
        let cases = [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("10S", Some(Duration::from_secs(10))),
            ("250m", Some(Duration::from_millis(250))),
            ("4999817u", Some(Duration::from_micros(4_999_817))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("0m", Some(Duration::ZERO)),
            ("123456789S", None),
            ("S", None),
            ("", None),
            ("10s", None),
            ("1.5S", None),
            ("-1S", None),
        ];
        for (text, want) in cases {
            let value = HeaderValue::from_str(text).unwrap();
            assert_eq!(parse_grpc_timeout(&value), want, "{text:?}");
        }
    }

    #[test]
    fn deadline_slack() {
        let ms = Duration::from_millis;
        assert!(deadline_reached(ms(1000), ms(1000)));
        assert!(deadline_reached(ms(1200), ms(1000)));
        // A reset that arrives a hair before the server's idea of the deadline.
        assert!(deadline_reached(ms(986), ms(1000)));
        assert!(!deadline_reached(ms(984), ms(1000)));
        assert!(!deadline_reached(ms(500), ms(1000)));
        assert!(deadline_reached(ms(46), ms(50)));
        assert!(!deadline_reached(ms(40), ms(50)));
    }
}
