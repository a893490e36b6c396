"""The serving type "auto" is decided by the CPU that serves: bfloat16 only where it computes in
BF16 natively (where it is emulated, bench/serving_engines.py measured it slower than float32).
The default stays float32: in bfloat16 a row's greedy answer depends on what else is in its batch."""

import pytest

from catalog.loader import dtypes, resolve_dtype
from catalog.models import BaseModel
from tests.conftest import DEMO_MODEL

WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_tile\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [(WITHOUT_BF16, "float32"), (WITH_BF16, "bfloat16")])
def test_auto_is_bfloat16_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    monkeypatch.setattr(dtypes, "CPUINFO", path)
    assert resolve_dtype("auto") == expected
    assert resolve_dtype("float16") == "float16"  # an explicit type is kept as it is


def test_an_unreadable_cpuinfo_means_float32(tmp_path):
    assert dtypes.cpu_flags(tmp_path / "missing") == frozenset()


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(ValueError, match="float8"):
        resolve_dtype("float8")


@pytest.mark.django_db
def test_an_auto_replica_is_placed_at_its_float32_size():
    demo = BaseModel.objects.get(pk=DEMO_MODEL)
    assert demo.serving_dtype == "float32"  # batch-invariant answers by default (see the field's help)
    as_float32 = demo.serving_memory_bytes()
    demo.serving_dtype = "auto"
    assert demo.serving_memory_bytes() == as_float32  # it may be float32 on the node that serves it
    demo.serving_dtype = "bfloat16"
    assert demo.serving_memory_bytes() < as_float32
