"""The package laid out by layer (docs/architecture.md): imports point one way, modules stay small, and every name
users imported from the old flat modules still imports.

Layers, lowest first; a module may import its own layer and the layers below, never one above, lazily or not:

    nets (networks, layer declaration)  <  io (weights files, layouts, hub)  <  data (images, latent files, metrics)
    <  engine (executors)  <  tinyae.autoencoder (the public AutoencoderTiny)  <  integrations (diffusers)
    <  cli  <  the package itself (tinyae/__init__.py)

integrations sit above the public class because `tinyae.diffusers.AutoencoderTiny` subclasses it. The feature
packages video/, train/, dataset/ may import any image-side layer (the old top-level paths included: they are
edited on other branches) but not each other; image-side modules import a feature package only where they
dispatch to it (FEATURE_DISPATCH)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import tinyae

PACKAGE = Path(tinyae.__file__).parent
LAYERS = {"nets": 0, "io": 1, "data": 2, "engine": 3, "autoencoder": 4, "integrations": 5, "cli": 6}
TOP = 7  # tinyae/__init__.py, tinyae/__main__.py
FEATURES = ("video", "train", "dataset")
LEAVES = ("_compat", "_version")  # imports nothing of tinyae: any module may import it
# The old flat modules, kept as shims (a module each, or an alias in tinyae._compat for tiling and fast_stream).
SHIMS = ("weights", "model", "runtime", "images", "codec", "latents", "diffusers", "config", "blocks", "variants",
         "layers", "ov_backend", "bench", "literal")
ALIASES = {"tiling": "engine.tiling", "fast_stream": "engine.fast_stream"}
# Image-side modules that import a feature package: the diffusers integration and its previews hand video
# pipelines to tinyae.video; the CLI hands video inputs to tinyae.video.cli.
FEATURE_DISPATCH = {("integrations.diffusers", "video.pipelines"), ("integrations.previews", "video.pipelines"),
                    ("integrations.previews", "video.preview"), ("cli.models", "video.cli")}
MAX_LINES = 400
# Modules allowed above MAX_LINES: none (tiling.py was split into engine/tiling.py, engine/bands.py and
# data/png_rows.py once the branch editing it had landed).
LONG_MODULES: dict[str, int] = {}


def modules() -> dict[str, Path]:
    """tinyae-relative dotted name ("" for the package) -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """Every tinyae module `name` imports (tinyae-relative), at the top, inside functions or under TYPE_CHECKING.
    `from X import y` counts as importing X.y where that is a module, else X."""
    is_pkg = path.name == "__init__.py"
    here = ["tinyae"] + ([p for p in name.split(".") if p])
    pkg = here if is_pkg else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}".removeprefix("tinyae.") in MODULES
                       or f"{base}.{a.name}".removeprefix("tinyae.") in ALIASES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "tinyae" or t.startswith("tinyae."):
                found.add(t.removeprefix("tinyae").removeprefix("."))
    return found


def layer(name: str) -> float | None:
    """The layer of a module (None: a shim or a leaf, outside the order)."""
    first = name.split(".")[0]
    if name in ("", "__main__"):
        return TOP
    if first in LAYERS:
        return LAYERS[first]
    if first in FEATURES:
        return 6.5
    return None


def feature(name: str) -> str | None:
    first = name.split(".")[0]
    return first if first in FEATURES else None


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer_or_is_a_known_shim():
    unknown = [n for n in MODULES if layer(n) is None and n not in SHIMS + LEAVES]
    assert unknown == [], f"modules outside the layers (add them to a layer package): {unknown}"
    assert all(s in MODULES for s in SHIMS), "every old top-level path keeps a shim module"
    assert all(a not in MODULES for a in ALIASES), "tiling/fast_stream are aliases (tinyae._compat), not files"


def test_imports_point_down_the_layers():
    bad = []
    for name, targets in GRAPH.items():
        lv = layer(name)
        if lv is None:
            continue
        for t in targets:
            if t in LEAVES:
                continue
            if t.split(".")[0] in SHIMS + tuple(ALIASES):
                if feature(name) is None:
                    bad.append(f"{name} imports the old path tinyae.{t}: import its new home")
                continue
            tl = layer(t)
            if feature(name) and feature(t) and feature(name) != feature(t):
                bad.append(f"{name} imports another feature package: {t}")
            elif feature(t) and not feature(name) and lv != TOP and (name, t) not in FEATURE_DISPATCH:
                bad.append(f"{name} imports the feature package module {t}")
            elif not feature(t) and tl is not None and tl > lv:
                bad.append(f"{name} (layer {lv}) imports {t} (layer {tl}), a higher layer")
    assert bad == []


