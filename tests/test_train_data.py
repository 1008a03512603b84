"""tinyae.train's data: images of any size and kind (tiny, very wide or tall, grayscale, RGBA, palette, 16-bit,
EXIF-rotated), the "crop" and "buckets" crop policies, determinism given the seed, and a resume that changes the
policy refused, naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyae import AutoencoderTiny
from tinyae.cli import main as cli_main
from tinyae.train.data import ASPECTS, ImageData, bucket_shape, fit_crop, image_size, nearest_aspect, seeded

TINY = {"latent_channels": 4, "encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8],
        "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    """Every kind of image tinyae reads, most of them smaller than a 16 px crop or far from square."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    Image.fromarray(u8(1, 1, 3)).save(root / "one_pixel.png")
    Image.fromarray(u8(3, 5, 3)).save(root / "tiny.png")
    Image.fromarray(u8(8, 400, 3)).save(root / "very_wide.png")
    Image.fromarray(u8(300, 6)).save(root / "tall_gray.png")
    Image.fromarray(u8(40, 50, 2), "LA").save(root / "gray_alpha.png")
    Image.fromarray(u8(40, 50, 4)).save(root / "rgba.png")
    Image.fromarray(u8(30, 70, 3)).convert("P").save(root / "palette.gif")
    Image.fromarray(rng.integers(0, 65536, (30, 20), dtype=np.uint16)).save(root / "gray16.png")
    deep = rng.integers(0, 65536, (20, 33, 4), dtype=np.uint16)
    with open(root / "rgba16.png", "wb") as f:
        png.Writer(33, 20, greyscale=False, alpha=True, bitdepth=16).write(f, deep.reshape(20, -1).tolist())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: 64 wide x 24 high as stored, 24 x 64 as shown
    Image.fromarray(u8(24, 64, 3)).save(root / "rotated.jpg", exif=exif)
    Image.fromarray(u8(36, 48, 3)).save(root / "photo.webp")
    return root


def test_image_size_follows_exif_orientation(odd):
    assert image_size(odd / "rotated.jpg") == (64, 24)
    assert image_size(odd / "very_wide.png") == (8, 400)


@pytest.mark.parametrize("policy", ["crop", "buckets"])
def test_every_kind_of_image_gives_batches_in_range(odd, policy):
    d = ImageData([str(odd)], seed=3, flip=0.5, color_aug=0.5, crop_policy=policy, batch_size=2)
    length = d.epoch_length if policy == "buckets" else len(d)
    seen = set()
    for start in range(0, 2 * length, 2):
        x, z = d.batch(start, 2, 16)
        assert z is None and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert -1 <= float(x.min()) and float(x.max()) <= 1
        h, w = x.shape[-2:]
        assert h % 8 == 0 and w % 8 == 0 and abs(math.log(h * w / 256)) < 0.7
        if policy == "crop":
            assert (h, w) == (16, 16)
        seen |= {d.image_index(g) for g in (start, start + 1)}
    assert seen == set(range(len(d)))
    if policy == "buckets":  # the shapes follow the images: wide ones wide, tall ones tall
        wide, tall = (d.files.index(odd / n) for n in ("very_wide.png", "tall_gray.png"))
        assert d.shape(wide, 16) == (8, 32) and d.shape(tall, 16) == (32, 8)
        assert d.shape(d.files.index(odd / "rotated.jpg"), 96) == bucket_shape(1 / 3, 96, 8) == (168, 56)


