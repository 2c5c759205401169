"""Offline lm-eval tasks: the stock task configs, fed from the local benchmark copies.

lm-eval's stock tasks download their data from the Hugging Face Hub. :func:`write_task_configs`
converts the local files under ``COMPANION_DATA_DIR`` (see ``shared/data/SOURCES.md``) into
JSON-lines in each stock task's Hub schema and writes, per task, a YAML that includes (``include:``) the
stock YAML of the installed lm-eval by absolute path and overrides only where the data come from::

    include: /…/site-packages/lm_eval/tasks/piqa/piqa.yaml
    dataset_path: json
    dataset_name: null
    dataset_kwargs: {data_files: {validation: /…/data/piqa/validation.jsonl}}
    training_split: null        # only where the local copy lacks a stock split

Everything else (task name, prompts, choices, targets, ``process_docs``, metrics, few-shot
settings, metadata/version) is the stock config itself. ``!function`` references inside an
included stock YAML resolve against the folder of that stock YAML (lm-eval builds one YAML
loader per file), so lm-eval's own ``utils.py`` helpers are reused unchanged, and relative
``include``s inside stock files (``arc_challenge`` -> ``arc_easy.yaml``, the MMLU/CMMLU
templates) keep working. Groups (``mmlu`` with its 4 subgroups and 57 subjects, ``cmmlu`` with
67 subjects) get one include-YAML per stock group file as well.

Task-name resolution (checked against lm-eval 0.4.13, ``lm_eval/tasks/_index.py``):
``TaskManager`` indexes ``lm_eval/tasks`` first (when ``include_defaults=True``) and then each
``include_path`` folder; a name found again in a later folder *replaces* the earlier entry —
tasks, groups and tags alike — and lm-eval logs one WARNING per name ("Task 'piqa' from <ours>
overrides existing task from <stock>"; 146 of them when all tasks here are written). So the
include_path copy wins deterministically, both in process and on the command line
(``lm_eval --include_path DIR --tasks piqa`` builds ``TaskManager(include_path=DIR)`` with the
defaults included; checked with ``lm_eval run --model dummy --include_path DIR``, which reports
``Task: piqa (DIR/piqa/piqa.yaml)``), and the results carry the stock names. In process,
:func:`task_manager` builds ``TaskManager(include_path=DIR, include_defaults=False)``: only the
offline configs are visible, so nothing can silently fall back to a Hub download, no override
warnings are logged, and indexing is faster (under 1 s instead of about 10 s). Because an
include_path tag replaces the stock tag of the same name wholesale, the offline configs drop the
tags whose stock members are not all provided here (``multiple_choice``, ``super-glue-lm-eval-v1``,
``lambada``); with the defaults included those stock tags still resolve to the offline tasks.

Only the evaluation split (and MMLU/CMMLU's ``dev`` few-shot split) exists locally. Where the
stock task draws few-shot examples from ``train``, the offline config sets ``training_split:
null`` (lm-eval would otherwise fail to index the missing split) and lm-eval then falls back to
the evaluation split itself: zero-shot results are unaffected, few-shot ones are not comparable.
:func:`offline_differences` lists what else differs from the Hub copies.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from companion.errors import CompanionError
from companion.io import atomic_write_text, sha256_file
from companion.paths import data_file

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

Rows = list[dict[str, Any]]
Splits = dict[str, Rows]

MANIFEST = "manifest.json"
_LETTERS = "ABCD"


# ----------------------------------------------------------------------------- readers
def _jsonl(path: Path) -> Rows:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _labels(path: Path, count: int, what: str) -> list[str]:
    labels = path.read_text(encoding="utf-8").split()
    if len(labels) != count:
        raise CompanionError(f"{what}: {path} has {len(labels)} labels for {count} examples")
    return labels


def _piqa() -> Splits:
    rows = _jsonl(data_file("piqa/valid.jsonl", "PIQA validation"))
    labels = _labels(data_file("piqa/valid-labels.lst", "PIQA labels"), len(rows), "PIQA")
    return {"validation": [{**row, "label": int(label)} for row, label in zip(rows, labels)]}


_SENTENCE_END = re.compile(r"[.!?][\"']? ")


def _hellaswag() -> Splits:
    path = data_file("hellaswag/hellaswag_val_full.txt.bz2", "HellaSwag validation")
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise CompanionError(f"HellaSwag: {path} has {len(lines)} lines, not 6 per example")
    rows = []
    for i in range(0, len(lines), 6):
        activity_label, ctx = lines[i].split(": ", 1)
        if ctx.startswith("How to ") and ctx.endswith("."):
            ctx_a, ctx_b = ctx, ""  # WikiHow: the context ends with a full sentence, ctx_b is empty
        else:  # ActivityNet: ctx_b is the trailing, incomplete sentence (a lower-cased noun phrase)
            ends = list(_SENTENCE_END.finditer(ctx))
            cut = ends[-1].end() if ends else 0
            ctx_a, ctx_b = ctx[:cut].rstrip(), ctx[cut:]
        rows.append(
            {
                "activity_label": activity_label,
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": ctx,
                "endings": lines[i + 2 : i + 6],
                "label": lines[i + 1],
            }
        )
    return {"validation": rows}


def _winogrande() -> Splits:
    path = data_file("winogrande/dev.jsonl", "WinoGrande dev")
    rows = _jsonl(path)
    labels = _labels(data_file("winogrande/dev-labels.lst", "WinoGrande labels"), len(rows), "WinoGrande")
    out = []
    for row, label in zip(rows, labels):
        if row.get("answer", label) != label:
            raise CompanionError(f"WinoGrande: {path} answer of {row['qID']} disagrees with dev-labels.lst")
        out.append({"sentence": row["sentence"], "option1": row["option1"], "option2": row["option2"], "answer": label})
    return {"validation": out}


def _ws(text: str | None) -> str:
    return " ".join((text or "").split())


def _wsc273() -> Splits:
    """The first 273 schemas, parsed as the Hub ``winograd_wsc`` script does."""
    tree = ET.parse(data_file("wsc273/WSCollection.xml", "WSC273"))
    rows = []
    for schema in list(tree.getroot())[:273]:
        text_root, quote_root = schema.find("text"), schema.find("quote")
        left, right = _ws(text_root.findtext("txt1", "")), _ws(text_root.findtext("txt2", ""))
        quote_left, quote_right = _ws(quote_root.findtext("quote1", "")), _ws(quote_root.findtext("quote2", ""))
        pronoun = _ws(text_root.findtext("pron"))
        pronoun_loc = len(left) + 1 if left else 0
        rows.append(
            {
                "text": " ".join([left, pronoun, right]).strip(),
                "pronoun": pronoun,
                "pronoun_loc": pronoun_loc,
                "quote": " ".join([quote_left, pronoun, quote_right]).strip(),
                "quote_loc": pronoun_loc - (len(quote_left) + 1 if quote_left else 0),
                "options": [_ws(answer.text) for answer in schema.find("answers").findall("answer")],
                "label": int("B" in _ws(schema.findtext("correctAnswer"))),
                "source": _ws(schema.findtext("source")),
            }
        )
    return {"test": rows}


def _choices(question: dict[str, Any], *keys: str) -> dict[str, list[str]]:
    """The original per-choice objects regrouped into the Hub's ``{key: [...]}`` columns, in ``keys`` order."""
    return {key: [choice[key] for choice in question["choices"]] for key in keys}


