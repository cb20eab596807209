#!/usr/bin/env bash
# Re-run every measurement in results/teacher/ (see README.md there): the teacher on the fixed panels at
# 30 and 50 turns, the zero-shot base model, and the judge against the offline labels.
#   ALFWORLD_DATA=~/alfw bash results/teacher/evaluate.sh [what ...]    what: teacher30 judge teacher50 zeroshot
# Each step copies its figures here as JSON; a step whose JSON exists is skipped (delete it to redo).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${SAGE_VENV:-.venv}
out=results/teacher
: "${ALFWORLD_DATA:?set ALFWORLD_DATA to the full ALFWorld data (bash scripts/alfworld_data.sh)}"
validate() {  # name, extra args...
    local name=$1; shift
    [ -f "$out/$name.json" ] && { echo "$name: kept ($out/$name.json)"; return; }
    local root; root=$(mktemp -d)
    local t0=$SECONDS
    "$venv/bin/sage" validate --config configs/teacher/eval.yaml --trainer.enable_progress_bar false \
        --trainer.logger.init_args.save_dir "$root" "$@" | tee "$out/$name.log"
    python3 - "$root" "$out/$name.json" $((SECONDS - t0)) <<'PY'
import json, pathlib, sys
src = next(pathlib.Path(sys.argv[1]).rglob("eval_results.json"))
res = json.loads(src.read_text()); res["wall_seconds"] = int(sys.argv[3])
pathlib.Path(sys.argv[2]).write_text(json.dumps(res, indent=1) + "\n")
PY
}
judge() {  # name, judge_eval args...
    local name=$1; shift
    [ -f "$out/$name.json" ] && { echo "$name: kept ($out/$name.json)"; return; }
    "$venv/bin/python" -m sage.teacher.judge_eval --out "$out/$name.json" "$@"
}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(teacher30 judge teacher50 zeroshot)
for what in "${steps[@]}"; do
  case $what in
    teacher30) validate teacher_30turns ;;
    judge) judge judge_noisy_seen --policy noisy --split valid_seen --games 30
           judge judge_sampled_unseen --policy sampled --split valid_unseen --games 30 ;;
    teacher50) validate teacher_50turns --data.max_turns 50 ;;
    zeroshot) validate zeroshot_30turns --model.student.name_or_path smollm2-135m-instruct ;;
    *) echo "unknown step $what (teacher30 judge teacher50 zeroshot)" >&2; exit 2 ;;
  esac
done
