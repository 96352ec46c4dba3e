"""``stmap train``: run a Smart Transfer protocol from a config; thin, one library call."""

from __future__ import annotations

import logging
import sys

import click

from stmap.cli.options import emit_json, json_option


@click.command("train")
@click.option(
    "--config",
    "source",
    required=True,
    metavar="FILE|NAME",
    help="YAML config, or a shipped one: fullsup, lodo, ssdc, ratio, fewshot.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key; the value is YAML (--set source_regions=[a,b]). Repeatable.",
)
@json_option
def train(source: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Train under a protocol; write bundle/, folds/, report.{json,tsv,md}, overlays/.

    \b
    Examples:
      stmap train --config lodo --set data_root=ST_Turkey_2023 \\
          --set weights=dinov3_vitl16_sat493m.pth --set out_dir=runs/lodo
      stmap synth city.tif --style hatay --tiles data && \\
      stmap train --config fullsup --set data_root=data --set backbone=tiny \\
          --set out_dir=runs/demo --set epochs=2

    \b
    data_root holds either the ST_Turkey_2023 layout
      <region>/images/*.png, <region>/labels/*.png, tiles_meta/*.json,
      footprints/<region>_*.geojson
    or rasters <scene>.tif + <scene>_labels.tif (+ footprints, any OGR vector).
    Config keys (cli.md): protocol, data_root, footprint_dir, tiles_meta_dir,
    source_regions, target_regions, backbone, weights (a local checkpoint;
    'download' fetches the published one), img_size, batch_size, epochs, lr,
    weight_decay, grad_clip, lambda_pc, lambda_dpt, k_folds, train_ratio,
    fewshot_n, seed, device, out_dir, and decoder_channels,
    backbone_rope_jitter, feature_cache, num_workers, lora_rank, lora_alpha,
    fewshot_lr, fewshot_weight_decay, fewshot_epochs, overlays.
    """
    from stmap.train.config import load_config
    from stmap.train.run import run_training

    config = load_config(source, overrides)
    log_to_stderr()
    bundle = run_training(config, command=" ".join(["stmap", *sys.argv[1:]]))
    if as_json:
        from stmap.bundle import open_bundle

        metrics = open_bundle(bundle).manifest.metrics
        emit_json(
            {
                "bundle": str(bundle),
                "out_dir": str(config.out_dir),
                "report": str(config.out_dir / "report.json"),
                **metrics,
            }
        )
    else:
        click.echo(f"bundle: {bundle}\nreport: {config.out_dir / 'report.md'}", err=True)


def log_to_stderr() -> None:
    """Progress lines of the training stage on stderr (stdout stays for --json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("stmap")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