def _commonsense_qa() -> Splits:
    rows = _jsonl(data_file("commonsense_qa/dev_rand_split.jsonl", "CommonsenseQA dev"))
    return {
        "validation": [
            {
                "id": row["id"],
                "question": row["question"]["stem"],
                "question_concept": row["question"]["question_concept"],
                "choices": _choices(row["question"], "label", "text"),
                "answerKey": row["answerKey"],
            }
            for row in rows
        ]
    }


def _arc(relative: str, what: str) -> Callable[[], Splits]:
    def read() -> Splits:
        rows = _jsonl(data_file(relative, what))
        return {
            "test": [
                {
                    "id": r["id"],
                    "question": r["question"]["stem"],
                    "choices": _choices(r["question"], "text", "label"),
                    "answerKey": r["answerKey"],
                }
                for r in rows
            ]
        }

    return read


def _openbookqa() -> Splits:
    rows = _jsonl(data_file("openbookqa/test.jsonl", "OpenBookQA test"))
    return {
        "test": [
            {
                "id": r["id"],
                "question_stem": r["question"]["stem"],
                "choices": _choices(r["question"], "text", "label"),
                "answerKey": r["answerKey"],
            }
            for r in rows
        ]
    }


def _race() -> Splits:
    """One row per article, its questions as the Python-literal ``problems`` string of EleutherAI/race."""
    folder = data_file("race/test/high", "RACE-high test")
    rows = []
    for path in sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):  # numeric file order
        article = json.loads(path.read_text(encoding="utf-8"))
        problems = [
            {"question": q, "answer": a, "options": o}
            for q, a, o in zip(article["questions"], article["answers"], article["options"])
        ]
        rows.append({"article": article["article"], "problems": repr(problems)})
    return {"test": rows}


