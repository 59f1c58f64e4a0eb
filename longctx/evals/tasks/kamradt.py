"""`longctx eval kamradt`: Greg Kamradt's needle in a haystack (gkamradt/LLMTest_NeedleInAHaystack) on any HF
checkpoint, graded offline.

    longctx eval kamradt --model DIR --lengths 2k,4k,8k,16k --depths 0:1:5 --haystack-dir ../shared/data/books \\
        [--chat-template auto|on|off] [--judge my_module:judge] [--samples 1] [--past-context]

His needle, question and prompts, quoted from his repository (main at 7b90d28) in
`longctx.evals.tasks.kamradt_prompts`: `needlehaystack/run.py` (needle, question, `final_context_length_buffer`
200), `providers/openai.py` (system message and the messages used with a chat template),
`providers/Anthropic_prompt.txt` (the plain-text prompt used without one) and `llm_needle_haystack_tester.py`
(needle placement). One cell is one (length, depth): `samples` prompts (his protocol: 1), each decoded greedily
and graded by the needle's key phrases (`KEY_PHRASES`: "sandwich" and "Dolores Park"; a sample's score is the
fraction present in the answer, ignoring case). The cell's score is the mean; its Wilson 95% interval counts each
answer as one trial scored by that fraction (`base.answer_counts`: two phrases of one answer are not independent).
The report draws his heatmap (`longctx.evals.report.plots.kamradt_heatmap`:
length on x, depth on y, his #F0496E → #EBB839 → #0CD79F colours) and a depth × length table per model
(`kamradt_report`).

Where we differ from his code, on purpose:
- Haystack: the `.txt` books of a folder the user names (`../shared/data/books` in our studies: public-domain
  Gutenberg books, their license header and footer left out), in name order, read from the start and
  concatenated as he concatenates Paul Graham's essays (his haystack, not redistributable here). Too little text
  for a length is refused; he repeats the essays.
- Length: his L − 200 tokens hold haystack + needle (his tokenizer: tiktoken or Claude's), with system message and
  question on top and up to 300 answer tokens. Here the whole prompt (chat wrapper, system message, haystack,
  needle, question) is exactly L − `buffer` tokens of the model's own tokenizer, and decoding stops after at most
  `buffer` (200) tokens, so prompt + answer never pass L.
- Needle placement: his depth logic (insertion at int(haystack tokens × depth), walked back to a sentence end; the
  start when there is none), with sentence ends found in the text (`data.sentence_pieces`: . ! or ?, not "Mr." or
  "..."), not by looking for the "." token; at 100% the needle goes after the last sentence end too (he appends it
  after the cut haystack, which may end mid-sentence).
- Grading: key phrases, no LLM judge by default (his is GPT-3.5 scoring 1-10). `--judge module:function` plugs one
  in: `function(response, *, question, needle) -> float in [0, 1]` (or bool); the cell's score is then the mean
  of the judge's scores (the interval's trial scores too), the key-phrase score is kept beside it, and
  decoding runs to EOS or the budget (a judge reads the whole answer).
- Samples ≥ 2 per cell (`--samples`): sample 0 is his haystack (from the start); sample i starts at a seeded
  sentence start in the first half of the books, the same for every depth of a length.

Speed, grades unchanged (`ruler_decode.generate`): prompts of one run share the text before their needle, so they are
taken in token order over one KV cache; the prompts of one length decode as one batch (`batch`); decoding stops at
EOS, the budget, or (without a judge) once every key phrase is present, since more text cannot lower the key-phrase
grade (the journal says `stopped: found`).
Every sample is journaled when done (prompt hash, needle position, generated text, score), so a rerun resumes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from longctx.errors import UsageError
from longctx.evals.run.results import cell_key
from longctx.evals.tasks import ruler_decode
from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.base import DEPTHS_HELP, RETRIEVAL, AnswerScoredTask, Figure, mean_by_length
from longctx.evals.tasks.kamradt_prompts import (
    BUFFER,
    KEY_PHRASES,
    NEEDLE,
    PLAIN_PROMPT,
    QUESTION,
    QUESTION_TURN,
    SYSTEM,
    Frame,
    Haystack,
    build_sample,
    read_books,
)
from longctx.evals.tasks.ruler_prompts import Sample
from longctx.evals.tasks.scoring import prefix_sharing_allowed, trial_seed, wilson_interval

# viz/CreateVizFromLLMTesting.ipynb: LinearSegmentedColormap.from_list("custom_cmap", [...])
COLOURS = ("#F0496E", "#EBB839", "#0CD79F")
PROTOCOL = 1  # in every key: bump when prompts change, so old cells are recomputed, not mixed in
DEFAULT_DEPTHS = "0:1:5"  # his default is 35 depths (and 35 lengths from 1K to 16K)


@dataclass
class Config:
    """What a Kamradt run does; each field is also a key of `tasks.kamradt` in a suite YAML and a flag."""

    lengths: list[int]                    # L: prompt + buffer, exactly
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # needle depth, 0 = start
    samples: int = 1                      # prompts per (length, depth); his protocol: 1
    haystack_dir: str | None = None       # folder of .txt books (his: Paul Graham's essays)
    chat_template: str = "auto"           # auto, on or off
    buffer: int = BUFFER                  # tokens kept off the prompt for the answer; the decoding budget
    judge: str | None = None              # "module:function" grading answers instead of the key phrases
    seed: int = 0
    share_prefix: bool = True             # reuse the KV cache of the text prompts share
    stop_when_found: bool = True          # stop decoding once every key phrase is present (same grade)
    batch: int = ruler_decode.BATCH       # samples of one length decoded together (1: one at a time)
    past_context: bool = False            # allow L above the context the model's config claims

    def __post_init__(self):
        if self.chat_template not in ("auto", "on", "off"):
            raise UsageError(f"--chat-template {self.chat_template!r}: use auto, on or off")
        for name in ("samples", "buffer", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name} must be a whole number ≥ 1")
        if not self.haystack_dir:
            raise UsageError("kamradt needs --haystack-dir: a folder of .txt books, e.g. ../shared/data/books (his "
                             "haystack is Paul Graham's essays)")
        if self.judge is not None:
            load_judge(self.judge)


def load_judge(spec: str):
    """The callable named by 'package.module:function' (importable from the current Python path)."""
    module_name, _, name = str(spec).partition(":")
    if not module_name or not name:
        raise UsageError(f"--judge {spec!r}: give module:function, e.g. my_judges:gpt_judge")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--judge {spec!r}: cannot import {module_name} ({exc})") from None
    judge = getattr(module, name, None)
    if not callable(judge):
        raise UsageError(f"--judge {spec!r}: {module_name} has no function {name!r}")
    return judge


def key_phrase_score(text: str) -> tuple[int, float]:
    """(key phrases found, fraction found) in a generated answer, ignoring case (RULER's postprocessing)."""
    found = rt.found(text, list(KEY_PHRASES))
    return found, found / len(KEY_PHRASES)


def judge_score(judge, spec: str, text: str) -> float:
    value = judge(text, question=QUESTION, needle=NEEDLE.strip())
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"--judge {spec}: returned {value!r}; a judge returns a number in [0, 1] or a bool")
    return float(value)