def test_buckets_epoch_layout(odd):
    """Each B-aligned batch is one bucket (for any number of ranks reading B-aligned slices), every image is seen
    every epoch, the layout depends on the seed and epoch only, and another seed reorders it."""
    for batch in (1, 2, 3):
        d = ImageData([str(odd)], seed=7, flip=0.0, color_aug=0.0, crop_policy="buckets", batch_size=batch)
        n = d.epoch_length
        assert n % batch == 0 and n >= len(d)
        for e in range(3):
            order = [d.image_index(g) for g in range(e * n, (e + 1) * n)]
            assert set(order) == set(range(len(d)))
            for k in range(0, n, batch):
                assert len({d.buckets[i] for i in order[k:k + batch]}) == 1
        again = ImageData([str(odd)], seed=7, flip=0.0, color_aug=0.0, crop_policy="buckets", batch_size=batch)
        assert [again.image_index(g) for g in range(n, 3 * n)] == [d.image_index(g) for g in range(n, 3 * n)]
    other = ImageData([str(odd)], seed=8, flip=0.0, color_aug=0.0, crop_policy="buckets", batch_size=2)
    assert [other.image_index(g) for g in range(2 * n)] != [d.image_index(g) for g in range(2 * n)]


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), th=st.integers(1, 8).map(lambda v: 8 * v),
       tw=st.integers(1, 8).map(lambda v: 8 * v), cover=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_fit_crop_any_size(h, w, th, tw, cover, seed):
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    x = fit_crop(img, th, tw, seeded(seed), cover)
    assert x.shape == (3, th, tw) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, fit_crop(img, th, tw, seeded(seed), cover))
    if not cover and h >= th and w >= tw:  # a crop at the image's own resolution: exact pixels, no resampling
        found = [(y, x0) for y in range(h - th + 1) for x0 in range(w - tw + 1)
                 if torch.equal(img[:, y:y + th, x0:x0 + tw], x)]
        assert found


@given(h=st.integers(1, 5000), w=st.integers(1, 5000), side=st.sampled_from([16, 96, 128, 256]),
       multiple=st.sampled_from([8, 16, 32]))
def test_buckets_keep_about_side_squared_pixels(h, w, side, multiple):
    a = ASPECTS[nearest_aspect(h, w)]
    bh, bw = bucket_shape(a, side, multiple)
    assert bh % multiple == 0 and bw % multiple == 0
    if side >= 4 * multiple:
        assert abs(math.log(bh * bw / side ** 2)) < 0.25 and abs(math.log(bw / bh / a)) < 0.35
    r = w / h
    if 1 / 4 <= r <= 4:  # the nearest bucket is within one step of the ratio list
        assert abs(math.log(a / r)) <= max(abs(math.log(ASPECTS[i + 1] / ASPECTS[i])) for i in range(len(ASPECTS) - 1))


def test_buckets_refuse_precomputed_latents(odd):
    with pytest.raises(ValueError, match="--crop-policy buckets"):
        ImageData([str(odd)], seed=0, flip=0.0, color_aug=0.0, crop_policy="buckets", latents_for=lambda p: None)
    with pytest.raises(ValueError, match="--crop-policy must be one of"):
        ImageData([str(odd)], seed=0, flip=0.0, color_aug=0.0, crop_policy="squash")


def test_training_on_odd_images_with_buckets_resumes_exactly_and_refuses_a_policy_change(odd, tmp_path, capsys):
    """Buckets with the adversarial loss on every kind of image and a crop schedule: a run stopped at step 2 (its
    replay buffer holding fakes of several shapes) and resumed gives the losses of an uninterrupted run; a resume
    with the other crop policy is refused, naming it."""
    torch.manual_seed(1)  # not the student's seed
    AutoencoderTiny(**TINY).save_pretrained(tmp_path / "teacher")
    (tmp_path / "val").mkdir()
    for name in ("rgba16.png", "palette.gif", "rotated.jpg"):
        (tmp_path / "val" / name).symlink_to(odd / name)

    def train(run: Path, *extra: str, val: Path = tmp_path / "val") -> int:
        return cli_main(["train", "--teacher", str(tmp_path / "teacher"), "--student", json.dumps(TINY), "--data",
                         str(odd), "--val", str(val), "--val-size", "16", "-o", str(run), "--crop-schedule",
                         "16:0,24:3", "--batch-size", "2", "--disc-width", "4", "--precision", "fp32",
                         "--log-every", "1", "--no-progress", "--export-formats", "", "--eval-every", "100", *extra])

    def losses(run: Path) -> list[tuple]:
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["crop"], r["loss"], r["disc"]) for r in rows if r["kind"] == "train"]

    run, ref = tmp_path / "run", tmp_path / "ref"
    assert train(run, "--crop-policy", "buckets", "--max-steps", "2", val=odd) == 1  # val: a 1-pixel image
    assert "--val" in capsys.readouterr().err and not (run / "checkpoint.pt").exists()
    assert train(ref, "--crop-policy", "buckets", "--max-steps", "4") == 0
    assert [r[:2] for r in losses(ref)] == [(1, 16), (2, 16), (3, 16), (4, 24)]
    assert all(np.isfinite(r[2:]).all() for r in losses(ref))
    assert train(run, "--crop-policy", "buckets", "--max-steps", "2") == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["crop_policy"] == "buckets"
    assert len({f.shape for f in ckpt["adv"]["buffer"]["fakes"]}) > 1  # two buckets so far
    capsys.readouterr()
    assert train(run, "--max-steps", "4") == 1  # the default policy, crop: refused, naming it
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "--crop-policy: the run has 'buckets', this command 'crop'" in err
    assert train(run, "--crop-policy", "buckets", "--max-steps", "4") == 0
    assert losses(run) == losses(ref)