def _boolq() -> Splits:
    rows = _jsonl(data_file("boolq/dev.jsonl", "BoolQ dev"))
    return {
        "validation": [
            {"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
            for i, r in enumerate(rows)
        ]
    }


def _lambada() -> Splits:
    return {"test": [{"text": r["text"]} for r in _jsonl(data_file("lambada/lambada_test.jsonl", "LAMBADA test"))]}


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _mmlu(subject: str) -> Splits:
    """Rows of ``cais/mmlu`` (question, subject, choices, answer index) from the header-less CSVs."""
    out = {}
    for split in ("test", "dev"):
        path = data_file(f"mmlu/{split}/{subject}_{split}.csv", f"MMLU {subject} {split}")
        out[split] = [
            {"question": r[0], "subject": subject, "choices": r[1:5], "answer": _LETTERS.index(r[5])}
            for r in _csv_rows(path)
        ]
    return out


def _cmmlu(subject: str) -> Splits:
    """Rows of ``haonan-li/cmmlu`` (Question, A-D, Answer) from the CSVs (first column: row number)."""
    out = {}
    for split in ("test", "dev"):
        path = data_file(f"cmmlu/{split}/{subject}.csv", f"CMMLU {subject} {split}")
        header, *rows = _csv_rows(path)
        out[split] = [dict(zip(header[1:], r[1:])) for r in rows]
    return out


# ----------------------------------------------------------------------------- task table
@dataclass(frozen=True)
class _Task:
    stock: str  # stock YAML (task) or stock folder (group), relative to lm_eval/tasks
    sources: tuple[str, ...]  # local inputs, relative to COMPANION_DATA_DIR
    read: Callable[..., Splits]  # () -> splits, or (subject) -> splits for a group
    overrides: dict[str, Any] = field(default_factory=dict)  # extra YAML keys for each (sub)task
    group: bool = False


_NO_TRAIN = {"training_split": None}
_NO_TRAIN_VALID = {"training_split": None, "validation_split": None}

_TASKS: dict[str, _Task] = {
    "piqa": _Task("piqa/piqa.yaml", ("piqa/valid.jsonl", "piqa/valid-labels.lst"), _piqa, _NO_TRAIN),
    "hellaswag": _Task(
        "hellaswag/hellaswag.yaml", ("hellaswag/hellaswag_val_full.txt.bz2",), _hellaswag, {**_NO_TRAIN, "tag": None}
    ),
    "winogrande": _Task(
        "winogrande/default.yaml", ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), _winogrande, _NO_TRAIN
    ),
    "wsc273": _Task("wsc273/default.yaml", ("wsc273/WSCollection.xml",), _wsc273),
    "commonsense_qa": _Task(
        "commonsense_qa/default.yaml", ("commonsense_qa/dev_rand_split.jsonl",), _commonsense_qa, _NO_TRAIN
    ),
    "arc_easy": _Task(
        "arc/arc_easy.yaml",
        ("arc_easy/ARC-Easy-Test.jsonl",),
        _arc("arc_easy/ARC-Easy-Test.jsonl", "ARC-Easy test"),
        _NO_TRAIN_VALID,
    ),
    "arc_challenge": _Task(
        "arc/arc_challenge.yaml",
        ("arc_challenge/ARC-Challenge-Test.jsonl",),
        _arc("arc_challenge/ARC-Challenge-Test.jsonl", "ARC-Challenge test"),
        _NO_TRAIN_VALID,
    ),
    "openbookqa": _Task("openbookqa/openbookqa.yaml", ("openbookqa/test.jsonl",), _openbookqa, _NO_TRAIN_VALID),
    "race": _Task("race/race.yaml", ("race/test/high",), _race),
    "mmlu": _Task("mmlu/default", ("mmlu/test", "mmlu/dev"), _mmlu, group=True),
    "cmmlu": _Task("cmmlu", ("cmmlu/test", "cmmlu/dev"), _cmmlu, group=True),
    "boolq": _Task("super_glue/boolq/default.yaml", ("boolq/dev.jsonl",), _boolq, {**_NO_TRAIN, "tag": None}),
    "lambada_openai": _Task(
        "lambada/lambada_openai.yaml", ("lambada/lambada_test.jsonl",), _lambada, {"tag": None}
    ),
}

