"""The data gate before training: a Great Expectations suite over the training set."""

from __future__ import annotations

from dataclasses import dataclass, field

import great_expectations as gx
import pandas as pd

from propensity import features as F

MIN_ROWS = 500


@dataclass(frozen=True)
class ValidationResult:
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"# Training data validation: {verdict}", "", f"{self.evaluated} expectations evaluated."]
        if self.failed:
            lines += ["", "Failed expectations:", *[f"- {name}" for name in self.failed]]
        return "\n".join(lines) + "\n"


def training_set_suite() -> gx.ExpectationSuite:
    """What a usable training set looks like; each expectation names a real failure seen in practice."""
    e = gx.expectations
    expectations: list[gx.expectations.Expectation] = [
        e.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS),
        e.ExpectTableColumnsToMatchSet(column_set=[F.ENTITY, F.EVENT_TIMESTAMP, F.LABEL, *F.BATCH_MODEL_FEATURES]),
        e.ExpectCompoundColumnsToBeUnique(column_list=[F.ENTITY, F.EVENT_TIMESTAMP]),
        e.ExpectColumnValuesToBeInSet(column=F.LABEL, value_set=[0, 1]),
        # A label rate outside this band means broken labels or a broken join, not a real market.
        e.ExpectColumnMeanToBeBetween(column=F.LABEL, min_value=0.01, max_value=0.99),
    ]
    for column in [F.ENTITY, F.LABEL, *F.BATCH_MODEL_FEATURES]:
        expectations.append(e.ExpectColumnValuesToNotBeNull(column=column))
    for column in F.ACTIVITY_FEATURES:  # counts, sums, averages and ages are never negative
        expectations.append(e.ExpectColumnValuesToBeBetween(column=column, min_value=0))
    # Features are computed strictly before the snapshot: a 30-day count can never exceed the 90-day one.
    expectations.append(
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="orders_90d", column_B="orders_30d", or_equal=True)
    )
    suite = gx.ExpectationSuite(name="training_set")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def validate_training_set(frame: pd.DataFrame) -> ValidationResult:
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("propensity")
        .add_dataframe_asset("training_set")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(training_set_suite())
    failed = [
        f"{r.expectation_config.type} {r.expectation_config.kwargs.get('column', '')}".strip()
        for r in result.results
        if not r.success and r.expectation_config is not None
    ]
    return ValidationResult(success=bool(result.success), evaluated=len(result.results), failed=failed)
