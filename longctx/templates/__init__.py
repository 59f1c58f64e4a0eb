"""Jinja2 templates shipped as package data, and the one model-card writer that renders them.

`model_card.md.j2` is the README.md of every checkpoint longctx writes: a rope patch (`longctx.checkpoint`)
and a fine-tune (`longctx.train.export`) share it, so the two cards cannot drift apart. huggingface_hub's
`ModelCard` writes the YAML header, the way the Hub reads it back. `report.html.j2` is `longctx report`'s page.
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


def html_page(name: str, **context) -> str:
    """An HTML template rendered with every `{{ value }}` escaped by `html.escape` (quotes too); a value marked
    `markupsafe.Markup` is written as it is."""
    import html

    from jinja2 import Environment
    from markupsafe import Markup

    def escape(value) -> str:
        return value if isinstance(value, Markup) else html.escape(str(value))

    environment = Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, finalize=escape)
    return environment.from_string(read(name)).render(**context)
