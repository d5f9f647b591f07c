def test_fixture_trains(fixture_bundle):
    m = fixture_bundle.metrics
    assert m["test"]["accuracy"] > 0.6, m
