"""Turns what scripts/cuda/device_check.py recorded on a GPU (cuda_rng.npz, cudarng_*.npy) into the test
data of tests/rng_cuda.rs (tests/data/rng/cuda): torch.Generator("cuda") draws for three seeds, in the
order device_check drew them (randn of 16384, 65536, 7 and 300000 elements, then rand of 1000), and
diffusers' text2img/img2img images made with a CUDA generator. The 300000-element draw is kept at every
101st element to stay small; it is the one whose layout depends on the GPU's launch limit.

    python3 scripts/cuda/vendor_rng.py DEVICE_OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np

src = Path(sys.argv[1])
dst = Path(__file__).resolve().parents[2] / "tests" / "data" / "rng" / "cuda"
dst.mkdir(parents=True, exist_ok=True)
d = np.load(src / "cuda_rng.npz")
summary = json.loads((src / "summary.json").read_text()) if (src / "summary.json").exists() else {}
seeds = [0, 42, 2**32 + 7]
meta = {"sizes": [int(n) for n in d["sizes"]], "rand": 1000, "subsample": {"3": 101}, "seeds": seeds,
        "offsets_after": {}, "gpu": summary.get("rng", {}).get("device", "NVIDIA H100 80GB HBM3"),
        "max_blocks": 132 * 2048 // 256, "made_by": "torch 2.11.0+cu130 on the lent GPU (device_check.py)"}
for seed in seeds:
    for i in range(4):
        a = d[f"seed{seed}_randn{i}"]
        if i == 3:
            a = a[::101]
        np.save(dst / f"seed{seed}_randn{i}.npy", a.astype("<f4"))
    np.save(dst / f"seed{seed}_rand.npy", d[f"seed{seed}_rand"].astype("<f4"))
    meta["offsets_after"][str(seed)] = int(d[f"seed{seed}_offset"][0])
images = {}
for f in sorted(src.glob("cudarng_*.npy")):
    case, seed = f.stem[len("cudarng_"):].rsplit("_seed", 1)
    np.save(dst / f"{case}_seed{seed}.npy", np.load(f).astype("<f4"))
    images[case] = int(seed)
meta["diffusers_images"] = images
(dst / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
print(f"wrote {dst}")