_DIFFERENCES: dict[str, str] = {
    "piqa": "None expected: valid.jsonl + valid-labels.lst equal HF piqa validation field for field (stock reads "
    "baber/piqa, a re-upload of it; not compared here). No train split: few-shot examples would come from "
    "validation (stock: train).",
    "hellaswag": "Rebuilt from klosax's derived text file (rowanz hellaswag_val.jsonl with activity_label, ctx "
    "and endings passed through its own tag stripper), not from Rowan/hellaswag. Same 10042 docs, order, "
    "labels and activity labels. ctx_a/ctx_b are inferred: WikiHow docs (the 6799 contexts that start with "
    "'How to' and end with '.') get ctx_b='' as on the Hub; for the 3243 ActivityNet docs ctx_b is the text "
    "after the last sentence end, which never contains capitals here, so the stock capitalize() gives the Hub "
    "query unless the true ctx_b itself holds a '. ' (not detectable). Not recoverable: (1) stock preprocess() "
    "strips before removing tags, so a Hub ending that began with a tag ('[step] ', '[substeps] ', '[title] ') "
    "becomes a choice with a leading space; the local copy lost that space, which changes those choices' "
    "log-likelihoods (and acc_norm lengths) by the extra space token; (2) rare runs of 3+ spaces or "
    "adjacent tags may normalize differently. Fields ind/source_id/split/split_type are absent. "
    "No train split: few-shot examples would come from validation.",
    "winogrande": "None in the data: dev.jsonl + dev-labels.lst equal winogrande_xl validation. "
    "No train split: few-shot examples would come from validation.",
    "wsc273": "None expected: WSCollection.xml parsed with the Hub winograd_wsc script's rules (first 273 "
    "schemas); texts, options and labels match the HF-derived llm-foundry copy.",
    "commonsense_qa": "None in the data: equal to tau/commonsense_qa validation. No train split: few-shot "
    "examples would come from validation.",
    "arc_easy": "None expected: ARC-Easy-Test.jsonl (original AI2 format) regrouped into the ai2_arc schema; "
    "file hash matches an independent copy. No train/validation split: few-shot examples would come from test.",
    "arc_challenge": "None expected: ARC-Challenge-Test.jsonl regrouped into the ai2_arc schema; file hash "
    "matches an independent copy. No train/validation split: few-shot examples would come from test.",
    "openbookqa": "Choices and gold equal llm-foundry's copy for all 500; question stems not cross-checked "
    "against allenai/openbookqa. No train/validation split: few-shot examples would come from test.",
    "race": "Built from the 1045 original RACE-high test files, one doc per article as EleutherAI/race does "
    "(questions in file order, all but the last shown with answers). Doc order is by file number; "
    "EleutherAI/race follows the RACE tarball order, so --limit subsets and sample indices differ, "
    "full-set scores do not.",
    "mmlu": "Header-less hendrycks CSVs (57 subjects; test 14042, dev 285) converted to the cais/mmlu schema "
    "(same source data; not byte-compared with cais/mmlu). dev is the stock few-shot split, so few-shot runs "
    "use the stock examples.",
    "cmmlu": "GitHub CSVs at haonan-li/CMMLU HEAD (67 subjects; test 11582, dev 335), read as strings (every "
    "value equals what the Hub loader's pandas.read_csv yields, including the numeric dev options of "
    "college_actuarial_science). The Hub copy was packaged from a release zip: counts agree, contents were "
    "not cross-checked. dev is the stock few-shot split.",
    "boolq": "Original Google dev format; question/passage/answer equal HF boolq validation. label = int(answer); "
    "idx = row number (super_glue's idx, assuming it keeps the dev order; the prompt does not use it). "
    "No train split: few-shot examples would come from validation.",
    "lambada_openai": "None expected: the OpenAI lambada_test.jsonl (sha256 equals the checksum old lm-eval "
    "used), which EleutherAI/lambada_openai 'default' re-hosts (not byte-compared here).",
}


# ----------------------------------------------------------------------------- public API
def available_tasks() -> list[str]:
    """Stock lm-eval task/group names this module can build offline."""
    return sorted(_TASKS)


def offline_differences() -> dict[str, str]:
    """A short note per task on how the local copy differs from the stock (Hub) data."""
    return dict(_DIFFERENCES)


