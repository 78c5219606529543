"""Invalidation descriptors: the reference §11.4 vectors, encode/decode, validate, S-bit range."""

import pytest

from vtdsim.errors import ModelError
from vtdsim.hardware import descriptors as d
from vtdsim.hardware.descriptors import decode, devtlb_addr, devtlb_range, encode, validate
from vtdsim.hardware.presets import get_preset

LEGACY = get_preset("qemu72-legacy")  # no DT, no PRS, MAMV 18
LEGACY_ATS = get_preset("qemu72-legacy-ats")
SERVER = get_preset("server-sm")  # DT, IR, PRS, PDS, DIT, MAMV 9, SMTS

# Reference §11.4: (qw0, qw1, label, fields that must decode, describe() must contain).
VECTORS = [
    (0x11, 0, "cc_inv", {"g": 1}, "cc_inv global"),
    (0x31, 0, "cc_inv", {"g": 3, "did": 0, "sid": 0, "fm": 0}, "device did=0 sid=00:00.0"),
    (0x800000031, 0, "cc_inv", {"g": 3, "sid": 0x0008}, "sid=00:01.0"),
    (0xD2, 0, "iotlb_inv", {"g": 1, "dr": 1, "dw": 1}, "iotlb_inv global dr dw"),
    (0x200E2, 0, "iotlb_inv", {"g": 2, "did": 2, "dr": 1, "dw": 1}, "DSI did=2 dr dw"),
    (
        0x500F2, 0xFFF80005, "iotlb_inv",
        {"g": 3, "did": 5, "addr": 0xFFF80000, "am": 5, "ih": 0},
        "iotlb_inv PSI did=5 addr=0xfff80000 am=5 (128 KiB) ih=0 dr dw",
    ),
    (0x700F2, 0xFFFFE001, "iotlb_inv", {"did": 7, "addr": 0xFFFFE000, "am": 1}, "(8 KiB)"),
    (
        0x10000000003, 0xFFFF8000, "dev_tlb_inv", {"sid": 0x100, "mip": 0, "s": 0},
        "sid=01:00.0 mip=0 range=0xffff8000+4 KiB",
    ),
    (0x10000000003, 0xFFFB4001, "dev_tlb_inv", {"s": 1}, "range=0xfffb4000+8 KiB"),
    (0x10000000003, 0xFFE7F001, "dev_tlb_inv", {"s": 1}, "range=0xffe00000+1 MiB"),
    (0x10000000003, 0x7FFFFFFFFFFFF001, "dev_tlb_inv", {"s": 1}, "range=all"),
    (0x4, 0, "iec_inv", {"g": 0}, "iec_inv global"),
    (0x100000014, 0, "iec_inv", {"g": 1, "iidx": 1, "im": 0}, "index iidx=1 im=0"),
    (
        0x200000025, 0x1052004, "inv_wait",
        {"sw": 1, "if_": 0, "fn": 0, "status_data": 2, "status_addr": 0x1052004},
        "inv_wait sw status_data=0x2 status_addr=0x1052004",
    ),
]


@pytest.mark.parametrize("qw0,qw1,label,fields,text", VECTORS)
def test_reference_vectors_decode_and_reencode(qw0, qw1, label, fields, text):
    desc = decode((qw0, qw1))
    assert desc.label == label
    assert desc.type == d.LABEL_TYPES[label]
    assert {k: desc.fields[k] for k in fields} == fields
    assert text in desc.describe()
    assert encode(label, **desc.fields) == (qw0, qw1, 0, 0)


def test_type_labels_are_linux_qi_submit_labels():
    assert d.TYPE_LABELS == {
        1: "cc_inv", 2: "iotlb_inv", 3: "dev_tlb_inv", 4: "iec_inv", 5: "inv_wait",
        6: "p_iotlb_inv", 7: "pc_inv", 8: "p_dev_tlb_inv", 9: "page_grp_resp",
    }
    assert {d.QEMU_TRACE_NAMES[n] for n in ("context-cache", "iotlb", "device", "iec", "wait")} \
        == {"cc_inv", "iotlb_inv", "dev_tlb_inv", "iec_inv", "inv_wait"}


