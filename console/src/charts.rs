//! Small live charts: inline SVG sparklines, and the series they plot,
//! computed from inference records and status events. The series are plain
//! functions, tested without a browser; every chart is fed by the event
//! stream only (no polling).

use clawpen_api::InferenceRecord;
use leptos::prelude::*;

/// Width and height of a sparkline, in CSS pixels.
const W: f64 = 120.0;
const H: f64 = 24.0;

/// Points of an SVG polyline for `values` in a `w` × `h` box (highest value
/// at the top), or `None` with fewer than two values.
pub fn sparkline(values: &[f64], w: f64, h: f64) -> Option<String> {
    if values.len() < 2 {
        return None;
    }
    let max = values
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = w / (values.len() - 1) as f64;
    Some(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, h - v / max * h))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// A small chart: the label, the last value (`places` decimals) and a
/// sparkline. `data-metric`, `data-points` (how many values), `data-last`
/// and `data-max` say what it shows, for tests and scripts.
pub fn chart(
    metric: &'static str,
    label: &'static str,
    values: Vec<f64>,
    unit: &'static str,
    places: usize,
) -> impl IntoView {
    let last = values.last().copied();
    let shown = last.map_or_else(
        || "–".to_string(),
        |v| format!("{v:.places$} {unit}").trim_end().to_string(),
    );
    let data_last = last.map(|v| format!("{v:.places$}")).unwrap_or_default();
    let data_max = values
        .iter()
        .copied()
        .reduce(f64::max)
        .map(|v| format!("{v:.places$}"))
        .unwrap_or_default();
    let points = sparkline(&values, W, H);
    view! {
        <span
            class=format!("spark {metric}")
            data-metric=metric
            data-points=values.len().to_string()
            data-last=data_last
            data-max=data_max
        >
            {label} " " <b>{shown}</b>
            {points.map(|points| view! {
                <svg width="120" height="24" viewBox="0 0 120 24" role="img" aria-label=label>
                    <polyline points=points fill="none" stroke="currentColor" stroke-width="1.5"/>
                </svg>
            })}
        </span>
    }
}

/// How many of `times` (ms since the epoch) fall in each `bucket_ms` slot,
/// from the slot of the earliest to the slot of the latest, at most the
/// last `max_buckets` slots (empty slots count 0).
pub fn per_bucket(times: &[u64], bucket_ms: u64, max_buckets: usize) -> Vec<f64> {
    let bucket_ms = bucket_ms.max(1);
    let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else {
        return Vec::new();
    };
    let end = last / bucket_ms;
    let start = (first / bucket_ms).max((end + 1).saturating_sub(max_buckets as u64));
    let mut counts = vec![0.0; (end - start + 1) as usize];
    for t in times {
        if let Some(i) = (t / bucket_ms).checked_sub(start) {
            counts[i as usize] += 1.0;
        }
    }
    counts
}

/// Requests per second over the `records`' start times, in 5 s slots (at
/// most the last two minutes that have requests).
pub fn requests_per_second(records: &[InferenceRecord]) -> Vec<f64> {
    const SLOT_MS: u64 = 5_000;
    let times: Vec<u64> = records.iter().map(|r| r.started_at_ms).collect();
    per_bucket(&times, SLOT_MS, 24)
        .into_iter()
        .map(|n| n * 1000.0 / SLOT_MS as f64)
        .collect()
}

/// Per request: the share of its prompt that came from the prefix cache,
/// in percent (requests without prompt tokens are left out).
pub fn cache_hit_percents(records: &[InferenceRecord]) -> Vec<f64> {
    records
        .iter()
        .filter(|r| r.prompt_tokens > 0)
        .map(|r| r.cached_tokens as f64 * 100.0 / r.prompt_tokens as f64)
        .collect()
}

/// All `records` together: cached prompt tokens / prompt tokens, in
/// percent; `None` before any prompt token.
pub fn cache_hit_rate(records: &[InferenceRecord]) -> Option<f64> {
    let prompt: u64 = records.iter().map(|r| r.prompt_tokens).sum();
    let cached: u64 = records.iter().map(|r| r.cached_tokens).sum();
    (prompt > 0).then(|| cached as f64 * 100.0 / prompt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: u64, prompt: u64, cached: u64) -> InferenceRecord {
        InferenceRecord {
            request_id: format!("r{at}"),
            client: "demo".into(),
            endpoint: "responses".into(),
            model: "m".into(),
            engine: "local".into(),
            status: "completed".into(),
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: 1,
            duration_ms: 1.0,
            started_at_ms: at,
            ..Default::default()
        }
    }

    #[test]
    fn sparkline_scales_to_the_box() {
        assert_eq!(sparkline(&[1.0], 10.0, 10.0), None);
        assert_eq!(
            sparkline(&[0.0, 2.0], 10.0, 10.0).unwrap(),
            "0.0,10.0 10.0,0.0"
        );
    }

    #[test]
    fn buckets_count_from_first_to_last_and_keep_the_newest() {
        assert!(per_bucket(&[], 10, 5).is_empty());
        assert_eq!(
            per_bucket(&[5, 12, 15, 41], 10, 10),
            [1.0, 2.0, 0.0, 0.0, 1.0]
        );
        // only the last two slots: the older ones are cut, not piled up
        assert_eq!(per_bucket(&[5, 12, 15, 41], 10, 2), [0.0, 1.0]);
    }

    #[test]
    fn request_rate_is_per_second_in_five_second_slots() {
        let records = [rec(1_000, 1, 0), rec(2_000, 1, 0), rec(11_000, 1, 0)];
        assert_eq!(requests_per_second(&records), [0.4, 0.0, 0.2]);
    }

    #[test]
    fn cache_hits_are_cached_over_prompt_tokens() {
        let records = [rec(0, 100, 0), rec(1, 0, 0), rec(2, 100, 80)];
        assert_eq!(cache_hit_percents(&records), [0.0, 80.0]);
        assert_eq!(cache_hit_rate(&records), Some(40.0));
        assert_eq!(cache_hit_rate(&[]), None);
    }

    #[test]
    fn a_chart_says_what_it_shows() {
        let html = chart("ttft", "TTFT", vec![40.0, 32.4], "ms", 0).to_html();
        assert!(html.contains(r#"data-max="40""#), "{html}");
        assert!(html.contains(r#"data-metric="ttft""#), "{html}");
        assert!(html.contains(r#"data-points="2""#), "{html}");
        assert!(html.contains(r#"data-last="32""#), "{html}");
        assert!(
            html.contains("32 ms") && html.contains("<polyline"),
            "{html}"
        );
        let empty = chart("queue", "queue", vec![], "", 0).to_html();
        assert!(empty.contains('–') && !empty.contains("<svg"), "{empty}");
    }
}
