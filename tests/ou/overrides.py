"""Hydra overrides shared by the OU tests and ou_probe.py (which imports this by path)."""

CPU_TRAIN = (
    "--config-name=unlearn.yaml",
    "experiment=unlearn/tofu/asu_cpu",
    "trainer.args.per_device_train_batch_size=2",
    "trainer.args.logging_steps=1",
)

# ASU_IDK's paper-style experiment (configs/experiment/unlearn/tofu/asu_idk.yaml) on a CPU with SmolLM2
IDK_ON_CPU = (
    "model=SmolLM2-135M-Instruct", "forget_split=forget01", "retain_split=retain99", "holdout_split=holdout01",
    "trainer.args.optim=adamw_torch", "trainer.args.bf16=false", "trainer.args.warmup_epochs=0",
    "trainer.args.eval_strategy=no", "trainer.args.eval_on_start=false", "trainer.args.do_eval=false",
    "trainer.args.gradient_accumulation_steps=1",
)
