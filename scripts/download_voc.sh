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

fetch() {  # fetch URL FILE: download to FILE.part, then rename, so an interrupted download is never mistaken for a file
  if [[ -s "$2" ]]; then echo "have $2"; return; fi
  echo "downloading $1"
  curl -fL --retry 3 --continue-at - -o "$2.part" "$1"
  mv "$2.part" "$2"
}

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
# The 52 convolutions of Darknet-53 after a 20-byte header: anything else is a broken download.
size=$(stat -c %s "$weights_dir/darknet53.conv.74")
if [[ "$size" != 162482580 ]]; then
  echo "error: $weights_dir/darknet53.conv.74 has $size bytes, expected 162482580; delete it and re-run" >&2
  exit 1
fi
echo "VOC in $data_dir/VOCdevkit, backbone in $weights_dir/darknet53.conv.74"
