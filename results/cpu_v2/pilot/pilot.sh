#!/usr/bin/env bash
# The pilots behind configs/experiments/cpu_v2.yaml (results/cpu_v2/README.md): two student candidates, then
# OPD at two learning rates from the chosen one. Run from the repository root with ALFWORLD_DATA set; each
# step's figures were copied here by hand (eval_results.json -> *_eval50*.json, metrics.csv -> *_train_metrics.csv).
set -euo pipefail
R=runs/cpu_v2
warm() {  # name, overrides...: a warm-up of the study's recipe with a candidate's settings
  local name=$1; shift
  sage fit --config configs/teacher/smollm2_alfworld.yaml --config configs/experiments/cpu_v2/warmup.yaml \
    --trainer.logger.init_args.save_dir $R --trainer.logger.init_args.name ${name}_warm \
    --export.dirpath $R/$name/model "$@"
}
evaluate() {  # name, model, games per split, extra args...: greedy, the fixed panels, 50 turns
  local name=$1 model=$2 games=$3; shift 3
  sage validate --config configs/teacher/eval.yaml --trainer.logger.init_args.save_dir $R \
    --trainer.logger.init_args.name ${name}_eval50 --model.student.name_or_path $model \
    --data.val_games $games --data.max_turns 50 "$@"
}
# candidate 1: the 12-layer cut, full fine-tuning, lr 1e-4, 3 rounds x 40 games (= warmup.yaml itself)
warm cut12w3
evaluate cut12w3 $R/cut12w3/model 30
# candidate 2: all 30 layers with LoRA r16 (the teacher recipe's adapter shape and lr), 1 round x 40 games
warm full30 --model.student.num_layers null --model.student.lora.r 16 --model.student.lora.alpha 32 \
  --model.student.lora.target_modules all-linear --model.student.lora.dropout 0.0 \
  --model.optimizer.init_args.lr 4e-4 --trainer.max_epochs 1
evaluate full30 $R/full30/model 12
# OPD from candidate 1 at two learning rates (one thread each, side by side), the matrix's settings, then
# half panels with the eval KL (configs/opd.yaml loads the teacher)
opd() {  # lr, epochs
  OMP_NUM_THREADS=1 sage fit --config configs/opd.yaml --trainer.logger.init_args.save_dir $R \
    --trainer.logger.init_args.name lr_$1 --model.student.name_or_path $R/cut12w3/model \
    --model.student.num_layers null --model.optimizer.init_args.lr $1 --data.train_games 8 \
    --data.max_turns 50 --data.samples_per_step 1 --checkpoint.every_n_steps 8 --trainer.max_epochs $2 \
    --trainer.check_val_every_n_epoch 100 --trainer.precision bf16-mixed
  OMP_NUM_THREADS=1 sage validate --config configs/opd.yaml --trainer.logger.init_args.save_dir $R \
    --trainer.logger.init_args.name lr_$1_eval --model.student.name_or_path $R/cut12w3/model \
    --model.student.num_layers null --data.val_panel true --data.val_games 30 --data.max_turns 50 \
    --trainer.precision bf16-mixed --ckpt_path $R/lr_$1/version_0/checkpoints/last.ckpt
}
opd 1e-4 6 & opd 3e-5 5; wait
