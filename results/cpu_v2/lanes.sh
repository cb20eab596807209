#!/usr/bin/env bash
# The study as run here: two lanes side by side on the 2 cores, one thread each (README.md, "Commands").
#   ALFWORLD_DATA=~/alfw bash results/cpu_v2/lanes.sh A > lane_A.log 2>&1 &
#   ALFWORLD_DATA=~/alfw bash results/cpu_v2/lanes.sh B > lane_B.log 2>&1 &
# Rerunning a lane skips finished runs and resumes cut ones from their checkpoints in runs/ (outside git: a
# run cut by a session's end resumes if runs/ is still there, else starts over). A failed run does not stop its lane
# (the runner says which failed; rerun to retry). SFT on the teacher's episodes runs in lane A after its
# seed-0 cells (moved from lane B on 2026-12-01): its first run builds the teacher pool the seeds draw from,
# which lives in git (results/cpu_v2/teacher_pool/), so a build cut by a session's end resumes from its
# committed .partial; a run started meanwhile by another process waits for it.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
SAGE=${SAGE:-.venv/bin/sage}
M=("$SAGE" experiment --matrix configs/experiments/cpu_v2.yaml --commit)
T=(opd sage_opd gkd_jsd sft_expert sage_no_gate sage_no_confidence sage_no_norm)
case "${1:-}" in
  A)
    "${M[@]}" --seeds 0 --only "${T[@]}"
    "${M[@]}" --seeds 0 1 2 --only sft_teacher
    "${M[@]}" --seeds 2 --only sft_expert
    "${M[@]}" --seeds 0 --only opd_long
    ;;
  B)
    "${M[@]}" --only student_init teacher
    "${M[@]}" --seeds 1 --only "${T[@]}"
    "${M[@]}" --seeds 2 --only opd sage_opd gkd_jsd
    ;;
  *)
    echo "usage: bash results/cpu_v2/lanes.sh A|B" >&2
    exit 2
    ;;
esac