def test_replay_buffer_keeps_shapes_apart_and_drops_another_crop_side():
    from tinyae.train.losses import ReplayBuffer

    buf = ReplayBuffer(6, seed=0)
    wide, tall = torch.rand(2, 3, 8, 32), torch.rand(2, 3, 32, 8)
    buf.push(wide, torch.rand(2, 4, 1, 4))
    buf.push(tall, torch.rand(2, 4, 4, 1))
    for shape, src in (((3, 8, 32), wide), ((3, 32, 8), tall)):
        fakes, ctx = buf.sample(5, torch.Size(shape), torch.device("cpu"))
        assert fakes.shape == (5, *shape) and all(any(torch.equal(f, s) for s in src) for f in fakes)
    state = buf.state_dict()
    assert isinstance(state["fakes"], list) and len(state["fakes"]) == 4
    again = ReplayBuffer(6, seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.sample(3, torch.Size((3, 32, 8)), torch.device("cpu"))[0],
                       buf.sample(3, torch.Size((3, 32, 8)), torch.device("cpu"))[0])
    buf.push(torch.rand(1, 3, 24, 24), torch.rand(1, 4, 3, 3))  # 576 px against 256: a new crop side
    assert len(buf.fakes) == 1 and buf.state_dict()["fakes"].shape == (1, 3, 24, 24)


def patch_teacher(calls: list[int]):
    """A teacher whose latents of each 8x8 patch depend on that patch alone: the window of a whole image's latents
    is then exactly the latents of the crop, which is what `--teacher-latents whole` must hand out."""
    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.cat([torch.nn.functional.avg_pool2d(x, 8), torch.nn.functional.avg_pool2d(x * x, 8)[:, :1]], 1)
    return encode


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), g=st.integers(0, 10 ** 6), crop=st.sampled_from([8, 16, 32, 48]),
       flip=st.sampled_from([0.0, 0.5, 1.0]), color=st.sampled_from([0.0, 1.0]))
def test_whole_image_latents_are_the_crops_latents(odd, seed, g, crop, flip, color):
    calls: list[int] = []
    d = ImageData([str(odd)], seed=seed, flip=flip, color_aug=color, encode=patch_teacher(calls))
    x, z = d.sample(g, crop)
    assert x.shape == (3, crop, crop) and -1 <= float(x.min()) and float(x.max()) <= 1
    torch.testing.assert_close(z, patch_teacher([])(x[None])[0], rtol=0, atol=1e-6)
    x2, z2 = d.sample(g, crop)  # deterministic, and from the cache
    assert torch.equal(x, x2) and torch.equal(z, z2)


def test_whole_image_latents_are_encoded_once_per_image_and_flip(odd):
    calls: list[int] = []
    d = ImageData([str(odd)], seed=1, flip=0.5, color_aug=0.0, encode=patch_teacher(calls))
    big = [i for i, p in enumerate(d.files) if min(image_size(p)) >= 16]
    for g in range(40 * len(d)):
        if d.image_index(g) in big:
            d.sample(g, 16)
    assert len(calls) == 2 * len(big) and set(calls) == {1}  # the image and its flip, once each
    with pytest.raises(ValueError, match="--crop-policy crop"):
        ImageData([str(odd)], seed=1, flip=0.5, color_aug=0.0, encode=patch_teacher([]), crop_policy="buckets")


