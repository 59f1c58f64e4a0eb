"""Fine-tuning at the original context length after a rope patch (`finetune.finetune(args)`; `recipes/finetune.py`
and `python -m longctx.train.finetune` launch it).

finetune    -- the entry point: checks before any weights load, accelerate setup, train, export; the CLI
args        -- dataclasses for every knob, YAML + flags
data        -- corpora, packing with per-document positions and no cross-document attention
pose        -- PoSE position skips (train at the original length, see positions up to a target)
retrieval_mix -- synthetic passkey and copy documents mixed into the training text
flops       -- MFU: PaLM's FLOPs-per-token formula and peak FLOP/s table
model       -- load / patch / LoRA-wrap the model, reject bad requests early
loop        -- the accelerate training loop, split into its steps
callbacks   -- on_step / on_save / on_end hooks; the loop's own log (train_log.jsonl, tracker, progress bar)
checkpoints -- atomic, resumable checkpoints, loaded without unpickling code
export      -- adapter / merged / full checkpoint, model card
configs/, accelerate/ -- the shipped recipe and accelerate YAMLs (the only copies; recipes/configs holds the
                        study configs that are not shipped)
"""