def test_pasid_descriptors_use_linux_bit_positions():
    # QI_EIOTLB_*, QI_PC_*, QI_DEV_EIOTLB_* (drivers/iommu/intel/iommu.h).
    qws = encode("p_iotlb_inv", g=3, did=9, pasid=0x12345, addr=0x7000_0000, am=2, ih=1)
    assert qws == (0x12345_0009_0036, 0x7000_0042, 0, 0)
    assert encode("pc_inv", g=1, did=3, pasid=5) == (0x5_0003_0017, 0, 0, 0)
    qws = encode("p_dev_tlb_inv", mip=4, sid=0x100, pasid=7, g=0, s=1, addr=0x5000)
    assert qws == (0x7_0100_0048, 0x5800, 0, 0)
    pfsid = 0xABC
    qws = encode("dev_tlb_inv", sid=0x100, pfsid_lo=pfsid & 0xF, pfsid_hi=pfsid >> 4)
    assert qws[0] == (0xAB << 52) | (0xC << 12) | (0x100 << 32) | 3
    assert "pfsid=0a:17.4" in decode(qws).describe()


def test_page_group_response_is_256_bits_with_private_data():
    qws = encode("page_grp_resp", pasid_present=1, resp_code=0xF, rid=0x0100, pasid=2,
                 prgi=0x1FF, priv_data=(0xBB << 64) | 0xAA)
    assert qws == (0x2_0100_F019, 0x1FF << 3, 0xAA, 0xBB)
    assert decode(qws).fields["priv_data"] == (0xBB << 64) | 0xAA
    assert "resp_code=0xf" in decode(qws).describe()


def test_full_seven_bit_type_is_decoded():
    # type[6:4] in qw0 11:9: an IOTLB descriptor with type[4] set is type 0x12 - unknown.
    desc = decode((0x200 | 0x2, 0))
    assert desc.type == 0x12 and desc.fields == {}
    assert "unknown descriptor type 0x12" in desc.describe()
    assert validate(desc, LEGACY, wide=False) == d.IQEI_INVALID_TYPE


def test_decode_never_raises_on_garbage():
    for qw0 in (0, 0xF, 0xFFFF_FFFF_FFFF_FFFF, -1, 1 << 70):
        desc = decode((qw0, 0xFFFF_FFFF_FFFF_FFFF, 1, 2))
        assert isinstance(desc.describe(), str)
        assert validate(desc, SERVER, wide=True) != 0


def test_encode_rejects_unknown_label_and_misaligned_address():
    with pytest.raises(ModelError, match="unknown descriptor label"):
        encode("bogus")
    with pytest.raises(ModelError, match="aligned"):
        encode("iotlb_inv", g=3, addr=0x1234)
    with pytest.raises(ModelError, match="does not fit"):
        encode("iotlb_inv", did=1 << 16)


def test_reserved_bits_are_reported_in_describe():
    desc = decode((0x500F2 | (1 << 40), 0xFFF80005))
    assert "RESERVED=0x10000000000" in desc.describe()


# -- validate ---------------------------------------------------------------------------------
def _v(qws, caps=LEGACY, wide=False):
    return validate(decode(qws), caps, wide)


def test_valid_descriptors_pass():
    for qw0, qw1, label, _f, _t in VECTORS:
        caps = LEGACY_ATS if label == "dev_tlb_inv" else LEGACY
        assert _v((qw0, qw1), caps) == 0, label
        assert _v((qw0, qw1, 0, 0), caps, wide=True) == 0, label


def test_iqei3_unknown_type_or_missing_capability():
    assert _v((0x0, 0)) == d.IQEI_INVALID_TYPE
    assert _v((0xA, 0)) == d.IQEI_INVALID_TYPE  # deprecated page-stream response
    assert _v((0x10000000003, 0xFFFF8000), LEGACY) == d.IQEI_INVALID_TYPE  # no ECAP.DT
    assert _v((0x4, 0), LEGACY.with_(ir=0)) == d.IQEI_INVALID_TYPE
    grp = encode("page_grp_resp", rid=0x100)
    assert _v(grp, LEGACY) == d.IQEI_INVALID_TYPE  # no ECAP.PRS
    assert _v(grp, SERVER, wide=True) == 0
    assert _v(encode("p_dev_tlb_inv", sid=1), SERVER.with_(dt=0), True) == d.IQEI_INVALID_TYPE


@pytest.mark.parametrize("label", ["p_iotlb_inv", "pc_inv", "p_dev_tlb_inv"])
def test_iqei5_pasid_types_in_a_128_bit_queue(label):
    g = {"p_iotlb_inv": 2, "pc_inv": 3, "p_dev_tlb_inv": 0}[label]
    qws = encode(label, g=g)
    assert _v(qws, SERVER, wide=False) == d.IQEI_INVALID_WIDTH
    assert _v(qws, SERVER, wide=True) == 0


