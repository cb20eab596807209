#!/usr/bin/env bash
# Re-run every measurement in results/teacher/ (see README.md there).
#   ALFWORLD_DATA=~/alfw bash results/teacher/evaluate.sh [what ...]
#   what: teacher (the shipped teacher, 50 turns; its 30-turn figures are re-computed from the same games),
#         judge (the judge against the offline labels), zeroshot (the base model), sft (the previous teacher:
#         walkthrough SFT, trained first), expert (alfworld's hand-coded expert: the imitation ceiling)
# Each step copies its figures here as JSON; a step whose JSON exists is skipped (delete it to redo).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${SAGE_VENV:-.venv}
out=results/teacher
: "${ALFWORLD_DATA:?set ALFWORLD_DATA to the full ALFWorld data (bash scripts/alfworld_data.sh)}"
validate() {  # name, extra args...: eval_results.json + per-game records -> $out/name.json, name_games.jsonl
    local name=$1; shift
    [ -f "$out/$name.json" ] && { echo "$name: kept ($out/$name.json)"; return; }
    local root; root=$(mktemp -d)
    local t0=$SECONDS
    "$venv/bin/sage" validate --config configs/teacher/eval.yaml --trainer.enable_progress_bar false \
        --trainer.logger.init_args.save_dir "$root" "$@" | tee "$out/$name.log"
    cp "$(find "$root" -name eval_games.jsonl)" "$out/${name}_games.jsonl"
    "$venv/bin/python" - "$root" "$out/$name.json" $((SECONDS - t0)) <<'PY'
import json, pathlib, sys
src = next(pathlib.Path(sys.argv[1]).rglob("eval_results.json"))
res = json.loads(src.read_text()); res["wall_seconds"] = int(sys.argv[3])
pathlib.Path(sys.argv[2]).write_text(json.dumps(res, indent=1) + "\n")
PY
}
at30() {  # name: the 30-turn figures of a 50-turn run's games
    "$venv/bin/python" -m sage.eval_games "$out/${1}_games.jsonl" --max-turns 30 --out "$out/${1/50/30}.json" >/dev/null
}
judge() {  # name, judge_eval args...
    local name=$1; shift
    [ -f "$out/$name.json" ] && { echo "$name: kept ($out/$name.json)"; return; }
    "$venv/bin/python" -m sage.teacher.judge_eval --out "$out/$name.json" "$@"
}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(teacher judge zeroshot sft expert)
for what in "${steps[@]}"; do
  case $what in
    teacher) validate teacher_50turns --data.max_turns 50 && at30 teacher_50turns ;;
    judge) judge judge_noisy_seen --policy noisy --split valid_seen --games 30
           judge judge_sampled_unseen --policy sampled --split valid_unseen --games 30 ;;
    # the weaker models lose nearly every game, so they play every turn: the first 30 games of each
    # panel (5 per task type) keep them to ~10 min each here
    zeroshot) validate zeroshot_30turns --model.student.name_or_path smollm2-135m-instruct --data.val_games 30 ;;
    sft) [ -d runs/teacher_sft/model ] || "$venv/bin/sage" fit --config configs/teacher_sft.yaml \
             --trainer.enable_progress_bar false | tee "$out/sft_train.log"
         validate sft_30turns --model.student.name_or_path runs/teacher_sft/model --data.val_games 30 ;;
    expert) [ -f "$out/expert.json" ] || "$venv/bin/python" -m sage.teacher.expert_panel --out "$out/expert.json" ;;
    *) echo "unknown step $what (teacher judge zeroshot sft expert)" >&2; exit 2 ;;
  esac
done