def test_nets_import_only_torch_and_each_other():
    allowed = set(sys.stdlib_module_names) | {"torch", "tinyae"}
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("nets"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = ([a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else
                     [(node.module or "").split(".")[0]] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad += [f"{name} imports {r}" for r in roots if r not in allowed]
        bad += [f"{name} imports tinyae.{t}" for t in GRAPH[name] if not t.startswith("nets")]
    assert bad == []


def test_modules_stay_small():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    too_long = {n: k for n, k in long.items() if k > LONG_MODULES.get(n, MAX_LINES)}
    assert too_long == {}, f"modules over {MAX_LINES} lines (split them by job): {too_long}"
    assert all(n in MODULES for n in LONG_MODULES)


# ---------------------------------------------------------------------------------------------- compatibility
# Every public name the old flat modules defined, and the private ones the feature packages import from them.
OLD_NAMES = {
    "weights": "COMFY_PREFIXES COMFY_SCALARS DIFFUSERS_WEIGHTS DOWNLOAD_DEADLINE DOWNLOAD_DEADLINE_ENV FLOAT_DTYPES "
               "WEIGHT_SUFFIXES WeightsError WeightsNotCachedError atomic_write build check_sha256 first_line "
               "hub_download identify infer_config load read_tensors remove_stale_temps save_comfyui save_diffusers "
               "save_original sha256_file state_dict_of to_diffusers_keys to_original_keys _NotOnHub _owner_tag",
    "model": "AutoencoderTiny AutoencoderTinyOutput DecoderOutput MissingPartError all_finite",
    "runtime": "BACKENDS FastBlock FastConv FastNet FastStem FastUpsampleConv MIN_OPSET ONNX_CONFIG ONNX_FILES "
               "ONNX_TOLERANCE OnnxRuntimeAutoencoder OptimizedAutoencoderTiny PACKED_PER_LAYER PRECISIONS STRIP_BYTES "
               "Segment check_onnx compose_conv_weights copy_float32_cpu cpu_flags cpu_has_fast_bf16 "
               "explain_precision export_onnx export_onnx_main interleave_phases load_backend optimize "
               "resolve_precision upsample_conv_weights upsample_deconv_weights _fused_available",
    "tiling": "DEFAULT_BAND_PIXELS GNStats OPTIONS REARRANGEMENTS ReceptiveField check_options decode_bands "
              "decode_to_png encode_bands encode_png read_png_bands receptive_field stream_apply tiled_apply to_uint8",
    "images": "EncodedImage IMAGE_SUFFIXES ImageError SourceImage check_channels check_pixels decode_latents "
              "encode_images pad_to_multiple psnr read_image read_source scale_factor_of ssim tensor_psnr to_source",
    "codec": "FORMAT LatentFileError MAX_CHANNELS MAX_MAGNITUDE PNG_SUFFIX canonical_safetensors encode_png_bytes "
             "latents_to_png load_latents png_layout png_to_latents read_metadata save_latents",
    "latents": "FLUX2_BN_EPS LATENT_MAGNITUDE LATENT_SHIFT from_vae_latents pack_flux pack_flux2 pack_tokens "
               "patchify_flux2 scale_latents to_vae_latents unpack_flux unpack_flux2 unpack_tokens unpatchify_flux2 "
               "unscale_latents _family",
    "diffusers": "AutoencoderTiny LivePreview PipelineConfig PreviewFrame check_vae make_contact_sheet noise_level "
                 "pipeline_family save_animation set_vae x0_from_two _to_pil",
    "config": "ACTIVATIONS DEFAULTS DIFFUSERS_DEFAULTS EXTRA_DEFAULTS IMAGE_CHANNELS TinyConfig UNCHECKED_BY_TENSORS "
              "UPSAMPLE_MODES validate",
    "blocks": "Block Clamp Decoder Encoder GN_EXPANSION GN_GROUPS activation conv",
    "variants": "FAMILIES Family KNOWN_SHA256 QWENIMAGE21_LATENTS_MEAN QWENIMAGE21_LATENTS_STD VARIANTS Variant "
                "closest_names did_you_mean get_variant is_variant variant_config",
    "layers": "Geometry POINTWISE UPSAMPLE_REACH compose declare geometry needed out_rows upsample_params",
    "fast_stream": "CHUNK_BYTES MIN_CHUNK_ROWS Stats check describe height_out ops_of stream_apply tiled_apply",
    "ov_backend": "OpenVinoAutoencoder PRECISIONS",
    "bench": "CEILING_SIZES DEFAULT_SOURCE best_conv best_conv_size ceiling_probe conv_ceiling conv_flops "
             "diffusers_twin format_markdown machine_info main median_time psnr run_bench",
    "literal": "BEGIN END literal main render_layer variants_section",
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_module_paths_keep_their_names(old):
    module = importlib.import_module(f"tinyae.{old}")
    missing = [n for n in OLD_NAMES[old].split() if not hasattr(module, n)]
    assert missing == []


def test_public_names_are_the_same_objects_at_old_and_new_homes():
    from tinyae import runtime, tiling, weights
    from tinyae.autoencoder import AutoencoderTiny, OptimizedAutoencoderTiny
    from tinyae.engine import tiling as engine_tiling

    assert tinyae.AutoencoderTiny is AutoencoderTiny and tiling is engine_tiling
    assert runtime.OptimizedAutoencoderTiny is OptimizedAutoencoderTiny
    assert importlib.import_module("tinyae.model").AutoencoderTiny is AutoencoderTiny
    assert weights.atomic_write is importlib.import_module("tinyae.io.files").atomic_write
    assert all(hasattr(tinyae, n) for n in tinyae.__all__)


def test_optimized_and_loaded_models_are_public_autoencoders(tmp_path):
    from tinyae import runtime, weights

    model = tinyae.AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    fast = model.optimize("fp32")
    assert isinstance(fast, tinyae.AutoencoderTiny) and isinstance(fast.optimize("fp32"), tinyae.AutoencoderTiny)
    assert isinstance(runtime.optimize(model, "fp32"), runtime.OptimizedAutoencoderTiny)
    assert isinstance(runtime.load_backend(model, "torch", precision="fp32"), tinyae.AutoencoderTiny)
    model.save_pretrained(tmp_path)
    assert type(tinyae.AutoencoderTiny.from_pretrained(tmp_path)) is tinyae.AutoencoderTiny
    assert type(weights.load(tmp_path)) is tinyae.AutoencoderTiny
    assert type(weights.build(model.state_dict())) is tinyae.AutoencoderTiny
