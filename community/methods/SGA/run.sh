#!/bin/bash
# Smoothed Gradient Ascent (SGA) through OpenUnlearning, with asu-plugin's trainer (trainer=SGA).
# Run from the root of an OpenUnlearning checkout with asu-plugin installed (pip install -e <asu-plugin>),
# after `python setup_data.py --eval_logs` (OU's published retain-model logs -> saves/eval/).
#
#   bash community/methods/SGA/run.sh            # everything, on GPU 0 (CUDA_VISIBLE_DEVICES to change)
#   DRY_RUN=1 bash community/methods/SGA/run.sh  # print every command instead (one per line)
#   SGA_RATES="-1.0 -0.5 -0.2" bash community/methods/SGA/run.sh   # a grid over the smoothing rate r
#
# The paper's r, K and embedding were not available to us (see README.md). Its recipe for r is a grid
# (after estimating the sign of the optimal r*): SGA_RATES runs one; the default is trainer/SGA.yaml's
# r = -0.5 (negative: descent on the normal rows), K = 3 (two nearest retain rows per forget row,
# embedded with the model being unlearned).
# Everything else is OU's own experiment for GradAscent: TOFU on OU's Llama-3.2-1B-Instruct target
# (lr 1e-5, 10 epochs, effective batch 32, 1 warm-up epoch), MUSE-News on MUSE's Llama-2-7b target
# (lr 1e-5, 10 epochs, constant schedule). Each run is followed by OU's evaluator with OU's retain logs.
set -euo pipefail

run() {
    if [[ -n "${DRY_RUN:-}" ]]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

model=Llama-3.2-1B-Instruct
K=3
read -r -a rates <<< "${SGA_RATES:--0.5}"
forget_retain_holdout=(
    "forget01 retain99 holdout01"
    "forget05 retain95 holdout05"
    "forget10 retain90 holdout10"
)

for split in "${forget_retain_holdout[@]}"; do
    read -r forget_split retain_split holdout_split <<< "${split}"
    retain_logs=saves/eval/tofu_${model}_${retain_split}/TOFU_EVAL.json
    for r in "${rates[@]}"; do
        task_name=tofu_${model}_${forget_split}_SGA_K${K}_r${r}

        run python src/train.py --config-name=unlearn.yaml \
            experiment=unlearn/tofu/default trainer=SGA \
            trainer.method_args.r=${r} trainer.method_args.K=${K} trainer.method_args.normal=similar \
            model=${model} \
            model.model_args.pretrained_model_name_or_path=open-unlearning/tofu_${model}_full \
            forget_split=${forget_split} retain_split=${retain_split} holdout_split=${holdout_split} \
            retain_logs_path=${retain_logs} \
            trainer.args.eval_strategy=no trainer.args.eval_on_start=false \
            task_name=${task_name}

        run python src/eval.py \
            experiment=eval/tofu/default.yaml \
            model=${model} \
            forget_split=${forget_split} holdout_split=${holdout_split} \
            model.model_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
            model.tokenizer_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
            retain_logs_path=${retain_logs} \
            paths.output_dir=saves/unlearn/${task_name}/evals \
            task_name=${task_name}
    done
done

retain_logs=saves/eval/muse_Llama-2-7b-hf_News_retrain/MUSE_EVAL.json
for r in "${rates[@]}"; do
    task_name=muse_Llama-2-7b-hf_News_SGA_K${K}_r${r}

    run python src/train.py --config-name=unlearn.yaml \
        experiment=unlearn/muse/default data_split=News trainer=SGA \
        trainer.method_args.r=${r} trainer.method_args.K=${K} trainer.method_args.normal=similar \
        retain_logs_path=${retain_logs} \
        trainer.args.eval_strategy=no trainer.args.eval_on_start=false \
        task_name=${task_name}

    run python src/eval.py \
        experiment=eval/muse/default.yaml \
        data_split=News \
        model.model_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
        model.tokenizer_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
        retain_logs_path=${retain_logs} \
        paths.output_dir=saves/unlearn/${task_name}/evals \
        task_name=${task_name}
done
