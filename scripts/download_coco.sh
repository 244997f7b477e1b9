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

source scripts/download_common.sh

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

fetch https://pjreddie.com/media/files/darknet53.conv.74 "$weights_dir/darknet53.conv.74"
check_size "$weights_dir/darknet53.conv.74" 162482580   # the 52 convolutions of Darknet-53
fetch https://pjreddie.com/media/files/yolov3.weights "$weights_dir/yolov3.weights"
check_size "$weights_dir/yolov3.weights" 248007048      # all 75 convolutions of yolov3.cfg, 80 classes
echo "COCO in $coco_dir, weights in $weights_dir"
