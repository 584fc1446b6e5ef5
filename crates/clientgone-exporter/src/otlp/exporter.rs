//! [`RuntimeExporter`]: runs each export on the tokio runtime and counts the result.
//!
//! The SDK's batch processor exports from a thread of its own, with no tokio
//! context; the OTLP clients (tonic, hyper) need one. So each batch is spawned
//! on the application's runtime and the processor thread only waits for it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::stats::OtlpStats;

#[derive(Debug)]
pub(crate) struct RuntimeExporter<E> {
    pub(crate) inner: Arc<E>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) stats: Arc<OtlpStats>,
}

impl<E: SpanExporter + 'static> SpanExporter for RuntimeExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let inner = Arc::clone(&self.inner);
        let result = match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            // The runtime is shutting down: the task was cancelled, nothing hangs.
            Err(e) => Err(OTelSdkError::InternalFailure(format!("export task: {e}"))),
        };
        self.stats.export_done(
            spans,
            result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The provider hands the resource down once, before any export, while
        // this is the only owner.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
