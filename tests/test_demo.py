"""`make demo`'s script on the real TAEF2 weights and photo: runs, writes the decoded image, reports both paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_demo_roundtrips_the_real_photo(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    psnr = float(re.search(r"PSNR\s+([\d.]+) dB", run.stdout).group(1))
    gap = float(re.search(r"([\d.]+|inf) dB from the fp32 roundtrip", run.stdout).group(1))
    assert psnr > 30 and gap >= 40  # TAEF2 roundtrip quality; optimize() against fp32
    out = Image.open(tmp_path / "astronaut.taef2.png")
    assert out.size == (512, 512) and out.mode == "RGB"
