#!/usr/bin/env bash
# Make a full ALFWorld data folder (json_2.1.1/{train,valid_seen,valid_unseen}) and print the
# ALFWORLD_DATA to export. Two sources:
#   ALFWORLD_SOURCE=/path/to/copy  a local copy holding json_2.1.1_train.tar.xz and json_2.1.1/valid_*
#                                  (unpacks the train split, 942 MB, and links the valid splits)
#   (unset)                        `alfworld-download` (the alfworld package's own downloader; needs network)
#   bash scripts/alfworld_data.sh ~/alfw && export ALFWORLD_DATA=~/alfw
set -euo pipefail
DEST="${1:?usage: scripts/alfworld_data.sh DEST_FOLDER}"
mkdir -p "$DEST"
if [ -z "${ALFWORLD_SOURCE:-}" ]; then
    ALFWORLD_DATA="$DEST" alfworld-download
    echo "ALFWorld data ready: export ALFWORLD_DATA=$(cd "$DEST" && pwd)"
    exit 0
fi
SRC="$(cd "$ALFWORLD_SOURCE" && pwd)"
[ -f "$SRC/json_2.1.1_train.tar.xz" ] || { echo "no $SRC/json_2.1.1_train.tar.xz in ALFWORLD_SOURCE" >&2; exit 1; }
[ -d "$DEST/json_2.1.1/train" ] || tar -xJf "$SRC/json_2.1.1_train.tar.xz" -C "$DEST"
for split in valid_seen valid_unseen valid_train; do
    [ -d "$SRC/json_2.1.1/$split" ] && ln -sfn "$SRC/json_2.1.1/$split" "$DEST/json_2.1.1/$split"
done
echo "ALFWorld data ready: export ALFWORLD_DATA=$(cd "$DEST" && pwd)"
