//! [`OtlpConfig`]: what the standard `OTEL_*` environment variables ask for.

use std::fmt;
use std::time::Duration;

use super::tls::OtlpTls;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`, the default; port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`; port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// How traces are exported. Build it from the environment with
/// [`OtlpConfig::from_env`], or by hand (tests, embedding).
///
/// ```
/// use clientgone_exporter::otlp::{OtlpConfig, OtlpProtocol};
///
/// let config = OtlpConfig::new(OtlpProtocol::Grpc)
///     .endpoint("http://127.0.0.1:4317")
///     .sample_ratio(0.1);
/// assert_eq!(config.max_queue_size, 2048);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The endpoint, used as given (for HTTP include `/v1/traces`); `None`
    /// leaves it to `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`.
    pub endpoint: Option<String>,
    /// Share of ordinary (unbroken, non-error) traces to export, 0.0–1.0.
    /// Broken and failed requests are always exported.
    pub sample_ratio: f64,
    /// Follow the sampled flag of an incoming `traceparent` (`parentbased_*`
    /// samplers, the default) instead of applying the ratio to every trace
    /// (`traceidratio`, `always_on`, `always_off`). Callers on the internet can
    /// set that flag: there, `traceidratio` keeps the export volume yours.
    pub follow_parent: bool,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue_size: usize,
    /// Time allowed for one export (retries included); `None`: the SDK's
    /// default or `OTEL_EXPORTER_OTLP_TIMEOUT`.
    pub export_timeout: Option<Duration>,
    /// `service.name`; `None`: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// or `clientgone`.
    pub service_name: Option<String>,
    /// TLS for an `https://` endpoint, beside the system's roots.
    pub tls: OtlpTls,
}

/// The variables [`OtlpConfig::from_env`] honours, for `--help` texts.
pub const HONOURED_VARIABLES: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
];

/// A variable with a value we cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    variable: &'static str,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl OtlpConfig {
    /// A configuration with the defaults: every trace kept, a queue of 2048.
    pub fn new(protocol: OtlpProtocol) -> Self {
        OtlpConfig {
            protocol,
            endpoint: None,
            sample_ratio: 1.0,
            follow_parent: true,
            max_queue_size: 2048,
            export_timeout: None,
            service_name: None,
            tls: OtlpTls::default(),
        }
    }

    /// Sets the endpoint (used as given).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the TLS files for an `https://` endpoint.
    pub fn tls(mut self, tls: OtlpTls) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the share of ordinary traces to export (clamped to 0.0–1.0).
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Follows (the default) or ignores an incoming `traceparent`'s sampled flag.
    pub fn follow_parent(mut self, follow: bool) -> Self {
        self.follow_parent = follow;
        self
    }

    /// Sets the queue bound.
    pub fn max_queue_size(mut self, size: usize) -> Self {
        self.max_queue_size = size.max(1);
        self
    }

    /// Sets the time allowed for one export.
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = Some(timeout);
        self
    }

    /// Sets `service.name`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// One line for a start-up message: where traces go and what is kept.
    ///
    /// ```
    /// use clientgone_exporter::otlp::{OtlpConfig, OtlpProtocol};
    ///
    /// let config = OtlpConfig::new(OtlpProtocol::Grpc)
    ///     .endpoint("http://collector:4317")
    ///     .sample_ratio(0.01);
    /// assert_eq!(
    ///     config.describe(),
    ///     "traces over OTLP/gRPC to http://collector:4317: 1 % of requests \
    ///      (or as the caller's traceparent says), every break and error"
    /// );
    /// ```
    pub fn describe(&self) -> String {
        let transport = match self.protocol {
            OtlpProtocol::Grpc => "OTLP/gRPC",
            OtlpProtocol::HttpProtobuf => "OTLP/HTTP",
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .unwrap_or_else(|| "the default endpoint".to_owned());
        // Rounded, so 0.1 reads "10", not "10.000000000000002".
        let share = (self.sample_ratio * 100_000.0).round() / 1000.0;
        let parent = if self.follow_parent {
            " (or as the caller's traceparent says)"
        } else {
            ""
        };
        format!(
            "traces over {transport} to {endpoint}: {share} % of requests{parent}, \
             every break and error"
        )
    }

    /// Reads the standard environment. `Ok(None)` means "do not export": the SDK
    /// is disabled (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`) or no
    /// endpoint is set — so a demo without a collector stays quiet.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup (tests use a map).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |key: &str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The spec: any value but a case-insensitive "true" means false.
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(ConfigError {
                    variable: "OTEL_TRACES_EXPORTER",
                    message: format!("'{other}' is not supported; use otlp or none"),
                });
            }
        }
        if get("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        check_exporter_variables(&get)?;
        let protocol = protocol(&get, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?;
        let mut config = OtlpConfig::new(protocol);
        // Resolved here, as the spec says, rather than by the exporter: an
        // https:// endpoint needs a client built for it.
        config.endpoint = Some(match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => endpoint,
            None => signal_endpoint(
                &get("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
                protocol,
                "/v1/traces",
            ),
        });
        config.tls = tls(&get, "TRACES")?;
        if let Some(ms) = get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            let ms = whole_number("OTEL_EXPORTER_OTLP_TIMEOUT", &ms, 1..=u64::from(u32::MAX))?;
            config.export_timeout = Some(Duration::from_millis(ms as u64));
        }
        // The spec's sampler names; the ratio ones take the ratio from the ARG.
        // Breaks and errors are exported under every one of them.
        let sampler = get("OTEL_TRACES_SAMPLER");
        let fixed_ratio = match sampler.as_deref() {
            None | Some("parentbased_traceidratio") => None,
            Some("traceidratio") => {
                config.follow_parent = false;
                None
            }
            Some("parentbased_always_on") => Some(1.0),
            Some("parentbased_always_off") => Some(0.0),
            Some("always_on") => {
                config.follow_parent = false;
                Some(1.0)
            }
            Some("always_off") => {
                config.follow_parent = false;
                Some(0.0)
            }
            Some(other) => {
                return Err(ConfigError {
                    variable: "OTEL_TRACES_SAMPLER",
                    message: format!(
                        "'{other}' is not supported; use parentbased_traceidratio (the default), \
                         traceidratio, always_on, always_off, parentbased_always_on or \
                         parentbased_always_off"
                    ),
                });
            }
        };
        if let Some(ratio) = fixed_ratio {
            config.sample_ratio = ratio;
        } else if let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG") {
            let ratio: f64 = arg.parse().map_err(|_| ConfigError {
                variable: "OTEL_TRACES_SAMPLER_ARG",
                message: format!("'{arg}' is not a number between 0 and 1"),
            })?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ConfigError {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    message: format!("{ratio} is outside 0..=1"),
                });
            }
            config.sample_ratio = ratio;
        }
        if let Some(size) = get("OTEL_BSP_MAX_QUEUE_SIZE") {
            // The SDK allocates the whole queue at start: a huge one is an
            // allocation failure (an abort), not a bigger buffer.
            config.max_queue_size = whole_number("OTEL_BSP_MAX_QUEUE_SIZE", &size, 1..=MAX_QUEUE)?;
        }
        Ok(Some(config))
    }
}

