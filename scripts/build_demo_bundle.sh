#!/usr/bin/env bash
# Rebuild the demo bundle shipped inside stmap (src/stmap/data/demo_bundle):
# synthetic cities in four regional styles, `stmap train` on three of them with the
# `tiny` backbone, `stmap evaluate` on the fourth (never seen in training), then copy
# the selected bundle into the package. About 25 minutes on a 2-core CPU.
#   usage: scripts/build_demo_bundle.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work" && cd "$work"

for style in citycentre oldtown village periurban; do
  stmap synth "$style.tif" --size 2048 --style "$style" --seed 11 --damage-rate 0.2 --tiles tiles
done

stmap train --config fullsup \
  --set data_root=tiles --set backbone=tiny --set decoder_channels=16 \
  --set "source_regions=[citycentre,oldtown,village]" \
  --set epochs=25 --set lr=3e-3 --set k_folds=2 --set device=cpu --set out_dir=run

stmap evaluate --model run/bundle tiles --json > heldout.json
python - "$work/heldout.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
iou1 = report["summary"]["evaluate"]["regions"]["periurban"]["iou1"][0]
print(f"IoU1 on the held-out style periurban: {iou1:.3f} (target >= 0.5)")
PY

rm -rf "$repo/src/stmap/data/demo_bundle"
cp -r run/bundle "$repo/src/stmap/data/demo_bundle"
cp heldout.json "$repo/src/stmap/data/demo_bundle_evaluation.json"
echo "demo bundle written to $repo/src/stmap/data/demo_bundle"
