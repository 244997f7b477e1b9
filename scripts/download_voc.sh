#!/usr/bin/env bash
# PASCAL VOC 2007 (trainval + test) and 2012 (trainval) into data/VOCdevkit, and darknet's ImageNet-trained
# Darknet-53 backbone (darknet53.conv.74) into weights/: what configs/recipes/voc0712_*.yaml read.
# About 2.9 GB of downloads. For machines with internet; never called by the tests. Safe to re-run: what is
# already there is kept.
#   bash scripts/download_voc.sh [DATA_DIR] [WEIGHTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${1:-data}"
weights_dir="${2:-weights}"
mkdir -p "$data_dir" "$weights_dir"

source scripts/download_common.sh

voc=http://host.robots.ox.ac.uk/pascal/VOC
for tar in voc2007/VOCtrainval_06-Nov-2007.tar voc2007/VOCtest_06-Nov-2007.tar voc2012/VOCtrainval_11-May-2012.tar; do
  file="$data_dir/$(basename "$tar")"
  fetch "$voc/$tar" "$file"
  marker="$data_dir/.$(basename "$tar").extracted"
  if [[ ! -e "$marker" ]]; then
    echo "extracting $file"
    tar -xf "$file" -C "$data_dir"   # each tar holds VOCdevkit/VOC20xx/...
    touch "$marker"
  fi
done

fetch https://pjreddie.com/media/files/darknet53.conv.74 "$weights_dir/darknet53.conv.74"
check_size "$weights_dir/darknet53.conv.74" 162482580   # the 52 convolutions of Darknet-53
echo "VOC in $data_dir/VOCdevkit, backbone in $weights_dir/darknet53.conv.74"