/// The endpoint of one signal from `OTEL_EXPORTER_OTLP_ENDPOINT`: as it is
/// for gRPC, with the signal's path (`/v1/traces`) for HTTP.
fn signal_endpoint(base: &str, protocol: OtlpProtocol, path: &str) -> String {
    match protocol {
        OtlpProtocol::Grpc => base.to_owned(),
        _ => format!("{}{path}", base.trim_end_matches('/')),
    }
}

/// The TLS files of one signal (`TRACES`, `METRICS`): its own variable, else
/// the general one. A client certificate needs its key and the other way round.
fn tls(get: &impl Fn(&str) -> Option<String>, signal: &str) -> Result<OtlpTls, ConfigError> {
    let pick = |name: &'static str, specific: &'static str| {
        get(specific)
            .map(|v| (specific, v))
            .or_else(|| get(name).map(|v| (name, v)))
    };
    let (certificate, client_certificate, client_key) = match signal {
        "TRACES" => (
            pick(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            ),
            pick(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            ),
            pick(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            ),
        ),
        _ => (
            pick(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
            ),
            pick(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
            ),
            pick(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            ),
        ),
    };
    let client = match (client_certificate, client_key) {
        (None, None) => None,
        (Some((_, cert)), Some((_, key))) => Some((cert.into(), key.into())),
        (Some((variable, _)), None) => {
            return Err(ConfigError {
                variable,
                message:
                    "a client certificate needs its key: set OTEL_EXPORTER_OTLP_CLIENT_KEY too"
                        .into(),
            });
        }
        (None, Some((variable, _))) => {
            return Err(ConfigError {
                variable,
                message: "a client key needs its certificate: set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE too".into(),
            });
        }
    };
    Ok(OtlpTls {
        certificate: certificate.map(|(_, path)| path.into()),
        client,
    })
}

