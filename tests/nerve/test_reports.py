"""The one percentile function: latencies interpolate, token-length bounds take a nearest rank."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nerve.reports import percentile, percentiles
from nerve.tuning.data import percentile as length_percentile

values = st.lists(st.integers(0, 10_000), min_size=1, max_size=60)
qs = st.sampled_from([0, 1, 33.3, 50, 90, 95, 99, 100])


@given(values, qs)
def test_linear_is_numpys_default_and_nearest_its_inverted_cdf(v, q) -> None:
    assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)))
    assert percentile(v, q, method="nearest") == np.percentile(v, q, method="inverted_cdf")
    assert length_percentile(v, q) == np.percentile(v, q, method="inverted_cdf")
    assert sum(x <= length_percentile(v, q) for x in v) >= q / 100 * len(v)  # the bound covers q% of the values


def test_percentiles_of_nothing_and_bad_method() -> None:
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0}
    assert percentiles([1.0, 3.0], (50,)) == {"p50": 2.0}
    with pytest.raises(ValueError, match="linear or nearest"):
        percentile([1], 50, method="median")
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
