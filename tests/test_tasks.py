"""Offline lm-eval task configs: counts, first documents, name resolution, errors."""

from __future__ import annotations

import ast
import bz2
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from conftest import needs_data  # noqa: E402

from companion.errors import CompanionError  # noqa: E402
from companion.experiments import tasks as T  # noqa: E402
from companion.io import sha256_file  # noqa: E402
from companion.paths import DATA_ENV  # noqa: E402

DATA = Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None

# Published split sizes (docs per task; groups: summed over subtasks).
COUNTS = {
    "piqa": 1838,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
    "lambada_openai": 5153,
    "commonsense_qa": 1221,
    "race": 1045,
    "hellaswag": 10042,
    "wsc273": 273,
    "mmlu": 14042,
    "cmmlu": 11582,
}
SUBTASKS = {"mmlu": 57, "cmmlu": 67}


def _jsonl_first(relative: str) -> dict:
    with open(DATA / relative, encoding="utf-8") as handle:
        return json.loads(handle.readline())


def _first_label(relative: str) -> str:
    return (DATA / relative).read_text(encoding="utf-8").split()[0]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Offline even when huggingface_hub/datasets were imported (e.g. by conftest) before the variables above."""
    import datasets.config
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return T.write_task_configs(tmp_path_factory.mktemp("offline_tasks"))


@pytest.fixture(scope="module")
def loaded(config_dir: Path) -> dict:
    return T.task_manager(config_dir).load(T.available_tasks())


def _leaf_tasks(loaded: dict, name: str) -> list:
    """The task ``name`` itself, or the subtasks of group ``name``."""
    return [task for key, task in loaded["tasks"].items() if key == name or key.startswith(name + "_")]


def _render(task, doc: dict) -> tuple:
    return task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)


# ----------------------------------------------------------------------------- errors (no data needed)
def test_available_tasks_and_differences() -> None:
    assert T.available_tasks() == sorted(COUNTS)
    assert set(T.offline_differences()) == set(COUNTS)
    assert all(note.strip() for note in T.offline_differences().values())


def test_unknown_task_is_a_companion_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CompanionError, match=r"unknown task 'nope'; available: arc_challenge, arc_easy"):
        T.write_task_configs(out, ["piqa", "nope"])
    assert not out.exists()


def test_missing_data_dir_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(CompanionError, match=DATA_ENV):
        T.write_task_configs(tmp_path, ["piqa"])


def test_missing_file_names_expected_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv(DATA_ENV, str(empty))
    with pytest.raises(CompanionError) as error:
        T.write_task_configs(tmp_path / "out", ["boolq"])
    assert str(empty / "boolq" / "dev.jsonl") in str(error.value) and DATA_ENV in str(error.value)


def test_task_manager_needs_written_configs(tmp_path: Path) -> None:
    with pytest.raises(CompanionError, match="write_task_configs"):
        T.task_manager(tmp_path)


# ----------------------------------------------------------------------------- lm-eval builds the docs
@needs_data
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_doc_counts(loaded: dict, name: str) -> None:
    tasks = _leaf_tasks(loaded, name)
    assert len(tasks) == SUBTASKS.get(name, 1)
    assert sum(len(task.eval_docs) for task in tasks) == COUNTS[name]


@needs_data
def test_groups_keep_stock_structure(loaded: dict) -> None:
    groups = loaded["group_map"]
    assert set(groups["mmlu"]) == {"mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"}
    assert len(groups["cmmlu"]) == 67
    assert sum(len(groups[g]) for g in groups["mmlu"]) == 57


@needs_data
def test_piqa_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["piqa"]
    text, choices, gold = _render(task, task.eval_docs[0])
    raw = _jsonl_first("piqa/valid.jsonl")
    assert text == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert choices == [raw["sol1"], raw["sol2"]]
    assert choices[0].endswith(
        "ripped paper strips, you will also need to supply it with a water bottle and a food dish."
    )
    assert gold == int(_first_label("piqa/valid-labels.lst")) == 0


@needs_data
def test_hellaswag_rebuilds_hub_fields(loaded: dict) -> None:
    task = loaded["tasks"]["hellaswag"]
    docs = task.eval_docs
    # The first three Hub rows (Rowan/hellaswag validation, ind 24/92/106) as published.
    hub = [
        ("A man is sitting on a roof.", "he", "Roof shingle removal: A man is sitting on a roof. He"),
        (
            "A lady walks to a barbell. She bends down and grabs the pole.",
            "the lady",
            "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
        ),
        (
            "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, "
            "with other individuals visible in the background.",
            "the child and a different man",
            "Canoeing: Two women in a child are shown in a canoe while a man pulls the canoe while standing in the "
            "water, with other individuals visible in the background. The child and a different man",
        ),
    ]
    for doc, (ctx_a, ctx_b, query) in zip(docs, hub):
        assert (doc["ctx_a"], doc["ctx_b"], task.doc_to_text(doc)) == (ctx_a, ctx_b, query)
    assert task.doc_to_choice(docs[0]) == [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ]
    assert task.doc_to_target(docs[0]) in (3, "3")
    # WikiHow contexts keep ctx_b empty; stock preprocess still strips the brackets klosax left in.
    assert list(docs["ctx_b"]).count("") == 6799
    assert task.doc_to_text(docs[3505]) == (
        "Family Life: How to entertain a toddler. Ask the toddler what he or she would like to do instead of doing "
        "what you would like to do.. Visit a site like to find loads of creative activities for toddlers and "
        "preschoolers.. Choose small, simple games like candy land or chutes and ladders."
    )
    with bz2.open(DATA / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    assert list(docs["label"])[:50] == lines[1:300:6]


@needs_data
def test_winogrande_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["winogrande"]
    text, choices, target = _render(task, task.eval_docs[0])
    assert _first_label("winogrande/dev-labels.lst") == "2"
    assert text == 1  # stock partial evaluation: doc_to_text gives the gold choice index
    assert choices == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert target == "always got the easier cases."


@needs_data
def test_wsc273_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["wsc273"]
    doc = task.eval_docs[0]
    assert doc["text"] == "The city councilmen refused the demonstrators a permit because they feared violence."
    assert (doc["pronoun"], doc["pronoun_loc"], doc["label"]) == ("they", 63, 0)
    text, choices, target = _render(task, doc)
    assert text == 0
    assert choices == [
        "The city councilmen refused the demonstrators a permit because the city councilmen",
        "The city councilmen refused the demonstrators a permit because the demonstrators",
    ]
    assert target == " feared violence."
    assert list(task.eval_docs["label"])[:4] == [0, 1, 0, 1]


@needs_data
def test_commonsense_qa_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["commonsense_qa"]
    raw = _jsonl_first("commonsense_qa/dev_rand_split.jsonl")
    text, choices, target = _render(task, task.eval_docs[0])
    options = "".join(f"{c['label']}. {c['text']}\n" for c in raw["question"]["choices"])
    assert text == f"Question: {raw['question']['stem']}\n{options}Answer:"
    assert text.endswith("\nD. mall\nE. new york\nAnswer:")
    assert choices == list("ABCDE") and target == raw["answerKey"] == "A"


@needs_data
@pytest.mark.parametrize(
    ("name", "relative"),
    [("arc_easy", "arc_easy/ARC-Easy-Test.jsonl"), ("arc_challenge", "arc_challenge/ARC-Challenge-Test.jsonl")],
)
def test_arc_first_doc(loaded: dict, name: str, relative: str) -> None:
    task = loaded["tasks"][name]
    raw = _jsonl_first(relative)
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text == f"Question: {raw['question']['stem']}\nAnswer:"
    assert choices == [c["text"] for c in raw["question"]["choices"]]
    assert gold == [c["label"] for c in raw["question"]["choices"]].index(raw["answerKey"])


@needs_data
def test_openbookqa_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["openbookqa"]
    raw = _jsonl_first("openbookqa/test.jsonl")
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text == raw["question"]["stem"]
    assert choices == [
        "make more phone calls",
        "quit eating lunch out",
        "buy less with monopoly money",
        "have lunch with friends",
    ]
    assert gold == 1 and raw["answerKey"] == "B"


def _race_prompt(raw: dict) -> str:
    """lm-eval's race prompt (preprocess_race.doc_to_text), written out from the original RACE file."""
    text = "Article: " + raw["article"] + "\n\n"
    for question, answer, options in list(zip(raw["questions"], raw["answers"], raw["options"]))[:-1]:
        option = options["ABCD".index(answer)]
        if question[-6:] == "  _  .":
            text += question[:-5] + option + "\n"
        else:
            text += "Question: " + question + "\nAnswer: " + option + "\n"
    return text + raw["questions"][-1]