/// The transport: the signal's own variable (`specific`) if set, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC. A bad value names its variable.
fn protocol(
    get: &impl Fn(&str) -> Option<String>,
    specific: &'static str,
) -> Result<OtlpProtocol, ConfigError> {
    let (variable, value) = match get(specific) {
        Some(p) => (specific, Some(p)),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            get("OTEL_EXPORTER_OTLP_PROTOCOL"),
        ),
    };
    match value.as_deref() {
        None | Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some(other) => Err(ConfigError {
            variable,
            message: format!("'{other}' is not supported; use grpc or http/protobuf"),
        }),
    }
}

/// [`MetricsConfig::from_env`](super::MetricsConfig::from_env) over any lookup.
pub(crate) fn metrics_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<super::MetricsConfig>, ConfigError> {
    let get = |key: &str| {
        lookup(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match get("OTEL_METRICS_EXPORTER").as_deref() {
        // The spec's default is otlp; ours is none: `/metrics` is always
        // there, and pushing is asked for.
        None | Some("none") | Some("prometheus") => return Ok(None),
        Some("otlp") => {}
        Some(other) => {
            return Err(ConfigError {
                variable: "OTEL_METRICS_EXPORTER",
                message: format!("'{other}' is not supported; use otlp or none"),
            });
        }
    }
    let protocol = protocol(&get, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")?;
    let endpoint = match (
        get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(e), _) => {
            check_endpoint(&e).map_err(|message| ConfigError {
                variable: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                message,
            })?;
            e
        }
        (None, Some(base)) => {
            check_endpoint(&base).map_err(|message| ConfigError {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                message,
            })?;
            signal_endpoint(&base, protocol, "/v1/metrics")
        }
        (None, None) => match protocol {
            OtlpProtocol::Grpc => "http://localhost:4317".to_owned(),
            _ => "http://localhost:4318/v1/metrics".to_owned(),
        },
    };
    let ms = |variable: &'static str, default: u64| -> Result<Duration, ConfigError> {
        match get(variable) {
            Some(v) => whole_number(variable, &v, 1..=u64::from(u32::MAX))
                .map(|n| Duration::from_millis(n as u64)),
            None => Ok(Duration::from_millis(default)),
        }
    };
    let mut config = super::MetricsConfig::new(
        protocol,
        endpoint,
        ms("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
    );
    config.timeout = ms("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?;
    config.tls = tls(&get, "METRICS")?;
    let (variable, list) = match get("OTEL_EXPORTER_OTLP_METRICS_HEADERS") {
        Some(list) => ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", list),
        None => (
            "OTEL_EXPORTER_OTLP_HEADERS",
            get("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default(),
        ),
    };
    for item in list.split(',').filter(|i| !i.trim().is_empty()) {
        let Some((key, value)) = item.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(ConfigError {
                variable,
                message: format!("'{item}' is not key=value (write key1=value1,key2=value2)"),
            });
        };
        config
            .headers
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(Some(config))
}

/// The largest span queue accepted (about 370 MB of slots, allocated at start).
const MAX_QUEUE: u64 = 1_000_000;

/// Checks what the OTLP exporter and the SDK read from the environment
/// themselves — which they would otherwise ignore when malformed, or take
/// as it comes (a schedule delay of 0 spins a core).
fn check_exporter_variables(get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    // The one the exporter will use: the traces-specific one wins.
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|variable| Some((variable, get(variable)?)));
    if let Some((variable, endpoint)) = endpoint {
        check_endpoint(&endpoint).map_err(|message| ConfigError { variable, message })?;
    }
    for variable in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES"] {
        let list = get(variable).unwrap_or_default();
        let not_a_pair = |item: &&str| {
            item.split_once('=')
                .is_none_or(|(key, _)| key.trim().is_empty())
        };
        if let Some(item) = list.split(',').filter(|i| !i.is_empty()).find(not_a_pair) {
            return Err(ConfigError {
                variable,
                message: format!("'{item}' is not key=value (write key1=value1,key2=value2)"),
            });
        }
    }
    for (variable, range) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", 1..=u64::from(u32::MAX)),
        ("OTEL_BSP_SCHEDULE_DELAY", 1..=u64::from(u32::MAX)),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1..=MAX_QUEUE),
    ] {
        if let Some(value) = get(variable) {
            whole_number(variable, &value, range)?;
        }
    }
    Ok(())
}

fn whole_number(
    variable: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<usize, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ConfigError {
            variable,
            message: format!(
                "'{value}' is not a whole number from {} to {}{}",
                range.start(),
                range.end(),
                if variable.ends_with("TIMEOUT") || variable.ends_with("DELAY") {
                    " (milliseconds)"
                } else {
                    ""
                }
            ),
        })
}