def summarize(samples: list[dict], judge: str | None) -> dict:
    """The cell's score (mean over samples), the key phrases found / asked (judge: samples scored >= 0.5) and a
    Wilson interval over its answers (`base.answer_counts`: the phrases of one answer are not independent)."""
    phrases = sum(s["key_phrase_score"] for s in samples) / len(samples)
    if judge:
        scores = [s["judge_score"] for s in samples]
        hits, total = sum(v >= 0.5 for v in scores), len(scores)
        score = sum(scores) / total
    else:
        hits, total, score = sum(s["found"] for s in samples), len(KEY_PHRASES) * len(samples), phrases
    return {"score": score, "key_phrase_score": phrases, "found": hits, "refs": total,
            "score_ci95": wilson_interval(score * len(samples), len(samples))}


class Kamradt(AnswerScoredTask):
    name, label, metric, order = "kamradt", "Kamradt NIAH", "Kamradt score", 4
    kind, value_key = RETRIEVAL, "score"  # Wilson intervals count answers (`base.answer_counts`)
    help = "Greg Kamradt's needle in a haystack: his needle, question and prompt, lengths × depths, his heatmap"
    Config = Config
    colours = COLOURS  # his heatmap's red → yellow → green
    heatmap_caption = ("Kamradt needle in a haystack: score (share of the needle's key phrases in the answer, or "
                       "the judge's score) by context length (x) and needle depth (y, 0% = start), in his layout and "
                       "colours.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--depths", default=DEFAULT_DEPTHS, help=f"{DEPTHS_HELP} (default: {DEFAULT_DEPTHS})")
        parser.add_argument("--samples", type=int, default=1, help="prompts per (length, depth) (default: 1, his)")
        parser.add_argument("--haystack-dir", dest="haystack_dir",
                            help="folder of .txt books for the haystack (his: Paul Graham's essays)")
        parser.add_argument("--chat-template", dest="chat_template", choices=("auto", "on", "off"), default="auto",
                            help="his system/context/question messages through the tokenizer's chat template: auto "
                                 "(when it has one), on, off (his plain-text prompt)")
        parser.add_argument("--buffer", type=int, default=BUFFER, help="tokens kept off the prompt for the answer, "
                            f"and the decoding budget (default {BUFFER})")
        parser.add_argument("--judge", help="module:function grading each answer instead of the key phrases: "
                            "function(response, *, question, needle) -> number in [0, 1] or bool")
        parser.add_argument("--no-prefix-cache", dest="share_prefix", action="store_false",
                            help="a fresh prefill for every sample instead of reusing the KV cache of shared text")
        parser.add_argument("--full-generation", dest="stop_when_found", action="store_false",
                            help="decode to EOS or the budget (default: stop once every key phrase is present)")
        parser.add_argument("--batch", type=int, default=ruler_decode.BATCH,
                            help=f"samples of one length decoded together, greedy and graded alike (default: "
                                 f"{ruler_decode.BATCH}; 1: one at a time)")
        parser.add_argument("--past-context", dest="past_context", action="store_true",
                            help="allow lengths above the context the model's config claims")

    def key(self, cfg: Config, length: int, depth: float, frame: Frame, haystack: str, samples: bool = True) -> str:
        fields = {"length": length, "depth": depth, **({"samples": cfg.samples} if samples else {}),
                  "chat": "on" if frame.chat else "off", "haystack": haystack, "buffer": cfg.buffer,
                  "judge": cfg.judge, "seed": cfg.seed, "protocol": PROTOCOL}
        return cell_key(self.name, **fields)

    def seed(self, cfg: Config, length: int, index: int) -> int:
        return trial_seed(cfg.seed, self.name, length, index)  # one haystack per (length, sample): depths share it

    def prepare(self, tokenizer, cfg: Config) -> tuple[Frame, Haystack]:
        """The frame around the haystack and the books' haystack (bad input fails here)."""
        frame = Frame(tokenizer, cfg.chat_template)
        return frame, Haystack(read_books(cfg.haystack_dir), frame)

    def samples(self, cfg: Config, hay: Haystack, length: int, depth: float, indexes=None) -> list[Sample]:
        """The prompts of one cell as `run` builds them (the bench's baseline decodes exactly these)."""
        return [build_sample(hay, length, depth, i, self.seed(cfg, length, i), cfg.buffer)
                for i in (range(cfg.samples) if indexes is None else indexes)]

    def run(self, model, tokenizer, cfg: Config, writer) -> list[dict]:
        from tqdm.auto import tqdm

        rope = writer.model_rope(model)
        if not cfg.past_context and max(cfg.lengths) > rope.claimed_length:
            raise UsageError(f"length {max(cfg.lengths)} is above the {rope.claimed_length} tokens this model's "
                             "config claims: pass --past-context to evaluate past it")
        frame, hay = self.prepare(tokenizer, cfg)
        judge = load_judge(cfg.judge) if cfg.judge else None
        cells = [(length, depth) for length in cfg.lengths for depth in cfg.depths]
        keys = {cell: self.key(cfg, *cell, frame, hay.label) for cell in cells}
        journals = {cell: self.key(cfg, *cell, frame, hay.label, samples=False) for cell in cells}
        todo = []  # every missing sample is built first: bad input fails before any model work or line written
        for cell in cells:
            if not writer.done(keys[cell]):
                have = writer.samples(journals[cell])
                todo += self.samples(cfg, hay, *cell, [i for i in range(cfg.samples) if i not in have])
        if not writer.world.main:  # one process does it (its samples share caches); the others wait
            writer.settle()
            return writer.cells()
        stop = cfg.stop_when_found and judge is None
        share = cfg.share_prefix and prefix_sharing_allowed(model, rope)[0]
        for cell in cells:  # samples all journaled by a run killed before it wrote their cell
            self.finish(writer, cfg, cell, keys[cell], journals[cell], frame, hay, stop)
        todo.sort(key=lambda s: (len(s.ids), s.ids))  # neighbours share the longest prefixes; a length, one batch
        bar = tqdm(total=len(todo), desc=f"{writer.dir.name} kamradt", unit="sample", disable=None)
        for sample, text, n, stopped, seconds in ruler_decode.generate(model, tokenizer, todo, share=share,
                                                                       stop_when_found=stop, batch=cfg.batch):
            found, score = key_phrase_score(text)
            record = {**sample.record(), "generated": text, "found": found, "key_phrase_score": score,
                      "tokens_generated": n, "stopped": stopped, "seconds": round(seconds, 3)}
            if judge is not None:
                record["judge_score"] = judge_score(judge, cfg.judge, text)
            cell = (sample.length, sample.draft.meta["depth"])
            writer.add_sample(journals[cell], record, unit=sample.index)
            self.finish(writer, cfg, cell, keys[cell], journals[cell], frame, hay, stop)
            bar.update(1)
        bar.close()
        writer.settle()
        return [writer.cell(keys[cell]) for cell in cells]

    def finish(self, writer, cfg: Config, cell: tuple, key: str, journal: str, frame: Frame, hay: Haystack,
               stop: bool) -> None:
        """Write the cell once every sample of it is journaled."""
        have = writer.samples(journal)
        if writer.done(key) or any(i not in have for i in range(cfg.samples)):
            return
        samples = [have[i] for i in range(cfg.samples)]
        length, depth = cell
        writer.append({"task": self.name, "key": key, "length": length, "depth": depth, "samples": cfg.samples,
                       "tokens_to_generate": cfg.buffer, "seed": cfg.seed, "haystack": hay.label,
                       "protocol": PROTOCOL, **frame.record(), "judge": cfg.judge, **summarize(samples, cfg.judge),
                       "seconds": round(sum(s.get("seconds") or 0.0 for s in samples), 3), "records": samples,
                       "stop_when_found": stop})

    def variant(self, record: dict) -> tuple:
        return (record.get("chat_template"), record.get("haystack"), record.get("judge"))

    def variant_name(self, variant: tuple) -> str:
        graded = f"judge {variant[2]}" if variant[2] else "key phrases"
        return f"chat template {variant[0]}, haystack {variant[1]}, {graded}"

    def values(self, records: list[dict]) -> dict[int, float]:
        return mean_by_length(records, self.value_key)

    def figures(self) -> list[Figure]:
        return [Figure("kamradt_heatmap.png", self.heatmap_caption, "kamradt_heatmap", self)]

    def panels(self, models) -> list[dict]:
        from longctx.evals.tasks.kamradt_report import panels

        return panels(models, self)

    def report_lines(self, models) -> list[str]:
        from longctx.evals.tasks.kamradt_report import report_lines

        return report_lines(models, self)


TASK = Kamradt()
__all__ = ["COLOURS", "Config", "Frame", "Haystack", "Kamradt", "KEY_PHRASES", "NEEDLE", "PLAIN_PROMPT",
           "QUESTION", "QUESTION_TURN", "SYSTEM", "TASK", "build_sample", "key_phrase_score", "load_judge",
           "summarize"]