@needs_data
def test_race_docs(loaded: dict) -> None:
    task = loaded["tasks"]["race"]
    files = sorted((DATA / "race/test/high").glob("*.txt"), key=lambda p: int(p.stem))
    assert files[0].name == "73.txt"
    for index in (0, 1, 500):
        raw = json.loads(files[index].read_text(encoding="utf-8"))
        text, choices, gold = _render(task, task.eval_docs[index])
        assert text == _race_prompt(raw)
        assert choices == raw["options"][-1] and gold == "ABCD".index(raw["answers"][-1])
        assert len(ast.literal_eval(task.eval_docs[index]["problems"])) == len(raw["questions"])
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text.startswith("Article: The hardworking blacksmith  Jones used to work all day in his shop")
    assert text.endswith('can bring a fortune ."\n\nWhat can we learn from the young Mr. Smith\'s success?')
    assert choices[gold] == "All roads lead to Rome."


@needs_data
def test_boolq_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["boolq"]
    raw = _jsonl_first("boolq/dev.jsonl")
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text == f"{raw['passage']}\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    assert choices == ["no", "yes"] and gold == 0 and raw["answer"] is False


@needs_data
def test_lambada_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["lambada_openai"]
    raw = _jsonl_first("lambada/lambada_test.jsonl")["text"]
    text, target = task.doc_to_text(task.eval_docs[0]), task.doc_to_target(task.eval_docs[0])
    assert text + target == raw
    assert target == " signs" and text.endswith("his mouth curved in a confident grin, I don't care about")


