//! OTLP trace export: the SDK pipeline from the standard `OTEL_*` environment,
//! in-process "keep the breaks" sampling, a bounded queue whose drops are counted
//! on `/metrics`.
//!
//! ```no_run
//! use clientgone::{DisconnectLayer, Metrics};
//! use clientgone_exporter::otlp::{OtlpConfig, OtlpPipeline};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = prometheus::Registry::new();
//! let metrics = Metrics::new(&registry)?;
//! let pipeline = OtlpConfig::from_env()?
//!     .map(|config| OtlpPipeline::start(config, &registry))
//!     .transpose()?;
//! let mut layer = DisconnectLayer::new(metrics);
//! if let Some(pipeline) = &pipeline {
//!     layer = layer.with_tracer(pipeline.tracer());
//! }
//! // … serve a router with `.layer(layer)` …
//! if let Some(pipeline) = pipeline {
//!     tokio::task::spawn_blocking(move || pipeline.shutdown(std::time::Duration::from_secs(5)))
//!         .await??;
//! }
//! # Ok(()) }
//! ```

mod config;
mod exporter;
mod metrics;
mod sampler;
mod stats;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use prometheus::Registry;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

pub use config::{ConfigError, HONOURED_VARIABLES, OtlpConfig, OtlpProtocol};
pub use metrics::{MetricsConfig, OtlpMetrics};
pub use stats::OtlpStats;
pub use tls::OtlpTls;

use exporter::RuntimeExporter;
use sampler::{AtStart, KeepBreaks, PresetIds, RatioOrRecord};

/// Why the pipeline could not start.
#[derive(Debug)]
pub struct StartError(pub(crate) String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running trace pipeline: provider, sampler, batch queue, exporter.
#[derive(Debug)]
pub struct OtlpPipeline {
    provider: SdkTracerProvider,
    sampler: RatioOrRecord,
    stats: Arc<OtlpStats>,
}

impl OtlpPipeline {
    /// Builds the pipeline and registers its counters in `registry`.
    ///
    /// Call it inside the tokio runtime that will run the exports. It also
    /// installs the W3C trace-context propagator globally, so incoming
    /// `traceparent` headers are honoured.
    pub fn start(config: OtlpConfig, registry: &Registry) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StartError("OTLP export needs a tokio runtime".into()))?;
        let exporter = build_exporter(&config)?;
        let stats = Arc::new(
            OtlpStats::new(registry)
                .map_err(|e| StartError(format!("cannot register OTLP counters: {e}")))?,
        );
        let batch = BatchSpanProcessor::builder(RuntimeExporter {
            inner: Arc::new(exporter),
            runtime,
            stats: stats.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.max_queue_size)
                .build(),
        )
        .build();
        let sampler = RatioOrRecord {
            ratio: config.sample_ratio,
            follow_parent: config.follow_parent,
        };
        let provider = SdkTracerProvider::builder()
            // Sample by ratio, record the rest; KeepBreaks decides at the end.
            .with_sampler(sampler.clone())
            // A request span built at its end keeps the ids drawn at its start.
            .with_id_generator(PresetIds::default())
            .with_resource(resource(&config))
            .with_span_processor(KeepBreaks {
                inner: batch,
                queue_cap: config.max_queue_size,
                stats: stats.clone(),
            })
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(OtlpPipeline {
            provider,
            sampler,
            stats,
        })
    }

    /// The tracer for clientgone's request spans: hand it to
    /// [`DisconnectLayer::with_tracer`](clientgone::DisconnectLayer::with_tracer).
    ///
    /// The layer recognises it and builds a request's span only at the
    /// request's end, and only when it will be exported (sampled, broken or
    /// failed): with a low ratio, tracing costs little more than metrics
    /// alone. Used as a plain `Tracer`, it builds spans as the SDK does.
    pub fn tracer(&self) -> clientgone::DeferredTracer {
        let at_start = AtStart {
            sampler: self.sampler.clone(),
            stats: self.stats.clone(),
        };
        clientgone::DeferredTracer::new(self.provider.tracer("clientgone"), at_start)
    }

    /// A `tracing` layer that exports *your* spans through this pipeline, as
    /// children of the request span they run in (tracing-opentelemetry takes
    /// the current OpenTelemetry context, which clientgone's layer sets, as the
    /// parent of a span with no `tracing` parent).
    ///
    /// `targets` says whose spans: name your own crates. Never let it take the
    /// exporter's own HTTP and gRPC clients (`hyper`, `h2`, `tonic`, `tower`):
    /// their spans would be exported by the very exports they make.
    ///
    /// ```no_run
    /// # fn run(pipeline: &clientgone_exporter::otlp::OtlpPipeline) {
    /// use tracing_subscriber::filter::Targets;
    /// use tracing_subscriber::layer::SubscriberExt;
    /// use tracing_subscriber::util::SubscriberInitExt;
    ///
    /// tracing_subscriber::registry()
    ///     .with(pipeline.layer(Targets::new().with_target("my_service", tracing::Level::INFO)))
    ///     .init();
    /// # }
    /// ```
    pub fn layer<S>(&self, targets: Targets) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("clientgone.handler"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(targets)
    }

    /// The span counters.
    pub fn stats(&self) -> &Arc<OtlpStats> {
        &self.stats
    }

    /// Exports what is queued. Blocks: call it off the runtime's threads (for
    /// example in `spawn_blocking`).
    pub fn force_flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }

    /// Flushes and stops within `timeout`. Blocks, like [`force_flush`](Self::force_flush).
    pub fn shutdown(self, timeout: Duration) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

