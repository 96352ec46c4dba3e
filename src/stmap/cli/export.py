"""``stmap export BUNDLE --format onnx|tensorrt``: verified ONNX models and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import click

from stmap.cli.options import emit_json, json_option, quiet_option


@click.command("export")
@click.argument("bundle")
@click.option(
    "--format",
    "formats",
    type=click.Choice(["onnx", "tensorrt"]),
    multiple=True,
    required=True,
    help="What to add (repeatable); tensorrt also adds the ONNX it is built from.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Export into a copy of BUNDLE here (required for 'default' and zipped bundles).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing -o path.")
@click.option("--fp16", is_flag=True, help="Also export model_fp16.onnx; fp16 TensorRT engine.")
@click.option(
    "--int8",
    is_flag=True,
    help="Also export model_int8.onnx: ONNX Runtime's dynamic int8 of the linear layers, "
    "for the CPU; refused unless within 2/255 of PyTorch.",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17-20).")
@click.option("--samples", type=int, default=16, show_default=True, help="Parity check tiles.")
@click.option("--max-batch", type=int, default=64, show_default=True, help="TensorRT max batch.")
@click.option("--opt-batch", type=int, help="TensorRT batch to tune for  [default: max batch]")
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT min batch.")
@click.option(
    "--workspace-gib", type=float, default=8.0, show_default=True, help="TensorRT workspace."
)
@json_option
@quiet_option
def export(
    bundle: str,
    formats: tuple[str, ...],
    output: Path | None,
    overwrite: bool,
    fp16: bool,
    int8: bool,
    opset: int,
    samples: int,
    max_batch: int,
    opt_batch: int | None,
    min_batch: int,
    workspace_gib: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Add model.onnx (and TensorRT engines) to BUNDLE, checked against PyTorch.

    The measured maximum difference from PyTorch goes into the manifest; an export
    that misses its tolerance is refused and leaves the bundle unchanged.

    \b
    Examples:
      stmap export run/bundle --format onnx --fp16
      stmap export default --format onnx -o my_bundle
      stmap export my_bundle --format tensorrt --fp16 --max-batch 128
    """
    from stmap.export import export_bundle

    result = export_bundle(
        bundle,
        formats=formats,
        output=output,
        overwrite=overwrite,
        fp16=fp16,
        int8=int8,
        opset=opset,
        samples=samples,
        max_batch=max_batch,
        opt_batch=opt_batch,
        min_batch=min_batch,
        workspace_gib=workspace_gib,
        log=None if quiet else lambda message: click.echo(message, err=True),
    )
    if as_json:
        emit_json(result)
        return
    for name, parity in result["parity"].items():
        click.echo(
            f"{name}: max |Δ probability| {parity['max_abs_diff']:.2e} "
            f"(tolerance {parity['tolerance']:g}, {parity['samples']} tiles)"
        )