def write_task_configs(out_dir: Path, tasks: list[str] | None = None) -> Path:
    """Write offline configs + JSON-lines data for ``tasks`` (default: all) under ``out_dir``.

    Returns ``out_dir``, ready for ``lm_eval --include_path out_dir`` or :func:`task_manager`.
    Files are written atomically and only when their content changes; ``manifest.json`` records
    per task the sha256 of each local source file (for a folder: the sha256 of its
    ``"<sha256>  <name>\\n"`` lines sorted by name, as in SOURCES.md).
    """
    names = list(dict.fromkeys(available_tasks() if tasks is None else tasks))
    for name in names:
        if name not in _TASKS:
            raise CompanionError(f"unknown task '{name}'; available: {', '.join(available_tasks())}")
    out_dir = Path(out_dir).expanduser().resolve()
    stock_root = _stock_root()
    manifest_path = out_dir / MANIFEST
    manifest = _read_manifest(manifest_path)
    for name in names:
        spec = _TASKS[name]
        if not (stock_root / spec.stock).exists():
            raise CompanionError(f"lm-eval {_lm_eval_version()} has no stock config {spec.stock} for '{name}'")
        sources = source_hashes(name)
        if spec.group:
            _write_group(out_dir, name, spec, stock_root)
        else:
            _write_task(out_dir, name, name, spec, spec.read(), stock_root / spec.stock)
        manifest["tasks"][name] = {"sources": sources}
    manifest["lm_eval"] = _lm_eval_version()
    _write_if_changed(manifest_path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return out_dir


def task_manager(config_dir: Path) -> TaskManager:
    """An lm-eval ``TaskManager`` that sees only the offline configs in ``config_dir`` (no Hub fallbacks)."""
    config_dir = Path(config_dir).expanduser().resolve()
    if not (config_dir / MANIFEST).is_file():
        raise CompanionError(f"{config_dir} holds no offline task configs; run write_task_configs first")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(config_dir), include_defaults=False)


# ----------------------------------------------------------------------------- writing
def _stock_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise CompanionError("lm-eval is not installed; install lm-eval[hf] to build evaluation tasks")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def _lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The existing manifest (entries of tasks written earlier are kept), or an empty one."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"tasks": {}}
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("tasks"), dict) else {"tasks": {}}


def _source_hash(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    files = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
    lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write, skipped when the file already holds ``text`` (keeps mtimes and HF dataset caches valid)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    atomic_write_text(path, text)


def _yaml(config: dict[str, Any], note: str) -> str:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=4096)
    return f"# Generated by companion.experiments.tasks ({note}); do not edit.\n{body}"


def _write_task(out_dir: Path, folder: str, name: str, spec: _Task, splits: Splits, stock_yaml: Path) -> None:
    """JSON-lines per split under data/<name>/ and an include-YAML under <folder>/."""
    data_files = {}
    for split, rows in splits.items():
        path = out_dir / "data" / name / f"{split}.jsonl"
        _write_if_changed(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        data_files[split] = str(path)
    config = {
        "include": str(stock_yaml),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        **spec.overrides,
    }
    note = f"offline {name}, sources: {', '.join(spec.sources)}"
    _write_if_changed(out_dir / folder / stock_yaml.name, _yaml(config, note))


class _StockLoader(yaml.SafeLoader):
    """Safe YAML loading that keeps lm-eval's ``!function`` references as plain strings."""


_StockLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _stock_configs(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The stock YAMLs of a group folder, parsed without resolving ``!function`` or includes."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        with open(path, encoding="utf-8") as handle:
            out.append((path, yaml.load(handle, Loader=_StockLoader)))  # noqa: S506 (a SafeLoader subclass)
    return out


def _write_group(out_dir: Path, name: str, spec: _Task, stock_root: Path) -> None:
    """One include-YAML per stock group file and per subject (with its data), under <name>/."""
    for path, config in _stock_configs(stock_root / spec.stock):
        if "group" in config:
            _write_if_changed(out_dir / name / path.name, _yaml({"include": str(path)}, f"offline {name} group"))
        elif "task" in config:
            _write_task(out_dir, name, config["task"], spec, spec.read(config["dataset_name"]), path)


__all__ = ["available_tasks", "offline_differences", "task_manager", "write_task_configs"]


@functools.lru_cache(maxsize=None)
def source_hashes(task: str) -> dict[str, str]:
    """The sha256 of each local source file of ``task`` (folders as in SOURCES.md), by relative path."""
    if task not in _TASKS:
        raise CompanionError(f"unknown task '{task}'; available: {', '.join(available_tasks())}")
    return {rel: _source_hash(data_file(rel, f"{task} data")) for rel in _TASKS[task].sources}