/// An endpoint this build can export to: `http[s]://host[:port][/path]`.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let example = "write it like http://127.0.0.1:4317";
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|e| format!("'{endpoint}' is not a URL: {e} ({example})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "'{endpoint}': scheme '{other}' is not http or https ({example})"
            ));
        }
        None => return Err(format!("'{endpoint}' has no scheme ({example})")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("'{endpoint}' has no host ({example})"))?;
    // `http` reads a port it cannot parse as no port at all.
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!(
            "'{endpoint}': port '{port}' is not a number from 1 to 65535"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn metrics(vars: &[(&str, &str)]) -> Result<Option<crate::otlp::MetricsConfig>, ConfigError> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        metrics_from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn metrics_are_pushed_only_when_asked_for() {
        assert_eq!(metrics(&[]), Ok(None));
        assert_eq!(
            metrics(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]),
            Ok(None)
        );
        assert_eq!(metrics(&[("OTEL_METRICS_EXPORTER", "none")]), Ok(None));
        assert_eq!(
            metrics(&[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            Ok(None)
        );
        let c = metrics(&[("OTEL_METRICS_EXPORTER", "otlp")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.protocol, c.endpoint.as_str()),
            (OtlpProtocol::Grpc, "http://localhost:4317")
        );
        assert_eq!(
            (c.interval, c.timeout),
            (Duration::from_secs(60), Duration::from_secs(30))
        );
        let c = metrics(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.interval, Duration::from_millis(500));
        let c = metrics(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4317"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://only-metrics:4317",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://only-metrics:4317");
        let c = metrics(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret, x-team = shop",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.headers,
            [
                ("api-key".to_owned(), "secret".to_owned()),
                ("x-team".to_owned(), "shop".to_owned())
            ]
        );
        assert!(
            metrics(&[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "novalue")
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_metrics_variables_name_themselves() {
        for (vars, variable) in [
            (
                vec![("OTEL_METRICS_EXPORTER", "console")],
                "OTEL_METRICS_EXPORTER",
            ),
            (
                vec![
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
                ],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                vec![
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
                ],
                "OTEL_METRIC_EXPORT_INTERVAL",
            ),
            (
                vec![
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "json"),
                ],
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            ),
            (
                vec![
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "ftp://c"),
                ],
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "key.pem"),
                ],
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            ),
        ] {
            let err = metrics(&vars).unwrap_err();
            assert!(err.to_string().starts_with(variable), "{vars:?}: {err}");
        }
    }

    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn no_endpoint_or_disabled_means_no_export() {
        assert_eq!(from(&[]), Ok(None));
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(from(&[ep, ("OTEL_SDK_DISABLED", "true")]), Ok(None));
        assert_eq!(from(&[ep, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
    }

    #[test]
    fn reads_protocol_ratio_and_queue() {
        let c = from(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.max_queue_size, 64);
        assert_eq!(c.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert!(c.follow_parent, "parent-based unless told otherwise");
    }

    #[test]
    fn reads_the_sampler_names_of_the_spec() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        let arg = ("OTEL_TRACES_SAMPLER_ARG", "0.25");
        for (name, ratio, follow) in [
            ("parentbased_traceidratio", 0.25, true),
            ("traceidratio", 0.25, false),
            ("always_on", 1.0, false),
            ("always_off", 0.0, false),
            ("parentbased_always_on", 1.0, true),
            ("parentbased_always_off", 0.0, true),
        ] {
            let c = from(&[ep, arg, ("OTEL_TRACES_SAMPLER", name)])
                .unwrap()
                .unwrap();
            assert_eq!((c.sample_ratio, c.follow_parent), (ratio, follow), "{name}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "99999999999999"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-5"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "garbage"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,=2"),
            ("OTEL_RESOURCE_ATTRIBUTES", "garbage"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x:1"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "client.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "key.pem"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:43x7/v1/traces",
            ),
        ] {
            let err = from(&[ep, (var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}={value}: {err}");
        }
        // Well-formed values of the same variables pass.
        let good = from(&[
            ep,
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc,x=1"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "5000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ("OTEL_SDK_DISABLED", "0"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://[::1]:4318/v1/traces",
            ),
        ]);
        assert!(matches!(good, Ok(Some(_))), "{good:?}");
    }

    #[test]
    fn https_endpoints_and_their_tls_files_per_signal() {
        let c = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces-ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/client-key.pem"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://collector:4318/v1/traces")
        );
        assert_eq!(c.tls.certificate, Some("/traces-ca.pem".into()));
        assert_eq!(
            c.tls.client,
            Some(("/client.pem".into(), "/client-key.pem".into()))
        );
        let m = metrics(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces-ca.pem"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(m.endpoint, "https://collector:4317");
        assert_eq!(m.tls.certificate, Some("/ca.pem".into()));
        assert_eq!(m.tls.client, None);
    }
}