@settings(max_examples=40, deadline=None)
@given(a=st.floats(-math.pi, math.pi), seed=st.integers(0, 2 ** 31), hue=st.floats(1, 180))
def test_hue_rotation_keeps_luma_and_grays(a, seed, hue):
    from tinyae.train.data import _YIQ, _hue_rotation, color_change

    m = _hue_rotation(a)
    torch.testing.assert_close(_YIQ[0] @ m, _YIQ[0], atol=1e-5, rtol=0)  # luma kept
    torch.testing.assert_close(m @ _hue_rotation(-a), torch.eye(3), atol=1e-5, rtol=0)
    gray = torch.rand(1, 6, 7, generator=seeded(seed)).expand(3, -1, -1)
    plain, rotated = (color_change(gray, seeded(seed, 1), h) for h in (0.0, hue))
    torch.testing.assert_close(rotated, plain, atol=1e-5, rtol=0)  # a gray image has no hue to turn
    colour = torch.rand(3, 6, 7, generator=seeded(seed, 2))
    out = color_change(colour, seeded(seed, 3), hue)
    assert out.shape == colour.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_whole_image_batch_encodes_the_colour_changed_crops_together(odd):
    calls: list[int] = []
    d = ImageData([str(odd)], seed=2, flip=0.5, color_aug=0.5, hue=180, encode=patch_teacher(calls))
    for start in range(0, 24, 4):
        x, z = d.batch(start, 4, 16)
        torch.testing.assert_close(z, patch_teacher([])(x), rtol=0, atol=1e-6)
    assert max(calls) > 1  # a batch's crops that need their own latents went to the teacher at once


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31), g=st.integers(0, 10 ** 6), crop=st.sampled_from([8, 16, 32]),
       whole=st.booleans(), color=st.sampled_from([0.0, 1.0]))
def test_tint_colours_gray_crops_only_keeping_their_luma(odd, seed, g, crop, whole, color):
    """--tint: a gray crop gets colour, its luma kept where no channel was clipped, and (whole-image latents) is
    encoded by itself; a colour crop, and every other draw (crop window, flip, colour change), stays as without."""
    from tinyae.train.data import _YIQ

    def data(tint: float, color_aug: float = color) -> ImageData:
        return ImageData([str(odd)], seed=seed, flip=0.5, color_aug=color_aug, tint=tint,
                         encode=patch_teacher([]) if whole else None)

    (x0, _), (x1, z1) = data(0.0).sample(g, crop), data(1.0).sample(g, crop)
    if whole:
        torch.testing.assert_close(z1, patch_teacher([])(x1[None])[0], rtol=0, atol=1e-6)
    assert x1.shape == x0.shape and -1 <= float(x1.min()) and float(x1.max()) <= 1
    plain = data(0.0, 0.0).sample(g, crop)[0]  # the same window and flip, no colour change
    gray = bool((plain[0] == plain[1]).all() and (plain[1] == plain[2]).all())
    if not gray:
        assert torch.equal(x1, x0)
        return
    if color:
        return  # the colour change of a tinted crop: in range, checked above
    inside = ((x1 > -1) & (x1 < 1)).all(0)
    torch.testing.assert_close(torch.einsum("c,chw->hw", _YIQ[0], x1)[inside], x0[0][inside], atol=1e-5, rtol=0)
    mid = inside & (x0[0].abs() < 0.9)
    if mid.any():
        assert float((x1[0] - x1[2])[mid].abs().max()) > 0  # coloured


def test_tint_leaves_black_and_white_alone_and_is_seeded():
    from tinyae.train.data import tint

    x = torch.tensor([0.0, 1.0]).repeat_interleave(8).view(1, 4, 4).expand(3, -1, -1)
    assert torch.equal(tint(x, seeded(5)), x)  # no chroma at black and white (4 Y (1 - Y) = 0)
    y = torch.linspace(0.1, 0.9, 64).view(1, 8, 8).expand(3, -1, -1)
    assert torch.equal(tint(y, seeded(5)), tint(y, seeded(5)))
    assert not torch.equal(tint(y, seeded(5)), tint(y, seeded(6)))
