"""Training, stage by stage: a run's plan (`plan`), the model it trains (`model_setup`), peftkit's Trainer
(`hf_trainer`), one adapter end to end (`loop.train`), a bank of segment adapters (`segments.train_bank`) and the
processes of a torchrun launch (`distributed`).

Nothing is imported here, so reading a run's plan (`peftkit doctor`) loads no Trainer.
"""
