"""Issue 16 probe: int8 vs bf16 on this CPU, one process, interleaved rounds (ratios survive a shared machine).

    PYTHONPATH=src python benchmarks/int8_probe.py            # conv, Winograd, end to end at 512², profile
    PYTHONPATH=src python benchmarks/int8_probe.py --quick    # 128² smoke run

1. one 3x3 conv 64->64 (the dominant layer): tinyae's bf16 oneDNN conv (channels_last, prepacked, fused ReLU)
   against oneDNN u8 x s8 (`torch.ops.onednn.qconv2d_pointwise`, u8 out) and `torch.ops.quantized.conv2d_relu`
   (x86 / fbgemm / onednn engines), on a strip (128 rows) and the whole 512² activation, 1 and 2 threads;
2. Winograd F(2,3) in bf16 with batched matmuls against the direct conv (the 16 batched matmuls alone, and the
   whole thing with its transforms in eager torch);
3. end to end: `optimize("bf16")` against `optimize("int8")` (calibrated on ../shared/images/train, 256² crops),
   encode and decode of astronaut.png, real TAEF2 and the taesana encoder, with PSNR against fp32;
4. torch.profiler of the bf16 decoder: time per op kind.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SHARED = Path(__file__).resolve().parents[2] / "shared"
C = 64


def rounds(fns: dict, n: int) -> dict[str, float]:
    """Median ms of each function, timed in interleaved rounds after two warm-up calls each."""
    for f in fns.values():
        f(), f()
    t: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            t[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in t.items()}


def conv_contestants(h: int, w: int) -> dict:
    x = torch.randn(1, C, h, w).relu().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wb = (torch.randn(C, C, 3, 3) * 0.05).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    b = torch.zeros(C, dtype=torch.bfloat16)
    wp = torch.ops.mkldnn._reorder_convolution_weight(wb, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
    xq = torch.randint(0, 255, (1, C, h, w), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    ws, wz = torch.full((C,), 1e-3), torch.zeros(C, dtype=torch.long)
    qw = torch.ops.onednn.qconv_prepack(torch.randint(-127, 127, (C, C, 3, 3), dtype=torch.int8), ws, 0.02, 0,
                                        [1, 1], [1, 1], [1, 1], 1, list(xq.shape))
    fns = {"bf16 oneDNN (tinyae)": lambda: torch.ops.mkldnn._convolution_pointwise(
               x, wp, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""),
           "int8 onednn.qconv2d_pointwise": lambda: torch.ops.onednn.qconv2d_pointwise(
               xq, 0.02, 0, qw, ws, wz, torch.zeros(C), [1, 1], [1, 1], [1, 1], 1, 0.05, 0, None, "relu", [], "")}
    for engine in ("x86", "fbgemm", "onednn"):
        torch.backends.quantized.engine = engine
        qx = torch._make_per_tensor_quantized_tensor(xq, 0.02, 0)
        qwt = torch.quantize_per_channel(torch.randn(C, C, 3, 3) * 0.05, ws.double(), wz, 0, torch.qint8)
        packed = torch.ops.quantized.conv2d_prepack(qwt, torch.zeros(C), [1, 1], [1, 1], [1, 1], 1)

        def run(qx=qx, packed=packed, engine=engine):
            torch.backends.quantized.engine = engine
            return torch.ops.quantized.conv2d_relu(qx, packed, 0.05, 0)
        fns[f"int8 quantized.conv2d ({engine})"] = run
    return fns


def winograd_f23(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """F(2,3) Winograd 3x3 conv, padding 1, x (H, W, C) bf16 -> (H, W, K); u: (16, C, K) transformed weights."""
    h, w, c = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))

    def bt(r):  # B^T d, one axis
        return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]
    t = bt([xp[k:k + h:2] for k in range(4)])
    v = torch.stack([s for a in range(4) for s in bt([t[a][:, k:k + w:2] for k in range(4)])])
    m = torch.bmm(v.view(16, -1, c), u).view(4, 4, h // 2, w // 2, -1)
    r0, r1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]  # A^T m, rows
    out = torch.empty(h // 2, 2, w // 2, 2, m.shape[-1], dtype=x.dtype)
    for i, r in enumerate((r0, r1)):
        out[:, i, :, 0], out[:, i, :, 1] = r[0] + r[1] + r[2], r[1] - r[2] - r[3]
    return out.view(h, w, -1)


def winograd_contestants(h: int, w: int) -> dict:
    g = torch.tensor([[1., 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)
    wt = torch.randn(C, C, 3, 3) * 0.05
    u = torch.einsum("ai,kcij,bj->abck", g, wt.double(), g).reshape(16, C, C).to(torch.bfloat16)
    x = torch.randn(1, C, h, w).relu().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wb = wt.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wp = torch.ops.mkldnn._reorder_convolution_weight(wb, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
    v = torch.randn(16, h * w // 4, C).to(torch.bfloat16)
    xh = x[0].permute(1, 2, 0)
    return {"bf16 oneDNN direct (tinyae)": lambda: torch.ops.mkldnn._convolution_pointwise(
                x, wp, None, [1, 1], [1, 1], [1, 1], 1, "none", [], ""),
            "Winograd F(2,3): 16 bf16 bmm alone": lambda: torch.bmm(v, u),
            "Winograd F(2,3) whole (eager transforms)": lambda: winograd_f23(xh, u)}


def end_to_end(size: int, n: int) -> None:
    from conftest import PHOTOS, TAEF2, TAESANA_ENCODER, load_photo, psnr
    from tinyae import AutoencoderTiny
    from tinyae.runtime import optimize

    calibration = [load_photo(p)[..., :256, :256] for p in sorted((SHARED / "images" / "train").glob("*.png"))]
    x = load_photo(PHOTOS[0])[..., :size, :size]
    vae = AutoencoderTiny.from_pretrained(TAEF2)
    sana = AutoencoderTiny.from_pretrained(TAESANA_ENCODER)
    with torch.inference_mode():
        for name, m in (("taef2", vae), ("taesana encoder", sana)):
            fast, q = optimize(m, "bf16"), optimize(m, "int8", calibration=calibration)
            z = m.encode(x).latents
            fns = {"encode bf16": lambda: fast.encode(x), "encode int8": lambda: q.encode(x)}
            if m.decoder is not None:
                fns |= {"decode bf16": lambda: fast.decode(z), "decode int8": lambda: q.decode(z)}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                r = rounds(fns, n)
                for part in ("encode", "decode"):
                    if f"{part} bf16" in r:
                        print(f"  {name} {part} {size}² threads={threads}: bf16 {r[f'{part} bf16']:.0f} ms, int8 "
                              f"{r[f'{part} int8']:.0f} ms, x{r[f'{part} bf16'] / r[f'{part} int8']:.2f}")
            torch.set_num_threads(1)
            zq = q.encode(x).latents
            snr = 10 * torch.log10(z.pow(2).mean() / (zq - z).pow(2).mean())
            line = f"  {name} int8 latents: SNR {snr:.1f} dB against fp32"
            if m.decoder is not None:
                ref = m.decode(z).sample
                line += (f"; decode {psnr(q.decode(z).sample, ref):.1f} dB, encode through the fp32 decoder "
                         f"{psnr(m.decode(zq).sample, ref):.1f} dB")
            print(line, flush=True)


def profile(size: int) -> None:
    from conftest import TAEF2
    from tinyae import AutoencoderTiny
    from tinyae.runtime import optimize

    fast = optimize(AutoencoderTiny.from_pretrained(TAEF2), "bf16")
    z = torch.randn(1, 32, size // 8, size // 8)
    with torch.inference_mode():
        fast.decode(z)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fast.decode(z)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128² smoke run, 2 rounds")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    size, n = (128, 2) if args.quick else (512, args.rounds)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = [f for f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in cpu]
    print(f"CPU: {model}, flags {' '.join(flags)}; torch {torch.__version__}")
    for title, make in (("1. one 3x3 conv 64->64", conv_contestants), ("2. Winograd F(2,3)", winograd_contestants)):
        print(title)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for h in sorted({min(128, size), size}):
                r = rounds(make(h, size), n)
                base = next(iter(r.values()))
                gflop = C * C * 9 * 2 * h * size / 1e9
                for k, v in r.items():
                    print(f"  threads={threads} {h}x{size} {k:42s} {v:8.2f} ms {gflop / v * 1e3:5.0f} GFLOP/s "
                          f"x{base / v:.2f}", flush=True)
    print("3. end to end (PSNR against fp32 eager)")
    end_to_end(size, n)
    print("4. profile of the bf16 decoder (1 thread)")
    torch.set_num_threads(1)
    profile(size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
