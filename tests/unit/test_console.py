"""Console output: the chain clock."""

import pytest


def test_chain_clock():
    from labelrefinery.console import ChainClock, format_duration

    clock = ChainClock(10)
    assert clock.eta_s() is None and clock.eta_text() == "chain ETA ?"
    clock.epoch_done(3.0)
    clock.epoch_done(5.0)
    assert clock.eta_s() == pytest.approx(4.0 * 8)
    clock.skip(6)  # early stopping: 6 planned epochs will not run
    assert clock.eta_s() == pytest.approx(8.0) and clock.eta_text() == "chain ETA 8s"
    assert [format_duration(s) for s in (59.4, 61, 3725)] == ["59s", "1m01s", "1h02m"]
