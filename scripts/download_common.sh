# Sourced by download_voc.sh and download_coco.sh.

# fetch URL FILE: download to FILE.part, then rename, so an interrupted download is never mistaken for a file.
fetch() {
  if [[ -s "$2" ]]; then echo "have $2"; return; fi
  echo "downloading $1"
  curl -fL --retry 3 --continue-at - -o "$2.part" "$1"
  mv "$2.part" "$2"
}

# check_size FILE BYTES: a darknet weights file has a known size (a 20-byte header, then float32s); anything else
# is a broken download.
check_size() {
  local size
  size=$(stat -c %s "$1")
  if [[ "$size" != "$2" ]]; then
    echo "error: $1 has $size bytes, expected $2; delete it and re-run" >&2
    exit 1
  fi
}
