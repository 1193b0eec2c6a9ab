"""What peftkit writes to disk and reads back: one typed model per format, one set of file names, one atomic writer.

    runs/intent-adalora/                  an adapter folder (`peftkit train`), read by peftkit.load
      adapter_config.json                 method config (peft's own for lora/adalora/prefix, so plain peft loads it)
      adapter_model.safetensors           adapter + task-head weights; safetensors only, pickle files are refused
      peftkit.json                        `Manifest`: base identity (sha256 of its weights), task, labels in order,
                                          resolved run config, eval metrics, data summary, package versions
      README.md                           model card (`cards.model_card`)
      loss.png                            training loss curve (`cards.write_loss_curve`)

    banks/reviews/                        an adapter bank (`peftkit train --segment-column`, `build_bank`)
      bank.json                           `BankFile`: segment -> adapter, fallback, base identity, metrics
      global/ hotel/ book/ ...            adapter folders

Every file and folder is written complete under a temporary name and renamed into place (`io`), so a crash or a
kill never leaves half of one. This package sits below everything else in peftkit: it imports only `peftkit.errors`.
"""
