"""The edge runtime's threading: batch-parallel sessions and ONNX Runtime's spinning pool."""

import numpy as np
import pytest

from toolkit.errors import ToolkitError


class _Counting:
    """An InferenceSession stand-in that counts the images each session ran."""

    def __init__(self, session, seen):
        self.session, self.seen = session, seen

    def run(self, names, feed):
        self.seen.append(len(next(iter(feed.values()))))
        return self.session.run(names, feed)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_batch_parallel_sessions_give_the_single_session_logits(tiny_export, monkeypatch, precision):
    import toolkit.runtimes.ort_session as rt

    monkeypatch.setattr(rt, "max_threads", lambda: 3)  # three shards whatever this machine's core count
    path = tiny_export["out"] / f"cnn_{precision}.onnx"
    nchwc = precision == "fp32"
    plain = rt.Model(path, "cpu", rt.SessionOptions(threads=1, nchwc=nchwc))
    sharded = rt.Model(path, "cpu", rt.SessionOptions(threads=3, nchwc=nchwc, parallel="batch"))
    assert len(sharded._shards) == 3 and sharded._pool is not None
    seen = []
    sharded._shards = [_Counting(s, seen) for s in sharded._shards]
    sharded.session = sharded._shards[0]
    images = np.random.default_rng(0).integers(0, 256, (1000, 28, 28), dtype=np.uint8)
    for n in (1000, 50, 47, 1):
        x = plain.prepare(images[:n])
        seen.clear()
        assert np.array_equal(sharded.run(x), plain.run(x)), n
        # 3 × MIN_SHARD = 48 images or more are split in three contiguous slices; fewer run on one session
        want = [n // 3, 2 * n // 3 - n // 3, n - 2 * n // 3] if n >= 3 * rt.MIN_SHARD else [n]
        assert sorted(seen) == sorted(want), (n, seen)


def test_batch_parallel_failure_is_one_line(tiny_export, monkeypatch):
    import toolkit.runtimes.ort_session as rt

    monkeypatch.setattr(rt, "max_threads", lambda: 2)
    model = rt.Model(tiny_export["out"] / "cnn_int8.onnx", "cpu", rt.SessionOptions(threads=2))
    with pytest.raises(ToolkitError, match="ONNX Runtime failed while running") as err:
        model.run(np.zeros((64, 1, 28, 28), np.float64))  # the wrong input type, in both shards
    assert "\n" not in str(err.value)


def test_intra_op_and_profiling_use_one_session_and_pools_stop_spinning(tiny_export, monkeypatch):
    import toolkit.runtimes.ort_session as rt

    monkeypatch.setattr(rt, "max_threads", lambda: 2)
    path = tiny_export["out"] / "cnn_fp32.onnx"
    assert len(rt.Model(path, "cpu", rt.SessionOptions(threads=2, parallel="intra"))._shards) == 1
    assert len(rt.Model(path, "cpu", rt.SessionOptions(threads=2, profile=True))._shards) == 1
    assert len(rt.Model(path, "cpu", rt.SessionOptions(threads=1))._shards) == 1
    # A multi-threaded ORT pool spins for 20-200 ms after a run unless told to stop, taking a core from
    # whatever runs next (another verify row, another runtime in the benchmarks).
    so = rt.SessionOptions(threads=2, parallel="intra").to_ort()
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(ToolkitError, match="parallel must be"):
        rt.SessionOptions(parallel="processes")
