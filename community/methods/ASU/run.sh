#!/bin/bash
# Attention Smoothing Unlearning (ASU) with the paper's settings, through OpenUnlearning.
# Run from the root of an OpenUnlearning checkout with asu-plugin installed (pip install -e <asu-plugin>),
# after `python setup_data.py --eval_logs --idk` (OU's published retain-model logs -> saves/eval/).
#
#   bash community/methods/ASU/run.sh            # everything, on GPU 0 (CUDA_VISIBLE_DEVICES to change)
#   DRY_RUN=1 bash community/methods/ASU/run.sh  # print every command instead (one per line)
#
# TOFU: ASU_KL, tau 2.3, gamma 0.1, alpha 1, lr 1e-5, 5 epochs, effective batch 32 (4 x 8 on one GPU),
# paged AdamW, weight decay 0.01, 1 warm-up epoch (configs/experiment/unlearn/tofu/asu.yaml), on OU's
# TOFU target models (open-unlearning/tofu_<model>_full), forget01/05/10.
# MUSE: lr 1e-5, 10 epochs, constant schedule; News tau 2.0 gamma 0.35, Books tau 2.35 gamma 0.001
# (configs/experiment/unlearn/muse/asu.yaml, selected by data_split), on MUSE's target models.
# forget_quality / privleak use OU's published retain logs (retain_logs_path), as OU's own scripts do.
set -euo pipefail

run() {
    if [[ -n "${DRY_RUN:-}" ]]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

models=(
    "Llama-2-7b-chat-hf"
    "Llama-3.2-1B-Instruct"
)
forget_retain_holdout=(
    "forget01 retain99 holdout01"
    "forget05 retain95 holdout05"
    "forget10 retain90 holdout10"
)

for model in "${models[@]}"; do
    for split in "${forget_retain_holdout[@]}"; do
        read -r forget_split retain_split holdout_split <<< "${split}"
        task_name=tofu_${model}_${forget_split}_ASU_KL
        retain_logs=saves/eval/tofu_${model}_${retain_split}/TOFU_EVAL.json

        run python src/train.py --config-name=unlearn.yaml \
            experiment=unlearn/tofu/asu trainer=ASU_KL \
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

for data_split in News Books; do
    task_name=muse_Llama-2-7b-hf_${data_split}_ASU_KL
    retain_logs=saves/eval/muse_Llama-2-7b-hf_${data_split}_retrain/MUSE_EVAL.json

    run python src/train.py --config-name=unlearn.yaml \
        experiment=unlearn/muse/asu data_split=${data_split} \
        retain_logs_path=${retain_logs} \
        trainer.args.eval_strategy=no trainer.args.eval_on_start=false \
        task_name=${task_name}

    run python src/eval.py \
        experiment=eval/muse/default.yaml \
        data_split=${data_split} \
        model.model_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
        model.tokenizer_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
        retain_logs_path=${retain_logs} \
        paths.output_dir=saves/unlearn/${task_name}/evals \
        task_name=${task_name}
done
