"""stmap.export: ONNX export with verified parity, TensorRT engines.

``export_bundle`` is the one entry point (``stmap export`` is a thin wrapper): it
exports into a hidden work folder inside the target bundle, checks every exported
model against eager PyTorch, and only then moves the files in and rewrites the
manifest atomically (``stmap.bundle.add_files``). A failure at any step removes the
work folder and leaves the bundle exactly as it was; with ``output`` the bundle is
copied to a hidden staging folder first and renamed into place only on success.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from stmap.bundle import MANIFEST, Bundle, add_files, open_bundle
from stmap.errors import InputError, OutputExistsError
from stmap.export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx, quantize_onnx
from stmap.export.parity import onnx_parity
from stmap.export.tensorrt_engine import DEFAULT_WORKSPACE_GIB, export_engine, require_tensorrt
from stmap.model import InferenceModel
from stmap.parity_tiles import DEFAULT_SAMPLES, check_samples
from stmap.stage_contract import (
    DEFAULT_MAX_BATCH,
    EXPORT_KEYS,
    ONNX_FILES,
    TENSORRT_KEY,
    BatchProfile,
    recorded_engines,
)

FORMATS = ("onnx", "tensorrt")

__all__ = ["FORMATS", "export_bundle"]


def export_bundle(
    bundle_path: str | os.PathLike[str],
    *,
    formats: Iterable[str] = ("onnx",),
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    fp16: bool = False,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    samples: int = DEFAULT_SAMPLES,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    min_batch: int = 1,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Add verified ONNX models (and TensorRT engines) to a bundle, or to a copy at ``output``.

    ``onnx`` writes ``model.onnx`` (and ``model_fp16.onnx`` with ``fp16``,
    ``model_int8.onnx``, ONNX Runtime's dynamic int8 for the CPU, with ``int8``); ``tensorrt``
    also builds an engine for this GPU from the ONNX of its precision (fp16 with
    ``fp16``, else fp32). Returns the bundle written, the files added and their
    manifest records. Every check on the arguments runs before any work.
    """
    say = log or (lambda message: None)
    wanted = _check_formats(formats)
    check_opset(opset)
    check_samples(samples)
    profile = BatchProfile.from_options(max_batch, opt_batch, min_batch)
    if workspace_gib <= 0:
        raise InputError(f"--workspace-gib {workspace_gib}: must be positive")
    if "tensorrt" in wanted:
        require_tensorrt()
    bundle = open_bundle(bundle_path)
    if output is None and bundle.is_default:
        raise InputError(
            f"{bundle_path}: the bundle shipped with stmap is never modified in place; "
            "give -o NEW_BUNDLE to export into a copy"
        )
    if output is None and bundle.source.is_file():
        raise InputError(
            f"{bundle.source}: a zipped bundle cannot be exported into; "
            "give -o NEW_BUNDLE to export into an unpacked copy"
        )
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]
    with _target(bundle, None if output is None else Path(output), overwrite) as (target, work):
        manifest = target.manifest
        model = _inference_model(target)
        files: dict[str, Path] = {}
        exports: dict[str, Any] = {}
        checked: dict[str, Any] = {}  # file → parity record, for what this call adds
        for precision in precisions:
            say(f"exporting {ONNX_FILES[precision]} (opset {opset})")
            onnx = export_onnx(
                model,
                work / ONNX_FILES[precision],
                tile_size=manifest.infer_tile,
                channels=len(manifest.bands),
                precision=precision,
                opset=opset,
                metadata={"stmap.bundle_hash": target.hash(), "stmap.name": manifest.name},
            )
            say(f"checking {onnx.path.name} against PyTorch on {samples} tiles")
            parity = onnx_parity(
                model,
                onnx.path,
                precision=precision,
                tile_size=manifest.infer_tile,
                channels=len(manifest.bands),
                samples=samples,
            )
            files.update(onnx.files)
            exports[EXPORT_KEYS[precision]] = {**onnx.record, "parity": parity.record()}
            checked[onnx.path.name] = parity.record()
            if precision == "fp32" and int8:
                say(f"quantising {ONNX_FILES['int8']} (ONNX Runtime, dynamic int8)")
                quantised = quantize_onnx(onnx, work / ONNX_FILES["int8"])
                parity = onnx_parity(
                    model,
                    quantised.path,
                    precision="int8",
                    tile_size=manifest.infer_tile,
                    channels=len(manifest.bands),
                    samples=samples,
                )
                files.update(quantised.files)
                exports[EXPORT_KEYS["int8"]] = {**quantised.record, "parity": parity.record()}
                checked[quantised.path.name] = parity.record()
        if "tensorrt" in wanted:
            precision = precisions[-1]
            say(f"building a {precision} TensorRT engine for this GPU")
            engine_files, record = export_engine(
                model,
                target,
                work / ONNX_FILES[precision],
                work,
                precision=precision,
                profile=profile,
                samples=samples,
                workspace_gib=workspace_gib,
            )
            files.update(engine_files)
            engines = recorded_engines(manifest.exports)
            engines[record["file"]] = record
            checked[record["file"]] = record["parity"]
            exports[TENSORRT_KEY] = {"engines": engines}
        add_files(target, files, exports)
    written = Path(output) if output is not None else bundle.source
    say(f"added {', '.join(files)} to {written}")
    return {
        "bundle": str(written),
        "source": str(bundle.source),
        "files": list(files),
        "exports": exports,
        "parity": checked,
    }


def _check_formats(formats: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(formats))
    unknown = [f for f in wanted if f not in FORMATS]
    if not wanted or unknown:
        raise InputError(
            f"--format {', '.join(unknown) or '(none)'} is not supported; "
            f"choose from {', '.join(FORMATS)}"
        )
    return wanted


def _inference_model(bundle: Bundle) -> InferenceModel:
    """The bundle's eager float32 ``InferenceModel`` for uint8 input, on the CPU."""
    return InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing("uint8")).eval()


@contextlib.contextmanager
def _target(bundle: Bundle, output: Path | None, overwrite: bool) -> Iterator[tuple[Bundle, Path]]:
    """Yield (bundle to add files to, work folder inside it); clean up whatever happens.

    In place, the work folder is the only thing created; with ``output``, a verified
    copy is staged beside ``output`` and renamed to it once the export succeeded.
    """
    if output is None:
        work = Path(tempfile.mkdtemp(prefix=".stmap-export-", dir=bundle.root))
        try:
            yield bundle, work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if output.resolve() == bundle.source.resolve():
        raise InputError(f"-o {output}: is the source bundle; drop -o to export in place")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"-o {output}: exists; choose another path or add --overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for name in [MANIFEST, *bundle.manifest.files]:
            shutil.copy2(bundle.root / name, staging / name)
        copy = open_bundle(staging)
        work = Path(tempfile.mkdtemp(prefix=".stmap-export-", dir=staging))
        yield copy, work
        shutil.rmtree(work)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