/// How long one export may take when nothing says: the SDK's default.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn build_exporter(config: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, StartError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let failed = |e: opentelemetry_otlp::ExporterBuildError| {
        StartError(format!("cannot build the OTLP exporter: {e}"))
    };
    // An https:// endpoint gets a client built here, with the TLS files;
    // an http:// one the exporter's own.
    let https = config.endpoint.as_deref().filter(|e| tls::is_https(e));
    let timeout = config.export_timeout.unwrap_or(DEFAULT_EXPORT_TIMEOUT);
    match config.protocol {
        OtlpProtocol::Grpc => {
            let mut b = builder.with_tonic();
            if let Some(endpoint) = https {
                b = b.with_channel(tls::grpc_channel(endpoint, &config.tls, timeout)?);
            } else if let Some(endpoint) = &config.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if let Some(timeout) = config.export_timeout {
                b = b.with_timeout(timeout);
            }
            b.build().map_err(failed)
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = builder.with_http().with_protocol(Protocol::HttpBinary);
            if let Some(endpoint) = &config.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if https.is_some() {
                let connector = tls::http_connector(&config.tls, timeout)?;
                b = b.with_http_client(opentelemetry_http::hyper::HyperClient::new(
                    connector, timeout, None,
                ));
            }
            if let Some(timeout) = config.export_timeout {
                b = b.with_timeout(timeout);
            }
            b.build().map_err(failed)
        }
    }
}

/// `service.name`: the configuration, else `OTEL_SERVICE_NAME`, else
/// `OTEL_RESOURCE_ATTRIBUTES`, else `clientgone` (the spec's order, which the
/// SDK's resource builder does not follow by itself).
fn resource(config: &OtlpConfig) -> Resource {
    Resource::builder()
        .with_service_name(service_name(config.service_name.clone()))
        .build()
}

/// `service.name`: `configured`, else `OTEL_SERVICE_NAME`, else
/// `OTEL_RESOURCE_ATTRIBUTES`, else `clientgone` (the spec's order).
pub(crate) fn service_name(configured: Option<String>) -> String {
    let name = configured.or_else(|| {
        std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
    });
    if let Some(name) = name {
        return name;
    }
    let detected = Resource::builder().build();
    detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.as_str().into_owned())
        .filter(|v| !v.starts_with("unknown_service"))
        .unwrap_or_else(|| "clientgone".to_owned())
}
