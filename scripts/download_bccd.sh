#!/usr/bin/env bash
# BCCD (blood-cell detection, VOC layout, classes RBC, WBC, Platelets) into data/bccd: the BCCD/ folder and the
# LICENSE of github.com/Shenggan/BCCD_Dataset at a pinned commit, what configs/bccd.yaml reads with
# --set data.root=data/bccd. About 9 MB. For machines with internet; never called by the tests. Safe to re-run:
# what is already there is kept, and checked again.
#   bash scripts/download_bccd.sh [DATA_DIR]
#
# Checksums: GitHub does not promise byte-identical archives over time, so the files are checked, not the
# archive. The sha256 of every file (BCCD/** and LICENSE, 733 files) is written to DATA_DIR/bccd/SHA256SUMS in
# sha256sum's format, sorted by path (C locale); the sha256 of that list is pinned below: one value that covers
# the name and the bytes of every file. It was computed from a copy whose git blob ids all equal the pinned
# commit's tree. `sha256sum -c SHA256SUMS` in that folder re-checks the files one by one later.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${1:-data}"
dest="$data_dir/bccd"
commit=d272fb14cdff6e473fafeeeba32aba5f560e9e43   # "Merge pull request #6", 2019-11-21
files_expected=733                                   # 364 images, 364 annotations, 4 image lists, LICENSE
manifest_sha256=b5fa7e32e92e3cfdbc59cdfbc09b4ff959804ac2a06c7ed59f89833c1fd97879
mkdir -p "$data_dir"

source scripts/download_common.sh

# sha256sum's output format, also where only shasum exists (macOS)
if command -v sha256sum > /dev/null; then sha256=(sha256sum); else sha256=(shasum -a 256); fi

archive="$data_dir/BCCD_Dataset-$commit.tar.gz"
fetch "https://github.com/Shenggan/BCCD_Dataset/archive/$commit.tar.gz" "$archive"
if [[ ! -d "$dest/BCCD" ]]; then
  echo "extracting $archive"
  rm -rf "$dest.part" && mkdir -p "$dest.part"   # extracted beside, renamed when complete
  tar -xzf "$archive" -C "$dest.part" --strip-components=1 "BCCD_Dataset-$commit/BCCD" "BCCD_Dataset-$commit/LICENSE"
  rm -rf "$dest" && mv "$dest.part" "$dest"
fi

(cd "$dest" && find BCCD LICENSE -type f | LC_ALL=C sort | tr '\n' '\0' | xargs -0 "${sha256[@]}") \
  > "$dest/SHA256SUMS.part"
mv "$dest/SHA256SUMS.part" "$dest/SHA256SUMS"
files=$(wc -l < "$dest/SHA256SUMS" | tr -d ' ')
got=$("${sha256[@]}" < "$dest/SHA256SUMS" | cut -d' ' -f1)
if [[ "$files" != "$files_expected" || "$got" != "$manifest_sha256" ]]; then
  echo "error: the files in $dest are not those of BCCD_Dataset at $commit: $files files whose list" \
       "($dest/SHA256SUMS) has sha256 $got; expected $files_expected files and $manifest_sha256." \
       "Delete $dest and $archive and re-run" >&2
  exit 1
fi
echo "BCCD in $dest ($files files, checksums verified); train with:"
echo "  python train.py --config configs/bccd.yaml --set data.root=$dest"
