"""Schemathesis against /openapi.json, in process (ASGI): generated requests never get a 5xx.

Bounded: a fixed number of derandomized examples per operation keeps it reproducible and
inside the test budget. The API key is sent, so the protected routes are fuzzed too. Both
schema-conforming and schema-violating (negative) cases are generated.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from modalfuse.config import Settings
from modalfuse.serve.app import create_app
from prod_helpers import API_KEY, AUTH

pytestmark = pytest.mark.slow  # over 1,000 generated requests: over 20 s on 2 cores

EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def api_schema(predictor, tmp_path_factory, fixture_dataset):
    data_dir = tmp_path_factory.mktemp("serve-fuzz")
    (data_dir / "datasets").mkdir()
    (data_dir / "datasets" / fixture_dataset.spec.name).symlink_to(fixture_dataset.root)
    app = create_app(Settings(data_dir=data_dir, api_key=API_KEY, max_batch_rows=16,
                              max_job_rows=200), predictor=predictor)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors(api_schema):
    """At least 1,000 generated cases with the key, schema-conforming and violating: no 5xx."""
    operations = [r.ok() for r in api_schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 8, [op.label for op in operations]
    server_errors: list[str] = []
    statuses: Counter[int] = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for op in operations:
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                      database=None, suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(headers=AUTH)
                statuses[response.status_code // 100 * 100] += 1
                if response.status_code >= 500:
                    server_errors.append(f"{case.operation.label}: {response.status_code} "
                                         f"{response.text[:300]} <- {case.body!r:.300}")

            try:
                run()
            except Unsatisfiable:
                # An operation with nothing to break (no parameters, no body) has no negative cases.
                assert mode == GenerationMode.NEGATIVE, op.label
    assert not server_errors, "\n".join(server_errors[:10])
    # The key is accepted (the protected routes were really exercised) and cases were made.
    print(f"schemathesis: {sum(statuses.values())} cases over {len(operations)} operations: "
          f"{dict(statuses)}")
    assert sum(statuses.values()) >= 1000 and statuses[200] > 0, statuses
