"""Write src/tinyae/engine/int8_calibration.json: the int8 activation ranges of the real TAEF2 encoder and decoder,
calibrated on 256² crops of ../shared/images/train, with their PSNR against float32 on the held-out photos of
../shared/images (decode against the fp32 decode; encode through the fp32 decoder). A part is written only if every
held-out photo keeps >= 40 dB, so "auto" (which reads the file) never picks int8 below the gate.

    PYTHONPATH=src python benchmarks/int8_calibrate.py [--check]     # --check: compare with the shipped file only

Weights and photos stay in ../shared (only the ranges, a few hundred numbers, are written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GATE_DB = 40.0


def photo(path: Path, side: int | None = None) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    x = torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1)[None] / 127.5 - 1
    return x[..., :side, :side] if side else x


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) / 2).pow(2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare a fresh calibration with the shipped file")
    args = ap.parse_args()
    from tinyae import AutoencoderTiny
    from tinyae.engine import calibration

    torch.set_num_threads(1)
    model = AutoencoderTiny.from_pretrained(tuple(str(SHARED / "weights" / f"taef2_{p}.pth")
                                                  for p in ("encoder", "decoder"))).eval()
    train = sorted((SHARED / "images" / "train").glob("*.png"))
    held_out = sorted((SHARED / "images").glob("*.png"))
    ranges = calibration.calibrate(model, [photo(p, 256) for p in train])
    entries = {calibration.fingerprint(getattr(model, part)): {
        "variant": "taef2", "part": part, "ranges": r, "calibrated_on": [p.name for p in train]}
        for part, r in ranges.items()}
    if args.check:
        old = calibration.shipped()
        same = set(old) == set(entries) and all(
            np.allclose(old[k]["ranges"], entries[k]["ranges"], rtol=1e-2, atol=1e-3) for k in entries)
        print("shipped calibration matches a fresh one" if same else "shipped calibration differs")
        return 0 if same else 1
    calibration.CALIBRATION_FILE.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    calibration.shipped.cache_clear()
    fast = model.optimize("auto")
    print(f"optimize('auto') precision: {fast.precision}")
    worst: dict[str, float] = {}
    with torch.inference_mode():
        for p in held_out:
            x = photo(p)
            z = model.encode(x).latents
            ref = model.decode(z).sample
            d = psnr(fast.decode(z).sample, ref)
            e = psnr(model.decode(fast.encode(x).latents).sample, ref)
            print(f"{p.name}: decode {d:.2f} dB, encode (through the fp32 decoder) {e:.2f} dB")
            for part, v in (("decoder", d), ("encoder", e)):
                key = calibration.fingerprint(getattr(model, part))
                entries[key].setdefault("held_out_psnr_db", {})[p.name] = round(v, 2)
                worst[part] = min(worst.get(part, float("inf")), v)
    kept = {k: v for k, v in entries.items() if worst[v["part"]] >= GATE_DB}
    for part, v in worst.items():
        print(f"{part}: worst held-out {v:.2f} dB -> {'kept' if v >= GATE_DB else 'NOT kept (below the gate)'}")
    calibration.CALIBRATION_FILE.write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {calibration.CALIBRATION_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
