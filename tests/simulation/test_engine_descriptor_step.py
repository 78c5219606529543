"""The invalidation hardware on bare metal (``TimedMachine._invalidation_hardware``) answers
each descriptor's price and status-write flag from its counter alone, remembered per counter;
every figure equals that of the general path (``_descriptor_step``), which snapshots the
platform's ``iqt_keys`` around each ``qi_step`` and prices the delta - on strict runs with
page flushes and waits, an ATS device's device-TLB flushes (priced apart), and lock
contention."""

import pytest
from test_engine_lookahead import TABLE, _run

from vtdsim.simulation import engine
from vtdsim.simulation.platforms import DESC_KEYS
from vtdsim.simulation.run import Mode
from vtdsim.simulation.workloads.common import DmaWorld

RUNS = {
    "nic-rx strict": ("nic-rx", {"ios": 1200}, {}),
    "nic-rx 6.1, ATS": ("nic-rx", {"ios": 600, "profile": "linux-6.1", "ats": True},
                        {"ring": 64, "pages_per_desc": 4}),
    "nvme, two jobs": ("nvme", {"ios": 600}, {"jobs": 2, "qd": 8}),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_remembered_descriptor_prices_change_no_figure(name, monkeypatch):
    fast = _run(*RUNS[name])
    monkeypatch.setattr(engine, "DESC_KEYS", ())  # no key is a descriptor's: the snapshot path
    assert fast == _run(*RUNS[name])


def test_a_remembered_answer_is_the_platforms_price_of_that_counter():
    world = DmaWorld(Mode(policy="strict", ios=10), TABLE, 1)
    machine = world.machine
    for key in DESC_KEYS:
        assert machine._descriptor_done(key) == (machine.platform.descriptor_ns({key: 1}),
                                                 key == "desc:inv_wait")
    assert machine._desc_done["desc:dev_tlb_inv"][0] > machine._desc_done["desc:iotlb_inv"][0]


def test_the_ats_run_flushes_device_tlbs(monkeypatch):
    """The comparison covers descriptors priced apart (else it could not tell them)."""
    seen = []
    original = engine.TimedMachine._descriptor_done

    def remembering(self, counter):
        seen.append(counter)
        return original(self, counter)

    monkeypatch.setattr(engine.TimedMachine, "_descriptor_done", remembering)
    _run(*RUNS["nic-rx 6.1, ATS"])
    assert "desc:dev_tlb_inv" in seen and "desc:inv_wait" in seen