@pytest.mark.parametrize(
    "qws",
    [
        (0x11 | 1 << 6, 0),  # cc_inv bit 6
        (0x11, 1),  # cc_inv qw1
        (0xD2 | 1 << 8, 0),  # iotlb_inv bit 8
        (0xD2 | 1 << 32, 0),  # iotlb_inv 63:32
        (0x500F2, 0xFFF80005 | 1 << 7),  # iotlb_inv qw1 11:7
        (0x10000000003 | 1 << 21, 0),  # dev_tlb_inv 31:21
        (0x10000000003, 0x2),  # dev_tlb_inv qw1 11:1
        (0x4 | 1 << 5, 0),  # iec_inv 8:5
        (0x200000025 | 1 << 12, 0x1052004),  # inv_wait 31:12
        (0x200000025, 0x1052006),  # inv_wait qw1 1:0
    ],
)
def test_iqei4_reserved_bit_set(qws):
    assert _v(qws, LEGACY_ATS) == d.IQEI_RESERVED


def test_iqei4_qw2_qw3_nonzero_in_256_bit_mode():
    assert _v((0x11, 0, 1, 0), SERVER, wide=True) == d.IQEI_RESERVED
    assert _v((0x11, 0, 0, 1 << 63), SERVER, wide=True) == d.IQEI_RESERVED
    # Type 9 carries private data there.
    assert _v(encode("page_grp_resp", priv_data=1 << 100), SERVER, wide=True) == 0


@pytest.mark.parametrize(
    "label,fields",
    [
        ("cc_inv", {"g": 0}),
        ("iotlb_inv", {"g": 0}),
        ("p_iotlb_inv", {"g": 1}),
        ("pc_inv", {"g": 2}),
        ("inv_wait", {}),  # SW=IF=FN=0: QEMU's vtd_process_wait_desc rejects it
    ],
)
def test_iqei4_reserved_encodings(label, fields):
    assert validate(decode(encode(label, **fields)), SERVER, wide=True) == d.IQEI_RESERVED


def test_iqei4_psi_mask_beyond_mamv():
    ok = encode("iotlb_inv", g=3, did=1, am=9, addr=0)
    too_big = encode("iotlb_inv", g=3, did=1, am=10, addr=0)
    assert _v(ok, SERVER, True) == 0
    assert _v(too_big, SERVER, True) == d.IQEI_RESERVED  # server-sm: MAMV 9
    assert _v(too_big, LEGACY) == 0  # QEMU 7.2: MAMV 18
    # PASID-based PSI is not bounded by MAMV on SMTS units (spec 6.5.2.4).
    assert _v(encode("p_iotlb_inv", g=3, am=20), SERVER, True) == 0


def test_iqei4_pfsid_needs_dit_and_pd_needs_pds():
    devtlb = encode("dev_tlb_inv", sid=0x100, pfsid_lo=1)
    assert _v(devtlb, LEGACY_ATS) == d.IQEI_RESERVED
    assert _v(devtlb, SERVER, True) == 0
    wait = encode("inv_wait", sw=1, pd=1, status_data=2, status_addr=0x1000)
    assert _v(wait, LEGACY) == d.IQEI_RESERVED
    assert _v(wait, SERVER, True) == 0


def test_wait_with_only_if_or_fn_is_valid():
    assert _v(encode("inv_wait", if_=1)) == 0
    assert _v(encode("inv_wait", fn=1)) == 0
    assert _v(encode("inv_wait", sw=1, if_=1, status_addr=0x40)) == 0


# -- device-TLB S-bit range encoding ----------------------------------------------------------
@pytest.mark.parametrize(
    "addr,pages,field,s",
    [
        (0xFFFF8000, 1, 0xFFFF8000, 0),
        (0xFFFB4000, 2, 0xFFFB4000, 1),
        (0xFFFB5000, 2, 0xFFFB4000, 1),
        (0xFFE12000, 256, 0xFFE7F000, 1),  # 1 MiB: 7 ones from bit 12
        (0, 1 << 52, 0x7FFFFFFFFFFFF000, 1),  # Linux's whole-space flush (mask 52)
    ],
)
def test_devtlb_addr_and_range(addr, pages, field, s):
    assert devtlb_addr(addr, pages) == (field, s)
    base, size = devtlb_range(field, s)
    assert size == min(pages << 12, 1 << 64)
    assert base == addr & ~(size - 1) & ((1 << 64) - 1)


def test_devtlb_range_round_trips_every_power_of_two():
    for m in range(0, 52):
        field, s = devtlb_addr(0x1234_5678_9000, 1 << m)
        base, size = devtlb_range(field, s)
        assert size == 4096 << m
        assert base == 0x1234_5678_9000 & ~(size - 1)


def test_devtlb_range_all_ones_is_whole_space():
    assert devtlb_range(0xFFFF_FFFF_FFFF_F000, 1) == (0, 1 << 64)


def test_devtlb_addr_rejects_non_power_of_two():
    with pytest.raises(ModelError, match="power of two"):
        devtlb_addr(0, 3)