@needs_data
def test_mmlu_docs(loaded: dict) -> None:
    task = loaded["tasks"]["mmlu_anatomy"]
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text == (
        "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n"
        "A. paralysis of the facial muscles.\n"
        "B. paralysis of the facial muscles and loss of taste.\n"
        "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
        "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\n"
        "Answer:"
    )
    assert choices == ["A", "B", "C", "D"] and gold == 0
    fewshot = list(task.fewshot_docs())
    assert len(fewshot) == 5 and fewshot[0]["question"] == "What is the embryological origin of the hyoid bone?"
    assert fewshot[0]["answer"] == 3
    algebra = loaded["tasks"]["mmlu_abstract_algebra"]
    with open(DATA / "mmlu/test/abstract_algebra_test.csv", encoding="utf-8", newline="") as handle:
        raw = next(csv.reader(handle))
    doc = algebra.eval_docs[0]
    assert (doc["question"], doc["choices"], doc["answer"], doc["subject"]) == (
        raw[0],
        raw[1:5],
        "ABCD".index(raw[5]),
        "abstract_algebra",
    )
    assert algebra.doc_to_text(doc).startswith(raw[0] + "\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


@needs_data
def test_cmmlu_first_doc(loaded: dict) -> None:
    task = loaded["tasks"]["cmmlu_agronomy"]
    text, choices, gold = _render(task, task.eval_docs[0])
    assert text == (
        "在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是\n"
        "A. 农业生产工具\nB. 土地\nC. 劳动力\nD. 资金\n答案："
    )
    assert choices == ["A", "B", "C", "D"] and gold == 1
    assert len(list(task.fewshot_docs())) == 5


# ----------------------------------------------------------------------------- files, manifest, resolution
@needs_data
def test_rewrite_is_idempotent_and_manifest_hashes_sources(config_dir: Path) -> None:
    files = sorted(p for p in config_dir.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    T.write_task_configs(config_dir)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    assert sorted(p for p in config_dir.rglob("*") if p.is_file()) == files
    manifest = json.loads((config_dir / T.MANIFEST).read_text(encoding="utf-8"))
    assert set(manifest["tasks"]) == set(COUNTS)
    sources = manifest["tasks"]
    assert sources["piqa"]["sources"]["piqa/valid.jsonl"] == sha256_file(DATA / "piqa/valid.jsonl")
    # Folder hashes follow SOURCES.md's aggregate sha256.
    assert sources["race"]["sources"]["race/test/high"] == (
        "d12144648d105bad009aada759e0d5294adf4b2c269d991782d700d3429c7b03"
    )
    assert sources["mmlu"]["sources"]["mmlu/dev"] == (
        "00d0c3e2d00d9fd4f38ecf888d1053a39eb455ce7c5903e6626973e5a246fa5c"
    )
    assert not list(config_dir.rglob("*.tmp"))


@needs_data
def test_subset_writes_merge_into_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    T.write_task_configs(out, ["piqa"])
    T.write_task_configs(out, ["boolq", "boolq"])
    manifest = json.loads((out / T.MANIFEST).read_text(encoding="utf-8"))
    assert set(manifest["tasks"]) == {"piqa", "boolq"}
    assert sorted(p.name for p in out.iterdir()) == ["boolq", "data", "manifest.json", "piqa"]


@needs_data
@pytest.mark.slow  # indexes every stock lm-eval task
def test_include_path_overrides_stock_names(config_dir: Path) -> None:
    """What ``lm_eval --include_path DIR`` builds: the stock registry plus DIR, where DIR must win."""
    from lm_eval.tasks import TaskManager

    ours = T.task_manager(config_dir).task_index
    assert all(entry.yaml_path is None or config_dir in entry.yaml_path.parents for entry in ours.values())
    merged = TaskManager(include_path=str(config_dir)).task_index
    for name, entry in ours.items():
        assert merged[name].yaml_path == entry.yaml_path, name
        assert merged[name].tags == entry.tags, name
    # A tag defined here replaces the stock tag: it must not lose stock members we do not provide.
    our_tags = {name for name, entry in ours.items() if entry.kind.name == "TAG"}
    strays = {
        name: entry.tags & our_tags
        for name, entry in merged.items()
        if entry.kind.name == "TASK" and name not in ours and entry.tags & our_tags
    }
    assert not strays
    assert {"ai2_arc", "mmlu_stem_tasks"} <= our_tags and "multiple_choice" not in our_tags


@needs_data
def test_simple_evaluate_reports_stock_names(config_dir: Path) -> None:
    """In-process evaluation (lm-eval's random ``dummy`` model) runs the offline configs under the stock names."""
    import lm_eval

    out = lm_eval.simple_evaluate(
        model="dummy", tasks=["piqa", "mmlu"], task_manager=T.task_manager(config_dir), limit=2, log_samples=False
    )
    assert {"piqa", "mmlu", "mmlu_stem", "mmlu_anatomy"} <= set(out["results"])
    assert out["configs"]["piqa"]["dataset_path"] == "json"
    assert out["configs"]["mmlu_anatomy"]["fewshot_split"] == "dev"
    assert out["versions"]["piqa"] == 1.0
