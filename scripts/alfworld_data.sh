#!/usr/bin/env bash
# Make a full ALFWorld data folder from the offline copy in ../shared/alfworld: unpack the train split
# (942 MB) and link the valid splits beside it. Then point the code at it:
#   bash scripts/alfworld_data.sh ~/alfw && export ALFWORLD_DATA=~/alfw
set -euo pipefail
DEST="${1:?usage: scripts/alfworld_data.sh DEST_FOLDER}"
SRC="${ALFWORLD_SOURCE:-$(cd "$(dirname "$0")/.." && pwd)/../shared/alfworld}"
[ -f "$SRC/json_2.1.1_train.tar.xz" ] || { echo "no $SRC/json_2.1.1_train.tar.xz (set ALFWORLD_SOURCE)" >&2; exit 1; }
SRC="$(cd "$SRC" && pwd)"
mkdir -p "$DEST"
[ -d "$DEST/json_2.1.1/train" ] || tar -xJf "$SRC/json_2.1.1_train.tar.xz" -C "$DEST"
for split in valid_seen valid_unseen valid_train; do
    ln -sfn "$SRC/json_2.1.1/$split" "$DEST/json_2.1.1/$split"
done
echo "ALFWorld data ready: export ALFWORLD_DATA=$(cd "$DEST" && pwd)"
