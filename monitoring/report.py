"""What a monitoring step shows in the KFP UI: its HTML report, its metrics, the retraining decision."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Protocol

from monitoring.outcomes import CheckOutcome
from monitoring.trigger import TriggerRecord

if TYPE_CHECKING:  # a retraining decision's step shows its record without importing the drift maths
    from monitoring.drift import DriftResult


class MetricsSink(Protocol):  # kfp.dsl.Metrics
    def log_metric(self, metric: str, value: float) -> None: ...


def outcome_html(outcome: CheckOutcome, results: list[DriftResult]) -> str:
    """Our verdict per column: shown on top of (or instead of) Evidently's report of the samples."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{c.method}</td><td>{c.distance:.4f}</td><td>{c.threshold}</td>"
        f"<td>{'drifted' if c.drifted else ''}</td></tr>"
        for result in results
        for name, c in result.columns.items()
    )
    table = (
        "<table border=1 cellpadding=4><tr><th>column</th><th>method</th><th>distance</th><th>threshold</th>"
        f"<th></th></tr>{rows}</table>"
        if rows
        else ""
    )
    verdict = "condition holds" if outcome.holds else "condition does not hold"
    return (
        f"<h2>{html.escape(outcome.check.replace('_', ' '))} as of {outcome.as_of_date}: {verdict}</h2>"
        f"<p>{html.escape(outcome.reason)}</p>{table}"
    )


def write_check_artifacts(
    outcome: CheckOutcome, results: list[DriftResult], report_html: str, report_path: str, metrics: MetricsSink
) -> None:
    """The step's HTML artifact (our verdict, then the detailed report) and its metrics."""
    summary = outcome_html(outcome, results)
    if "<body" in report_html:
        head, _, rest = report_html.partition("<body")
        tag, _, body = rest.partition(">")
        page = f"{head}<body{tag}><div style='padding:1em;font-family:sans-serif'>{summary}</div>{body}"
    else:
        page = f"<html><body style='font-family:sans-serif'>{summary}{report_html}</body></html>"
    with open(report_path, "w") as handle:
        handle.write(page)
    metrics.log_metric("condition_holds", float(outcome.holds))
    for i, result in enumerate(results):
        suffix = f"_{i}" if len(results) > 1 else ""
        metrics.log_metric(f"drifted_share{suffix}", result.drifted_share)
        metrics.log_metric(f"drifted_columns{suffix}", float(result.drifted_columns))
    for name, value in outcome.details.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(name, float(value))


def decision_markdown(record: TriggerRecord) -> str:
    lines: list[Any] = [
        f"## Retraining decision: **{record.status.replace('_', ' ')}**",
        "",
        record.reason,
        "",
        "| check | held | of last | latest |",
        "|---|---|---|---|",
    ]
    for check, c in record.conditions.items():
        latest = str(c["latest"]).replace("|", "/")
        lines.append(f"| {check.replace('_', ' ')} | {c['held']} | {c['looked_at']} | {latest} |")
    if record.run_id:
        lines += ["", f"Training run: `{record.run_id}`"]
    return "\n".join(str(line) for line in lines) + "\n"
