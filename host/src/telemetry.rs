//! Traces: the spans a PT message, an HTTP request and a control-plane
//! decision leave, exported to an OpenTelemetry collector over OTLP/HTTP
//! when the process is started with `--otlp-endpoint`.
//!
//! Spans are ordinary `tracing` spans with the target [`TARGET`]; the
//! log filter turns that target off unless export is on, so a node that
//! does not export pays nothing for them (a disabled callsite is one
//! relaxed load). Names are fixed and few (`pt.message`, `model.apply`,
//! `http.request`...); what varies (twin, topic, route) goes into
//! attributes. Context crosses processes in W3C `traceparent` headers:
//! [`inject`] on every request our clients send, [`follow`] on every
//! request our servers receive.

use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every span that belongs to a trace.
pub const TARGET: &str = "wasmtwin::trace";

/// A span of a trace: `tracing::info_span!` with [`TARGET`].
#[macro_export]
macro_rules! trace_span {
    ($($rest:tt)*) => {
        ::tracing::info_span!(target: $crate::telemetry::TARGET, $($rest)*)
    };
}

/// The log filter's directives for the trace spans and, when exporting,
/// for the exporter's own HTTP stack (whose spans would otherwise be
/// exported in turn, without end).
pub fn filter_directives(exporting: bool) -> &'static str {
    if exporting {
        "wasmtwin::trace=info,hyper=off,hyper_util=off,h2=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry_http=off"
    } else {
        "wasmtwin::trace=off"
    }
}

/// Where and how much to export.
#[derive(Debug, Clone)]
pub struct Export {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: reqwest::Url,
    /// The share of traces started here that are kept (0 to 1); a trace
    /// continued from a caller keeps the caller's choice.
    pub sample_ratio: f64,
}

impl Export {
    /// `endpoint` as a collector's base URL (`http://HOST:4318`, to which
    /// `/v1/traces` is added) or its full traces URL.
    pub fn new(endpoint: &str, sample_ratio: f64) -> anyhow::Result<Self> {
        let mut url = reqwest::Url::parse(endpoint)
            .with_context(|| format!("`{endpoint}` is not a URL (http://HOST:4318)"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("`{endpoint}`: OTLP is exported over http:// or https://");
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/v1/traces");
        }
        if !(0.0..=1.0).contains(&sample_ratio) {
            anyhow::bail!("the sample ratio must be between 0 and 1, not {sample_ratio}");
        }
        Ok(Self {
            endpoint: url,
            sample_ratio,
        })
    }
}

/// The exporting pipeline; [`Exporter::shutdown`] sends what is left.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts exporting to `export` (a thread of its own batches spans,
    /// sending every second): the tracer for the `tracing` bridge, and
    /// the pipeline to shut down at exit.
    pub fn start(export: &Export) -> anyhow::Result<(Self, opentelemetry_sdk::trace::Tracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(export.endpoint.as_str())
            .with_timeout(Duration::from_secs(5))
            .build()
            .context("building the OTLP exporter")?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        // OTEL_RESOURCE_ATTRIBUTES (e.g. `service.instance.id=edge-a`)
        // applies; OTEL_SERVICE_NAME replaces "wasmtwin".
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "process.pid",
            i64::from(std::process::id()),
        ));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("wasmtwin");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                export.sample_ratio,
            ))))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("wasmtwin");
        Ok((Self { provider }, tracer))
    }

    /// Sends the spans not yet sent (waits up to the export timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: exporting the last spans: {e}");
        }
    }
}

/// Adds the current span's context to `headers` as `traceparent` (nothing
/// when no trace is being recorded).
pub fn inject(headers: &mut reqwest::header::HeaderMap) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` continue the trace whose `traceparent` is in `carrier`
/// (HTTP headers, an MQTT 5 message's user properties), if any, before
/// the span is first entered.
pub fn follow(span: &tracing::Span, carrier: &dyn Extractor) {
    if span.is_disabled() || carrier.get(TRACEPARENT).is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(carrier);
    // A malformed value leaves an invalid parent: the span starts a trace.
    let _ = span.set_parent(parent);
}

/// The W3C trace-context key, in headers and in MQTT user properties.
const TRACEPARENT: &str = "traceparent";

/// An MQTT 5 message's user properties as a trace-context carrier: a
/// device continues its own trace by sending `traceparent` (and
/// `tracestate`) among them. Keys are matched exactly, as MQTT keeps
/// their case; the first of a repeated key counts.
pub struct UserProperties<'a>(pub &'a [(String, String)]);

impl Extractor for UserProperties<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The trace and span ids of the span entered on this thread, as hex, if
/// a trace is being recorded.
pub fn current_ids() -> Option<(String, String)> {
    hex_ids(&opentelemetry::Context::current())
}

/// The trace and span ids of `span`, as hex, if it is recorded.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    if span.is_disabled() {
        return None;
    }
    hex_ids(&span.context())
}

fn hex_ids(context: &opentelemetry::Context) -> Option<(String, String)> {
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// Middleware: one span per HTTP request, named by method and route (not
/// by path: `/v1/twins/{name}`, whatever the twin), continuing the
/// caller's trace.
pub async fn request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    // Probes and scrapes come every few seconds and say nothing of a
    // failure: a trace each would bury the ones that do.
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let span = trace_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return next.run(request).await;
    }
    follow(&span, &HeaderExtractor(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// A log format that puts the trace and span ids of the span the event
/// happened in before the other fields of a JSON line
/// (`{"trace_id":"…","span_id":"…",…}`), so logs and traces join.
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            context,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match (current_ids(), line.strip_prefix('{')) {
            (Some((trace, span)), Some(rest)) => {
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",{rest}"
                )
            }
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines, as a `MakeWriter` hands them out.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_log_line_in_a_traced_span_carries_the_trace_and_span_ids() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let written = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
                    .with_writer(move || written.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let ids = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = trace_span!("test.span");
            span.in_scope(|| tracing::info!(seq = 7, "inside"));
            ids_of(&span).expect("a recorded span has ids")
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(logged[0].get("trace_id").is_none(), "{text}");
        assert_eq!(logged[1]["trace_id"], ids.0.as_str(), "{text}");
        assert_eq!(logged[1]["span_id"], ids.1.as_str(), "{text}");
        assert_eq!(logged[1]["fields"]["message"], "inside");
        assert_eq!(logged[1]["fields"]["seq"], 7);
        assert_eq!(ids.0.len(), 32);
        assert_eq!(ids.1.len(), 16);
    }

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        let export = Export::new("http://127.0.0.1:4318", 1.0).unwrap();
        assert_eq!(export.endpoint.as_str(), "http://127.0.0.1:4318/v1/traces");
        let export = Export::new("https://collector:443/custom/traces", 0.5).unwrap();
        assert_eq!(export.endpoint.path(), "/custom/traces");
    }

    #[test]
    fn a_bad_endpoint_or_ratio_is_refused_naming_it() {
        let error = Export::new("collector:4318", 1.0).unwrap_err().to_string();
        assert!(error.contains("http"), "{error}");
        let error = Export::new("not a url", 1.0).unwrap_err().to_string();
        assert!(error.contains("`not a url` is not a URL"), "{error}");
        let error = Export::new("http://c:4318", 1.5).unwrap_err().to_string();
        assert!(error.contains("between 0 and 1"), "{error}");
    }
}
