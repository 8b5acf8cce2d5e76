"""Writes tests/fixtures/pickle/protocol{2,3,4,5}.pkl: one small detectron2-style checkpoint
({"model": {name: numpy array}, "__author__": ...}) pickled with each protocol Python 3 writes, so the
Rust reader is checked against every way numpy serialises array data (`_codecs.encode` text at
protocol 2, BINBYTES at 3 and 4, `_frombuffer` with a PickleBuffer at 5). The expected values are
spelled out in crates/mpf-import/src/pickle.rs's tests; run once, the outputs are committed."""

import pickle
import sys
from pathlib import Path

import numpy as np


def state():
    return {
        "model": {
            "conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
            "fortran.f8": np.asfortranarray(np.array([[1.5, 2.5, 3.5], [4.5, 5.5, 6.5]])),
            "counter.i8": np.array([7, -8, 9], dtype=np.int64),
            "half.f2": np.array([0.5, -2.0], dtype=np.float16),
            "mask.u1": np.array([[0, 255]], dtype=np.uint8),
            "zero_dim": np.array(3.25, dtype=np.float32),
            "scalar": np.float32(1.0),
            "note": "not an array",
        },
        "__author__": "mpf pickle fixture",
        "matching_heuristics": True,
    }


def main(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    for protocol in (2, 3, 4, 5):
        with open(out_dir / f"protocol{protocol}.pkl", "wb") as f:
            pickle.dump(state(), f, protocol=protocol)
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}: wrote {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) / "pickle")
