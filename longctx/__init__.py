"""longctx: extend the context of RoPE language models and prove it worked."""

__version__ = "0.1.0"
