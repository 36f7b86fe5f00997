"""int8 that holds on every CPU: the u8×s8 kernels of ONNX Runtime, oneDNN and fbgemm sum two products in
a saturating int16 on x86 CPUs with AVX2 but no VNNI; a file whose weights keep every pair within
32,767 is exact there too. These tests hold on any CPU: the AVX2 kernel is a numpy double, the bound is
computed from a file's constants, and OpenVINO's rows take the AVX2 path by oneDNN's own ISA cap."""

import json
import platform

import numpy as np
import pytest
from helpers import LOOSE_ALL, run

from toolkit import int8cpu
from toolkit.int8cpu import CpuKind


def avx2_u8s8_dot(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The double of `vpmaddubsw` + `vpmaddwd`: u8×s8 products summed pairwise into a saturating int16,
    then the pairs summed in int32 — what an AVX2-only CPU computes for one output per row of `w`."""
    prod = a.astype(np.int32)[None, :] * w.astype(np.int32)  # outputs × K
    if prod.shape[1] % 2:
        prod = np.pad(prod, ((0, 0), (0, 1)))
    pairs = np.clip(prod[:, 0::2] + prod[:, 1::2], -32768, 32767)
    return pairs.sum(axis=1)


@pytest.mark.parametrize("top2,exact", [((64, 64), True), ((65, 64), False), ((127, 127), False), ((64, 63), True)])
def test_the_pair_bound_decides_exactly_what_the_avx2_kernel_saturates(top2, exact):
    """At the limit (two products of 64·255 = 32,640) the double equals the exact dot product; one step
    past it (65 + 64) a pair saturates, and the bound says so."""
    a = np.full(8, 255, np.uint8)  # raw pixels at their brightest: the worst case
    w = np.zeros((1, 8), np.int8)
    w[0, :2] = top2
    bound = int8cpu.pair_sum_bound([w])
    assert bound == sum(top2) * 255
    assert (bound <= int8cpu.INT16_MAX) is exact
    exact_dot = int((a.astype(np.int64) * w[0]).sum())
    assert (int(avx2_u8s8_dot(a, w)[0]) == exact_dot) is exact


def test_seven_bit_weights_are_exact_in_any_pairing_and_full_range_ones_are_not():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, 784).astype(np.uint8)
    full = rng.integers(-127, 128, (32, 784)).astype(np.int8)
    seven = (full.astype(np.int16) // 2).clip(-64, 63).astype(np.int8)
    exact = lambda w: (a.astype(np.int64)[None] * w).sum(1)  # noqa: E731
    assert np.array_equal(avx2_u8s8_dot(a, seven), exact(seven))
    assert int8cpu.pair_sum_bound([seven]) <= int8cpu.INT16_MAX
    perm = rng.permutation(784)  # a kernel may pair K in another order: the bound holds for every order
    assert np.array_equal(avx2_u8s8_dot(a[perm], seven[:, perm]), exact(seven))
    assert not np.array_equal(avx2_u8s8_dot(a, full), exact(full))
    assert int8cpu.pair_sum_bound([full]) > int8cpu.INT16_MAX


@pytest.mark.parametrize("flags,machine,kind", [
    ({"avx2": True}, "x86_64", CpuKind.X86_AVX2),
    ({"avx2": True, "avx512_vnni": True}, "x86_64", CpuKind.X86_VNNI),
    ({"avx2": True, "avx_vnni": True}, "x86_64", CpuKind.X86_VNNI),
    ({"avx2": True, "avx512_vnni": True, "amx_tile": True}, "x86_64", CpuKind.X86_AMX),
    ({}, "aarch64", CpuKind.AARCH64),
    ({}, "x86_64", CpuKind.OTHER),
    ({}, "riscv64", CpuKind.OTHER),
])
def test_the_cpu_kind_and_the_arithmetic_named_for_each(flags, machine, kind):
    assert int8cpu.cpu_kind(flags, machine) == kind
    words = int8cpu.arithmetic(kind, "mlas")
    expected = {CpuKind.X86_AVX2: "saturates past 32,767", CpuKind.X86_VNNI: "VNNI", CpuKind.X86_AMX: "AMX",
                CpuKind.AARCH64: "NEON", CpuKind.OTHER: "generic"}[kind]
    assert expected in words
    assert "saturates" not in int8cpu.arithmetic(kind, "xnnpack")  # XNNPACK widens to int16 first


def test_an_isa_cap_reaches_onednn_only_and_exactness_follows_the_kernels():
    for kind in (CpuKind.X86_VNNI, CpuKind.X86_AMX):
        assert int8cpu.capped(kind, "avx2", "onednn") == CpuKind.X86_AVX2
        assert int8cpu.capped(kind, "avx2", "mlas") == kind and int8cpu.capped(kind, None, "onednn") == kind
    assert int8cpu.capped(CpuKind.AARCH64, "avx2", "onednn") == CpuKind.AARCH64
    everywhere = ["x86-avx2", "x86-vnni", "x86-amx", "aarch64"]
    assert int8cpu.exact_on("mlas", True) == everywhere and int8cpu.exact_on("xnnpack", False) == everywhere
    assert int8cpu.exact_on("mlas", False) == ["x86-vnni", "x86-amx", "aarch64"]
    assert int8cpu.exact_on("onednn", False) == ["x86-vnni", "x86-amx", "aarch64"]


def test_export_makes_portable_int8_files_by_default_and_records_where_each_is_exact(tiny_export):
    """Not the export machine's CPU but --int8-for decides: 7-bit weights by default, whose worst pair is
    recorded beside the CPU kinds the file is exact on."""
    manifest = json.loads((tiny_export["out"] / "manifest.json").read_text())
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert int8 and all(a["int8_for"] == "portable" and "x86-avx2" in a["int8_exact_on"] for a in int8)
    onnx = next(a for a in int8 if a["format"] == "onnx")
    assert 0 < onnx["int8_pair_sum_bound"] <= int8cpu.INT16_MAX
    assert manifest["calibration"]["reduce_range"] is True


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86 instruction-set cap")
def test_a_file_for_vnni_cpus_is_named_not_exact_where_the_avx2_path_runs(tiny_export, tmp_path, openvino_rows):
    """--int8-for vnni keeps full-range weights: the manifest leaves AVX2-only CPUs out, and verify with
    --isa-cap avx2 (OpenVINO's rows on oneDNN's AVX2 kernels, on any x86 machine) says the file is not
    exact there, next to its gates."""
    out = tmp_path / "vnni"
    r = run("export", "--checkpoint", tiny_export["out"] / "cnn.pt", "--dir", out, "--quantize", "--int8-for", "vnni",
            "--calibration-size", "100", "--data-dir", tiny_export["data"], "--targets", "onnx", "--quiet")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    onnx = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8")
    assert onnx["int8_for"] == "vnni" and onnx["int8_pair_sum_bound"] > int8cpu.INT16_MAX
    assert onnx["int8_exact_on"] == ["x86-vnni", "x86-amx", "aarch64"]
    assert manifest["calibration"]["reduce_range"] is False
    r = run("verify", "--dir", out, "--data-dir", tiny_export["data"], "--no-torch", *LOOSE_ALL, "--isa-cap", "avx2",
            "--json", "-")
    rows = {x["id"]: x for x in json.loads(r.stdout)["rows"]}
    ov = rows["onnx-int8@openvino"]
    assert ov["int8_exact_here"] is False and "saturates past 32,767" in ov["int8_arithmetic"]
    assert "does not reach these kernels" in rows["onnx-int8@ort-cpu"]["int8_arithmetic"]
    assert "the file is NOT exact on this CPU kind" in " ".join(r.stderr.split())
    assert json.loads(r.stdout)["isa_cap"] == "avx2"
