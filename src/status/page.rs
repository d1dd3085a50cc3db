//! The status page for people at `/`: the `/status` report as HTML, refreshed every 10 s. Plain
//! server-side HTML with inline CSS, no script, everything escaped.

use super::StatusReport;
use crate::store::state::{JobState, OutboxState};
use std::fmt::Write;

/// The work each node holds now (every node on the shared database), when any holds some.
fn nodes_table(html: &mut String, index: &crate::store::overview::Overview) {
    let mut nodes: Vec<&String> = index
        .receiving_by_node
        .keys()
        .chain(index.running_by_node.keys())
        .chain(index.sending_by_node.keys())
        .collect();
    nodes.sort();
    nodes.dedup();
    if nodes.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Work held by node</h2>\n<table><tr><th>Node</th><th>Associations open</th>\
         <th>Jobs running</th><th>Objects being sent</th></tr>\n",
    );
    let count = |map: &std::collections::BTreeMap<String, i64>, node: &String| {
        map.get(node).copied().unwrap_or(0)
    };
    for node in nodes {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(node),
            count(&index.receiving_by_node, node),
            count(&index.running_by_node, node),
            count(&index.sending_by_node, node)
        );
    }
    html.push_str("</table>\n");
}

/// HTML-escapes text.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A time (Unix ms) as UTC "YYYY-MM-DD HH:MM:SS".
fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default()
}

/// Renders the page.
pub fn render(report: &StatusReport) -> String {
    let mut html = String::new();
    let index = &report.index;
    let failed_jobs = index.jobs(JobState::Failed);
    let failed_sends = index.outbox(OutboxState::Failed);
    let disk_low = report
        .disk
        .as_ref()
        .is_some_and(|d| d.space.free_bytes < d.floor_bytes);
    let health = if disk_low {
        (
            "bad",
            "Disk space below the floor: new associations are refused",
        )
    } else if failed_jobs + failed_sends > 0 {
        ("warn", "Running, with failures to look at")
    } else {
        ("good", "Running")
    };
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>JNSC node {ae}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1b1f24; background: #f6f7f9; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 24px 0 8px; }}
.sub {{ color: #57606a; }}
.banner {{ padding: 10px 14px; border-radius: 6px; margin: 16px 0; font-weight: 600; }}
.good {{ background: #dafbe1; color: #116329; }} .warn {{ background: #fff8c5; color: #7d4e00; }}
.bad {{ background: #ffebe9; color: #a40e26; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; min-width: 130px; }}
.card b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; background: #fff; width: 100%; }}
th, td {{ border: 1px solid #d0d7de; padding: 5px 8px; text-align: left; font-size: 13px; }}
th {{ background: #eaeef2; }} td.uid {{ font-family: monospace; font-size: 12px; }}
.state-done {{ color: #116329; font-weight: 600; }} .state-failed {{ color: #a40e26; font-weight: 600; }}
.state-queued, .state-running {{ color: #0550ae; font-weight: 600; }}
</style></head><body>
<h1>JNSC node &mdash; AE {ae}</h1>
<div class="sub">node {node} ({role}) &middot; version {version} &middot; model {model} &middot; up {uptime}</div>
<div class="banner {health_class}">{health_text}</div>
<div class="cards">
"#,
        ae = esc(&report.ae_title),
        node = esc(&report.node),
        role = report.role,
        version = report.version,
        model = esc(&report
            .model
            .as_ref()
            .map(|m| format!("{} {} on {}", m.name, m.version, m.device))
            .unwrap_or_else(|| "none (analysis off)".into())),
        uptime = humanize(report.uptime_seconds),
        health_class = health.0,
        health_text = health.1,
    );
    let cards = [
        ("Associations open", report.associations_active.to_string()),
        ("Associations (run)", report.associations_total.to_string()),
        ("Instances stored", index.instances.to_string()),
        ("Studies", index.studies.to_string()),
        ("Queue depth", index.queue_depth.to_string()),
        ("Jobs running", index.jobs(JobState::Running).to_string()),
        ("Jobs done", index.jobs(JobState::Done).to_string()),
        ("Jobs failed", failed_jobs.to_string()),
        (
            "Outbox pending",
            index.outbox(OutboxState::Pending).to_string(),
        ),
        ("Sends failed", failed_sends.to_string()),
        (
            "Disk free",
            report
                .disk
                .as_ref()
                .map(|d| format!("{} / {}", mib(d.space.free_bytes), mib(d.space.total_bytes)))
                .unwrap_or_else(|| "unknown".into()),
        ),
    ];
    for (label, value) in cards {
        let _ = writeln!(
            html,
            "<div class=\"card\"><b>{}</b>{}</div>",
            esc(&value),
            label
        );
    }
    html.push_str("</div>\n");
    nodes_table(&mut html, index);
    html.push_str(
        "<h2>Recent studies</h2>\n<table><tr><th>Last received (UTC)</th><th>Patient ID</th>\
         <th>Accession</th><th>Study UID</th><th>State</th><th>Findings</th><th>Analysis</th>\
         <th>Sent / pending / failed</th><th>Problem</th></tr>\n",
    );
    for study in &index.recent_studies {
        let analysis = study
            .timings
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v["total"].as_f64())
            .map(|ms| format!("{:.1} s", ms / 1000.0))
            .unwrap_or_default();
        let problem = match (&study.error_code, &study.error) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            _ => String::new(),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"uid\">{}</td>\
             <td class=\"state-{}\">{}</td><td>{}</td><td>{}</td><td>{} / {} / {}</td><td>{}</td></tr>",
            when(study.last_received_at),
            esc(&study.patient_id),
            esc(study.accession_number.as_deref().unwrap_or("")),
            esc(&study.study_uid),
            esc(&study.state),
            esc(&study.state),
            study.findings.map(|n| n.to_string()).unwrap_or_default(),
            analysis,
            study.sent,
            study.send_pending,
            study.send_failed,
            esc(&problem),
        );
    }
    if index.recent_studies.is_empty() {
        html.push_str("<tr><td colspan=\"9\">No study received yet.</td></tr>\n");
    }
    html.push_str(
        "</table>\n<p class=\"sub\">JSON: <code>/status</code>, <code>/studies/&lt;study uid&gt;</code>; \
         Prometheus: <code>/metrics</code>; probes: <code>/health</code>, <code>/ready</code>. \
         Not for clinical use: a research model trained on synthetic data.</p>\n</body></html>\n",
    );
    html
}

fn humanize(seconds: u64) -> String {
    let (d, h, m) = (seconds / 86400, seconds / 3600 % 24, seconds / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {} s", seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(humanize(3725), "1 h 2 min");
    }

    #[test]
    fn the_nodes_table_shows_who_holds_what_and_only_when_someone_does() {
        let mut index = crate::store::overview::Overview::default();
        let mut html = String::new();
        nodes_table(&mut html, &index);
        assert_eq!(html, "");
        index.running_by_node.insert("wk-1".into(), 1);
        index.sending_by_node.insert("wk-2".into(), 2);
        index.receiving_by_node.insert("rx-<1>".into(), 3);
        nodes_table(&mut html, &index);
        for row in [
            "<tr><td>rx-&lt;1&gt;</td><td>3</td><td>0</td><td>0</td></tr>",
            "<tr><td>wk-1</td><td>0</td><td>1</td><td>0</td></tr>",
            "<tr><td>wk-2</td><td>0</td><td>0</td><td>2</td></tr>",
        ] {
            assert!(html.contains(row), "{row} in {html}");
        }
    }
}
