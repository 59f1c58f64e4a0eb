"""Jinja2 templates shipped as package data, and the one model-card writer that renders them.

`model_card.md.j2` is the README.md of every checkpoint longctx writes: a rope patch (`longctx.checkpoint`)
and a fine-tune (`longctx.train.export`) share it, so the two cards cannot drift apart. huggingface_hub's
`ModelCard` writes the YAML header, the way the Hub reads it back.
"""

from __future__ import annotations

from importlib import resources


def read(name: str) -> str:
    """A template's text; through importlib.resources, so a wheel or a zip import finds it too."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def model_card(name: str, *, tags: list[str], library_name: str | None = None, **context) -> str:
    """README.md text: `patch=record` (longctx_patch.json's record, `files=` its files line) or
    `finetune={...}` (see longctx.train.export.model_card)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name=library_name, tags=list(tags))
    card = ModelCard.from_template(data, template_str=read("model_card.md.j2"), name=name, **context)
    return str(card).rstrip("\n") + "\n"  # jinja drops the template's final newline
