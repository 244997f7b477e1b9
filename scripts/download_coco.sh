#!/usr/bin/env bash
# COCO 2017 (train and val images, instance annotations) into data/coco in the layout configs/recipes/coco_darknet.yaml
# reads (images/train2017, images/val2017, annotations/instances_*2017.json), darknet53.conv.74 and the full
# yolov3.weights into weights/. About 19 GB of downloads. For machines with internet; never called by the tests.
# Safe to re-run: what is already there is kept.
#   bash scripts/download_coco.sh [DATA_DIR] [WEIGHTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
coco_dir="${1:-data}/coco"
weights_dir="${2:-weights}"
mkdir -p "$coco_dir/images" "$weights_dir"

fetch() {  # fetch URL FILE: download to FILE.part, then rename, so an interrupted download is never mistaken for a file
  if [[ -s "$2" ]]; then echo "have $2"; return; fi
  echo "downloading $1"
  curl -fL --retry 3 --continue-at - -o "$2.part" "$1"
  mv "$2.part" "$2"
}

for split in train2017 val2017; do
  fetch "http://images.cocodataset.org/zips/$split.zip" "$coco_dir/$split.zip"
  if [[ ! -d "$coco_dir/images/$split" ]]; then
    echo "extracting $split.zip"
    unzip -q "$coco_dir/$split.zip" -d "$coco_dir/images"
  fi
done
fetch http://images.cocodataset.org/annotations/annotations_trainval2017.zip "$coco_dir/annotations_trainval2017.zip"
if [[ ! -e "$coco_dir/annotations/instances_val2017.json" ]]; then
  unzip -q -o "$coco_dir/annotations_trainval2017.zip" -d "$coco_dir"
fi

# Sizes of the published files (a 20-byte header, then float32s): 52 and 75 convolutions of yolov3.cfg.
for spec in darknet53.conv.74:162482580 yolov3.weights:248007048; do
  name="${spec%%:*}"; expected="${spec##*:}"
  fetch "https://pjreddie.com/media/files/$name" "$weights_dir/$name"
  size=$(stat -c %s "$weights_dir/$name")
  if [[ "$size" != "$expected" ]]; then
    echo "error: $weights_dir/$name has $size bytes, expected $expected; delete it and re-run" >&2
    exit 1
  fi
done
echo "COCO in $coco_dir, weights in $weights_dir"
