"""`embed --pool mean` (one vector per sentence) and `--dtype float16` (half the file), through the CLI
and the Python Embedder."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow(seconds=15)  # its serial seconds: conftest starts the slowest first


def test_pool_mean_and_float16_are_the_full_layers_averaged_and_rounded(tmp_path, tiny_bilm):
    from elmo_dist.embedder import Embedder

    text = tmp_path / "s.txt"
    text.write_text("the cat sees the fish .\na dog likes some bread today .\n")
    outs = {name: tmp_path / f"{name}.hdf5" for name in ("full", "mean", "half", "mixed")}
    run_cli("embed", str(tiny_bilm), str(text), str(outs["full"]))
    proc = run_cli("embed", str(tiny_bilm), str(text), str(outs["mean"]), "--pool", "mean")
    assert "one mean vector per sentence" in proc.stdout
    run_cli("embed", str(tiny_bilm), str(text), str(outs["half"]), "--dtype", "float16")
    run_cli("embed", str(tiny_bilm), str(text), str(outs["mixed"]), "--pool", "mean", "--weights", "0.2,0.3,0.5",
            "--dtype", "float16")
    with h5py.File(outs["full"]) as full, h5py.File(outs["mean"]) as mean, h5py.File(outs["half"]) as half, \
            h5py.File(outs["mixed"]) as mixed:
        for key, n in (("0", 6), ("1", 7)):
            layers = full[key][()]
            assert layers.shape == (3, n, 64) and layers.dtype == np.float32
            # the same batch through the same kernels: the same float32 layers, averaged in float64
            assert mean[key].shape == (3, 64) and mean[key].dtype == np.float32
            np.testing.assert_array_equal(mean[key][()], layers.astype(np.float64).mean(axis=1).astype(np.float32))
            # float16 is the float32 output rounded to nearest, nothing else
            assert half[key].dtype == np.float16
            np.testing.assert_array_equal(half[key][()], layers.astype(np.float16))
            assert mixed[key].shape == (64,) and mixed[key].dtype == np.float16
        assert (mean.attrs["pool"], half.attrs["dtype"], full.attrs["pool"]) == ("mean", "float16", "none")
        # the vectors take half the bytes (the file's own bookkeeping, a few KiB, aside)
        stored = {name: sum(f[k].id.get_storage_size() for k in ("0", "1")) for name, f in (("full", full),
                                                                                            ("half", half))}
        assert stored["half"] * 2 == stored["full"] == 4 * 3 * 13 * 64

    elmo = Embedder.from_run(tiny_bilm, "cpu")
    vecs = elmo.embed_sentences([["the", "cat"], ["a", "dog", "likes"]], pool="mean", dtype=np.float16)
    assert [v.shape for v in vecs] == [(3, 64), (3, 64)] and all(v.dtype == np.float16 for v in vecs)


def test_a_bad_dtype_or_pool_is_one_error_line(tmp_path, tiny_bilm):
    text = tmp_path / "s.txt"
    text.write_text("the cat .\n")
    proc = run_cli("embed", str(tiny_bilm), str(text), str(tmp_path / "o.hdf5"), "--dtype", "int8", check=False)
    assert proc.returncode == 2 and "invalid choice: 'int8'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.hdf5").exists()


def test_a_zstd_input_embeds_as_the_plain_one(tmp_path, tiny_bilm):
    import zstandard

    text = tmp_path / "s.txt"
    text.write_text("the cat sees the fish .\n\na dog likes some bread today .\n")
    packed = tmp_path / "s.txt.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(text.read_bytes()))
    run_cli("embed", str(tiny_bilm), str(text), str(tmp_path / "plain.hdf5"))
    run_cli("embed", str(tiny_bilm), str(packed), str(tmp_path / "packed.hdf5"))
    with h5py.File(tmp_path / "plain.hdf5") as a, h5py.File(tmp_path / "packed.hdf5") as b:
        assert sorted(a) == sorted(b) and "2" in a  # keys are line numbers, the blank line 1 skipped
        for key in a:
            np.testing.assert_array_equal(a[key][()], b[key][()])
