"""Fine-tuning at the original context length after a rope patch (`recipes/finetune.py` is the entry point).

args   -- dataclasses for every knob, YAML + flags
data   -- corpora, packing with per-document positions and no cross-document attention
loss   -- chunked (or Liger fused) cross-entropy from hidden states
flops  -- MFU: PaLM's FLOPs-per-token formula and peak FLOP/s table
model  -- load / patch / LoRA-wrap the model, reject bad requests early
loop   -- the accelerate training loop and atomic, resumable checkpoints
export -- adapter / merged / full checkpoint, model card
"""
