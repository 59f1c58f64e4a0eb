"""Fine-tune a rope-patched model at its ORIGINAL context length (LoRA or full), with accelerate.

    # CPU demo: SmolLM2-135M, base 1e5 -> 1e6, LoRA at 256 tokens, a few steps (a couple of minutes on 2 cores)
    accelerate launch recipes/finetune.py --config longctx/train/configs/smollm2-135m-base1e6.yaml
    python recipes/finetune.py --config longctx/train/configs/smollm2-135m-base1e6.yaml          # same, no launcher
    accelerate launch --config_file longctx/train/accelerate/cpu.yaml recipes/finetune.py \
        --config longctx/train/configs/smollm2-135m-base1e6.yaml

    # Llama-2-7B, LoRA at 4K with base 1e6, FSDP over the GPUs of one node
    accelerate launch --config_file longctx/train/accelerate/fsdp.yaml recipes/finetune.py \
        --config longctx/train/configs/llama2-7b-lora-4k.yaml --model meta-llama/Llama-2-7b-hf --base 1e6

    # Llama-3-8B, full fine-tune at 8K on H100s with DeepSpeed ZeRO-3
    accelerate launch --config_file longctx/train/accelerate/deepspeed_zero3.yaml recipes/finetune.py \
        --config longctx/train/configs/llama3-8b-full-8k.yaml

    # continue a stopped run exactly where it stopped (same data order, optimizer, RNG)
    accelerate launch recipes/finetune.py --config longctx/train/configs/smollm2-135m-base1e6.yaml --resume

Every YAML key is also a flag (`--seq-len 512` or `--seq_len 512`); flags override the YAML. `--help` lists
them. The rope patch takes the same options as `longctx patch` (--method, --base, --factor, ...); without
them the model is used as it is (already patched). Output layout: see `longctx/train/export.py`.

This script only launches: the logic is `longctx.train.finetune` (`finetune(args) -> summary`, callbacks in
`longctx.train.callbacks`), which an installed wheel also runs as `python -m longctx.train.finetune`.
"""

from longctx.train.finetune import cli, finetune  # noqa: F401  (the API, for `import`ers of this script)

if __name__ == "__main__":
    raise SystemExit(cli())
