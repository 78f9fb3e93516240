//! Which text format `/metrics` answers in. prometheus-client writes
//! OpenMetrics 1.0; clients that ask for the older Prometheus text format
//! (`text/plain; version=0.0.4`: `promtool check metrics`, some agents and
//! older scrapers) get it converted, which for our families means: a
//! counter's `# HELP` and `# TYPE` name the `_total` series, and the
//! OpenMetrics-only lines (`# UNIT`, `# EOF`, exemplars) go.

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    PrometheusText,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: the Prometheus text format
    /// only if the client ranks `text/plain` above OpenMetrics (a tie, no
    /// header or `*/*` gets OpenMetrics). Malformed parts are ignored.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut open, mut plain) = (-1.0f32, -1.0f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" => plain = plain.max(q),
                _ => {}
            }
        }
        if plain > 0.0 && plain > open {
            Format::PrometheusText
        } else {
            Format::OpenMetrics
        }
    }
}

/// `openmetrics`, as prometheus-client writes it, in the Prometheus text
/// format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}"));
            }
            // An exemplar follows its sample after ` # `.
            None => out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample)),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_preferring_plain_text_gets_it() {
        use Format::*;
        // Prometheus's own scrape header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(Format::negotiate(None), OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain; version=0.0.4")),
            PrometheusText
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2, text/plain;q=0.9")),
            PrometheusText
        );
        assert_eq!(Format::negotiate(Some("text/plain;q=0")), OpenMetrics);
        assert_eq!(Format::negotiate(Some(";;,text/plain;q=x")), PrometheusText);
    }

    #[test]
    fn counters_are_named_by_their_total_and_openmetrics_lines_go() {
        let open = "# HELP app_updates Updates applied.\n# TYPE app_updates counter\napp_updates_total{twin=\"a\"} 3 # {trace_id=\"x\"} 1.0\n# HELP app_queue Waiting.\n# TYPE app_queue gauge\n# UNIT app_queue messages\napp_queue{twin=\"a\"} 0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP app_updates_total Updates applied.\n# TYPE app_updates_total counter\napp_updates_total{twin=\"a\"} 3\n# HELP app_queue Waiting.\n# TYPE app_queue gauge\napp_queue{twin=\"a\"} 0\n"
        );
    }
}
