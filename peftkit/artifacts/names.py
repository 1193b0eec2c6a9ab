"""File and folder names of peftkit's on-disk formats, spelled once."""

# adapter folder (peft's own names, so plain peft finds the files)
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"  # refused: peftkit loads safetensors only
MANIFEST = "peftkit.json"
CARD = "README.md"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"  # Trainer's checkpoints, beside the adapter folder while a run is in progress

# adapter bank
BANK_FILE = "bank.json"
GLOBAL = "global"  # the adapter trained on every row, and the folder it lives in

# export folder (peftkit export)
EXPORT_MANIFEST = "export.json"
HEAD_WEIGHTS = "head.safetensors"
HEAD_INFO = "head.json"

# compare folder (peftkit compare)
COMPARE_PLAN = "compare.json"
COMPARE_RUNS = "runs"  # runs/<id>.json: one finished run's record
COMPARE_FAILED = ".failed.json"  # runs/<id>.failed.json: why that run failed; the next compare retries it
COMPARE_LOGS = "logs"  # logs/<id>.log: each run's own output
COMPARE_COMMANDS = "commands.txt"  # every command run into the folder, one a line
COMPARE_CHARTS = "charts"  # beside report.md, which links the charts by this relative path
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
RELIABILITY_PLOT = "reliability.png"  # held-out calibration before/after (peftkit.tasks.calibration)
