"""The key numbers each notebook publishes, and :func:`glue_values`, which publishes them with
``myst_nb.glue`` (as plain Python values) for the book's prose and summary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from companion.analysis.comparisons import DENSE, chance_retention, holm, verdict
from companion.analysis.tables import (
    dense_accuracy,
    drop_set_overlap,
    layer_scores,
    lookup,
    mean_retention,
    method_correlation,
    rank_correlation,
    speedup_efficiency,
)
from companion.analysis.verdicts import (
    calibration_change,
    curve,
    ranking,
    retention_headline,
    speed_verdict,
    trend_verdict,
    two_stage_verdict,
)
from companion.method import criteria
from companion.method.orders import compression_stage, drop_order, headline_k
from companion.names import LAST, PERPLEXITY_TASK, RANDOM, RANDOM_PREFIX, in_mean_accuracy

HEADLINE_RETENTION = 95.0  # the paper's headline: "95%+" of the dense accuracy kept
STANDARD_ENTROPY = ("knn", "bucket", "renyi")
STANDARD_METHODS = ("knn", "bucket", "renyi", "cosine")
STANDARD_GRANULARITIES = ("attn", "layer")


class RunDescription(Protocol):
    """What :func:`run_numbers` reads of a run (a :class:`companion.pipeline.run.Run` has it all); a
    protocol rather than ``Run`` itself, so that the findings import no model code (torch)."""

    model: str
    profile: str
    calibration: str
    calibrations: list[str]
    samples: int
    seqlen: int
    seed: int
    tasks: list[str]
    limit: int | None
    drops: list[int]
    max_drop: int


def run_numbers(run: RunDescription) -> dict[str, Any]:
    """What a run was: model, profile, calibration, sizes, tasks and limits (strings and integers)."""
    return {"model": run.model, "profile": run.profile, "calibration": run.calibration,
            "calibrations": ", ".join(run.calibrations), "samples": run.samples, "seqlen": run.seqlen,
            "seed": run.seed, "tasks": ", ".join(t for t in run.tasks if t != PERPLEXITY_TASK),
            "limit": "all" if run.limit is None else str(run.limit), "drops": ", ".join(map(str, run.drops)),
            "k_max": run.max_drop}


def profile_numbers(scores: dict, estimators: Sequence[str]) -> dict[str, Any]:
    """Entropy-by-depth numbers. Per estimator ``e`` of knn/bucket/renyi: ``{e}_stage_layers`` (layers in
    the compression stage), ``{e}_two_stage`` (verdict), ``{e}_rise`` (H at the last boundary minus the
    minimum, in units of the profile's range), ``{e}_expansion_positive_pct`` (% of expansion-stage layers
    with ΔH > 0), and the depth trend of whole-layer ΔH over the expansion stage: ``{e}_depth_rho``,
    ``{e}_depth_p``, ``{e}_depth_verdict`` (Spearman of ΔH against layer index)."""
    numbers: dict[str, Any] = {"num_layers": scores["num_layers"]}
    for e in STANDARD_ENTROPY:
        if e not in estimators or e not in scores["profiles"]:
            numbers.update({f"{e}_stage_layers": float("nan"), f"{e}_two_stage": "not measured",
                            f"{e}_rise": float("nan"), f"{e}_expansion_positive_pct": float("nan"),
                            f"{e}_depth_rho": float("nan"), f"{e}_depth_p": float("nan"),
                            f"{e}_depth_verdict": "not measured"})
            continue
        prof = scores["profiles"][e]
        stage = compression_stage(prof)
        delta = layer_scores(scores, e, "layer")
        expansion = np.arange(stage, scores["num_layers"])
        trend = rank_correlation(expansion, delta[expansion])
        span = max(prof) - min(prof)
        numbers.update({
            f"{e}_stage_layers": stage, f"{e}_two_stage": two_stage_verdict(prof),
            f"{e}_rise": (prof[-1] - prof[stage]) / span if span > 0 else float("nan"),
            f"{e}_expansion_positive_pct": 100 * float(np.mean(delta[expansion] > 0)),
            f"{e}_depth_rho": trend["spearman"], f"{e}_depth_p": trend["spearman_p"],
            f"{e}_depth_verdict": trend_verdict(trend["spearman"], trend["spearman_p"]),
        })
    return numbers


def accuracy_numbers(acc: pd.DataFrame, ppl: pd.DataFrame, num_layers: int) -> dict[str, Any]:
    """Accuracy-vs-pruning numbers: ``dense_accuracy`` (and ``_stderr``), ``dense_perplexity``, ``k_max``;
    per method ``m`` and granularity ``g`` (knn/bucket/renyi/cosine × attn/layer): ``{m}_{g}_accuracy_max``,
    ``{m}_{g}_retention_max`` (at the largest K), ``{m}_{g}_retention_mean`` (over K > 0),
    ``{m}_{g}_ppl_max``; the headline: ``headline_k`` (the K closest to 37.5% of the layers),
    ``headline_pct``, ``{m}_attn_retention_headline``. The verdicts (paired, with intervals) are
    :func:`evidence_numbers`'."""
    dense, dense_se = dense_accuracy(acc)
    k_max = int(acc["K"].max())
    ks = sorted(acc["K"].unique())
    head = headline_k(ks, num_layers)
    dense_ppl = ppl.loc[ppl["K"] == 0, "perplexity"]
    numbers: dict[str, Any] = {
        "dense_accuracy": dense, "dense_accuracy_stderr": dense_se,
        "dense_perplexity": float(dense_ppl.iloc[0]) if len(dense_ppl) else float("nan"), "k_max": k_max,
        "k_max_pct": 100 * k_max / num_layers, "num_layers": num_layers, "headline_k": head,
        "headline_pct": 100 * head / num_layers, "n_tasks": int(acc["n_tasks"].max()),
    }
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            where = {"method": m, "granularity": g, "K": k_max}
            numbers[f"{m}_{g}_accuracy_max"] = lookup(acc, "mean", **where)
            numbers[f"{m}_{g}_retention_max"] = lookup(acc, "retention", **where)
            numbers[f"{m}_{g}_retention_mean"] = mean_retention(acc, m, g)
            numbers[f"{m}_{g}_ppl_max"] = lookup(ppl, "perplexity", **where) if len(ppl) else float("nan")
        numbers[f"{m}_attn_retention_headline"] = lookup(acc, "retention", method=m, granularity="attn", K=head)
    return numbers


def criteria_numbers(scores: dict, granularities: Sequence[str], k_max: int, method_a: str = "knn",
                     method_b: str = "cosine", protect: str = "auto") -> dict[str, Any]:
    """Entropy-vs-cosine numbers per granularity ``g``: ``spearman_{g}``, ``spearman_p_{g}``, ``kendall_{g}``
    (all layers), ``spearman_prunable_{g}`` (layers outside the entropy's compression stage),
    ``jaccard_{g}_kmax`` (drop sets at the sweep's largest K) and ``jaccard_{g}_mean`` (over all K)."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        order_a, order_b = drop_order(scores, method_a, g, protect), drop_order(scores, method_b, g, protect)
        full = method_correlation(scores, method_a, method_b, g)
        prunable = method_correlation(scores, method_a, method_b, g, layers=order_a.order)
        overlap = drop_set_overlap(order_a, order_b)
        at_max = overlap.loc[overlap["K"] == k_max, "jaccard"]
        numbers.update({f"spearman_{g}": full["spearman"], f"spearman_p_{g}": full["spearman_p"],
                        f"kendall_{g}": full["kendall"], f"spearman_prunable_{g}": prunable["spearman"],
                        f"jaccard_{g}_kmax": float(at_max.iloc[0]) if len(at_max) else float("nan"),
                        f"jaccard_{g}_mean": float(overlap["jaccard"].mean()) if len(overlap) else float("nan")})
    return numbers


def estimator_numbers(scores: dict, acc: pd.DataFrame, estimators: Sequence[str], granularities: Sequence[str],
                      k_max: int, protect: str = "auto", comparisons: pd.DataFrame | None = None) -> dict[str, Any]:
    """Estimator-comparison numbers per granularity ``g``: ``estimator_ranking_{g}`` (by retention averaged
    over the K > 0 every estimator was evaluated at, best first), ``best_estimator_{g}``, ``renyi_last_{g}``
    (yes/no), pairwise ``spearman_{a}_{b}_{g}``, ``jaccard_{a}_{b}_{g}_kmax`` and, from the paired
    ``comparisons`` rows of this model and calibration set (if given), ``{g}_{a}_vs_{b}`` (verdict at the
    shared K closest to the headline) for the pairs of knn/bucket/renyi."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        shared = set.intersection(*(set(acc.loc[(acc["method"] == e) & (acc["granularity"] == g) & (acc["K"] > 0), "K"])
                                    for e in estimators)) if estimators else set()
        retention = {e: mean_retention(acc, e, g, ks=shared) for e in estimators}
        order = ranking(retention)
        names = order.split(" > ")
        numbers[f"estimator_ranking_{g}"] = " > ".join(criteria.short(name) for name in names)
        numbers[f"best_estimator_{g}"] = criteria.short(names[0])
        numbers[f"renyi_last_{g}"] = ("not measured" if "renyi" not in names
                                      else "yes" if names[-1] == "renyi" else "no")
        for i, a in enumerate(STANDARD_ENTROPY):
            for b in STANDARD_ENTROPY[i + 1:]:
                if a in estimators and b in estimators:
                    numbers[f"spearman_{a}_{b}_{g}"] = method_correlation(scores, a, b, g)["spearman"]
                    overlap = drop_set_overlap(drop_order(scores, a, g, protect), drop_order(scores, b, g, protect),
                                               [k_max])
                    numbers[f"jaccard_{a}_{b}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                           else float("nan"))
                else:
                    numbers[f"spearman_{a}_{b}_{g}"] = numbers[f"jaccard_{a}_{b}_{g}_kmax"] = float("nan")
        for e in STANDARD_ENTROPY:
            numbers[f"{e}_{g}_retention_mean"] = retention.get(e, float("nan"))
        numbers[f"estimator_ks_{g}"] = ", ".join(map(str, sorted(shared))) or "none"
        for i, a in enumerate(STANDARD_ENTROPY):
            for b in STANDARD_ENTROPY[i + 1:]:
                rows = (comparisons[(comparisons["granularity"] == g) & (comparisons["method_a"] == a)
                                    & (comparisons["method_b"] == b) & (comparisons["metric"] == "accuracy")
                                    & comparisons["K"].isin(shared)] if comparisons is not None else pd.DataFrame())
                numbers[f"{g}_{a}_vs_{b}"] = (verdict(rows.sort_values("K").iloc[-1].to_dict(), criteria.short(a), criteria.short(b))
                                              if len(rows) else "not measured")
    return numbers


def calibration_numbers(scores: Mapping[str, dict], acc: pd.DataFrame, comparisons: pd.DataFrame,
                        methods: Sequence[str], granularities: Sequence[str], k_max: int, protect: str = "auto",
                        model: str | None = None) -> dict[str, Any]:
    """Calibration-ablation numbers comparing the first two calibration sets ``a`` and ``b``:
    ``calib_a``, ``calib_b``; per method ``m`` (knn/bucket/renyi/cosine) and granularity ``g``:
    ``calib_spearman_{m}_{g}`` (per-layer scores of a vs b) and ``calib_jaccard_{m}_{g}_kmax``; from the
    paired comparisons of each criterion's pruning under b against a (rows ``"b vs a"`` of
    ``comparisons``, of ``model``): ``calib_max_acc_diff`` (largest absolute difference, accuracy
    points) and ``calib_max_acc_diff_ci`` (its 95 % CI), ``calib_changed`` (settings with a difference,
    exact McNemar, Holm-adjusted p < 0.05) of ``calib_settings``, ``calib_same_blocks`` (settings with
    identical drop sets) and ``calib_verdict``."""
    first, second = list(scores)[:2]
    numbers: dict[str, Any] = {"calib_a": first, "calib_b": second}
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            if m in methods and g in granularities:
                numbers[f"calib_spearman_{m}_{g}"] = method_correlation(scores[first], m, m, g,
                                                                        scores_b=scores[second])["spearman"]
                overlap = drop_set_overlap(drop_order(scores[first], m, g, protect),
                                           drop_order(scores[second], m, g, protect), [k_max])
                numbers[f"calib_jaccard_{m}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                         else float("nan"))
            else:
                numbers[f"calib_spearman_{m}_{g}"] = numbers[f"calib_jaccard_{m}_{g}_kmax"] = float("nan")
    rows = comparisons[(comparisons["calibration"] == f"{second} vs {first}") & (comparisons["metric"] == "accuracy")]
    if model is not None:
        rows = rows[rows["model"] == model]
    same = _same_blocks(acc, first, second)
    if rows.empty:
        numbers.update(calib_max_acc_diff=float("nan"), calib_max_acc_diff_ci="not measured", calib_changed=0,
                       calib_settings=0, calib_same_blocks=same, calib_verdict="not measured")
        return numbers
    worst = rows.loc[rows["diff"].abs().idxmax()]
    changed = int((holm(rows["p_value"].to_numpy()) < SIGNIFICANCE).sum())
    verdict = calibration_change(changed, len(rows), float(worst["diff"]), worst["ci_low"], worst["ci_high"],
                                 SIGNIFICANCE)
    numbers.update(calib_max_acc_diff=abs(float(worst["diff"])),
                   calib_max_acc_diff_ci=f"95 % CI {worst['ci_low']:.1f} to {worst['ci_high']:.1f}",
                   calib_changed=changed, calib_settings=len(rows), calib_same_blocks=same, calib_verdict=verdict.text)
    return numbers


def _same_blocks(acc: pd.DataFrame, first: str, second: str) -> int:
    """Settings (criterion, granularity, K > 0) in which the two calibration sets drop identical blocks
    (the baselines, which ignore the calibration set, left out)."""
    keys = ["model", "method", "granularity", "K"]
    criteria = acc[(acc["K"] > 0) & acc["method"].isin(STANDARD_METHODS)]
    a = criteria[criteria["calibration"] == first].set_index(keys)["dropped"]
    b = criteria[criteria["calibration"] == second].set_index(keys)["dropped"]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    return int((both["a"] == both["b"]).sum())


def speed_numbers(speed: pd.DataFrame) -> dict[str, Any]:
    """Speed numbers at the largest measured K per granularity ``g`` (attn/layer) and phase ``p``
    (prefill/decode): ``{g}_{p}_speedup`` (measured), ``{g}_{p}_expected`` (FLOPs), ``{g}_{p}_efficiency``
    (share of the FLOP-proportional gain), ``{g}_{p}_verdict``; ``{g}_kv_cache_ratio`` (KV cache held,
    pruned / dense), ``{g}_params_ratio``, ``speed_k_max``, ``speed_device``."""
    k_max = int(speed["K"].max())
    numbers: dict[str, Any] = {"speed_k_max": k_max, "speed_device": str(speed["device"].iloc[0])}
    for g in STANDARD_GRANULARITIES:
        rows = speed[(speed["granularity"] == g) & (speed["K"] == k_max)]
        dense = speed[(speed["granularity"] == g) & (speed["K"] == 0)]
        for p in ("prefill", "decode"):
            measured = float(rows[f"measured_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            expected = float(rows[f"expected_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            efficiency = speedup_efficiency(measured, expected)
            numbers.update({f"{g}_{p}_speedup": measured, f"{g}_{p}_expected": expected,
                            f"{g}_{p}_efficiency": efficiency, f"{g}_{p}_verdict": speed_verdict(efficiency)})
        numbers[f"{g}_kv_cache_ratio"] = float(rows["kv_cache_ratio"].iloc[0]) if len(rows) else float("nan")
        numbers[f"{g}_params_ratio"] = (float(rows["params"].iloc[0] / dense["params"].iloc[0])
                                        if len(rows) and len(dense) else float("nan"))
    return numbers


# ---------------------------------------------------------------- publishing

def native(value: Any) -> Any:
    """A plain Python value for glue: numpy scalars unwrapped, None and missing as NaN for numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return float(value)
    return value


def glue_values(values: Mapping[str, Any]) -> pd.DataFrame:
    """Publish ``values`` with ``myst_nb.glue`` (not displayed) and return them as a table to show."""
    from myst_nb import glue

    clean = {key: native(value) for key, value in values.items()}
    for key, value in clean.items():
        glue(key, value, display=False)
    shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in clean.values()]
    return pd.DataFrame({"key": list(clean), "value": shown}).set_index("key")


# ---------------------------------------------------------------- the evidence: paired comparisons

PRIMARY_PAIR = ("knn", "cosine")
SIGNIFICANCE = 0.05


def evidence_numbers(comparisons: pd.DataFrame, examples: pd.DataFrame, acc: pd.DataFrame, model: str,
                     calibration: str, num_layers: int, prefix: str) -> dict[str, Any]:
    """The verdicts of one model, read from its rows of the comparisons table (``prefix`` names the model's
    glue keys, ``m1``/``m2``), at the headline K (the K closest to 37.5 % of the layers) on ``calibration``:

    ``{p}_model``, ``{p}_num_layers``, ``{p}_headline_k``, ``{p}_headline_pct``, ``{p}_drops``,
    ``{p}_n_primary`` and ``{p}_n_other`` (examples per pruning over the tasks of mean accuracy, the random
    seeds pooled); per granularity ``g``:
    ``{p}_{g}_knn_vs_cosine`` (verdict with its 95 % CI), ``{p}_{g}_knn_vs_cosine_halfwidth``,
    ``{p}_{g}_knn_vs_cosine_mdd`` (smallest difference the run could detect, 80 % power),
    ``{p}_{g}_knn_vs_cosine_ppl``, ``{p}_{g}_{m}_vs_{b}`` for m in knn/cosine and b in random/last,
    ``{p}_{g}_{m}_retention`` (% of dense, with its CI, text) and ``{p}_{g}_{m}_chance_retention``,
    ``{p}_{g}_{m}_headline_verdict`` (95 % of dense kept?), and over every K > 0 of the curve
    ``{p}_{g}_curve_verdict`` (how many K each criterion is ahead at, Holm-adjusted p < 0.05).
    """
    here = comparisons[(comparisons["model"] == model) & (comparisons["calibration"] == calibration)]
    ks = sorted(k for k in acc.loc[acc["model"] == model, "K"].unique())
    head = headline_k(ks, num_layers)
    rows = examples[(examples["model"] == model) & (examples["calibration"] == calibration)]
    counted = rows[(rows["metric"] == "acc") & rows["task"].map(in_mean_accuracy)]
    pooled = counted["method"].where(~counted["method"].str.startswith(RANDOM_PREFIX), "random")  # seeds on shards
    sizes = counted.groupby([pooled, "granularity", "K"])["doc_id"].count()
    numbers: dict[str, Any] = {
        f"{prefix}_model": model, f"{prefix}_num_layers": num_layers, f"{prefix}_headline_k": head,
        f"{prefix}_headline_pct": 100 * head / num_layers, f"{prefix}_drops": ", ".join(map(str, ks)),
        f"{prefix}_n_primary": int(sizes.max()) if len(sizes) else 0,
        f"{prefix}_n_other": int(sizes.min()) if len(sizes) else 0,
    }

    def row(g: str, k: int, a: str, b: str, metric: str = "accuracy") -> dict:
        found = here[(here["granularity"] == g) & (here["K"] == k) & (here["method_a"] == a)
                     & (here["method_b"] == b) & (here["metric"] == metric)]
        return found.iloc[0].to_dict() if len(found) else {}

    for g in STANDARD_GRANULARITIES:
        primary = row(g, head, *PRIMARY_PAIR)
        numbers[f"{prefix}_{g}_knn_vs_cosine"] = verdict(primary, "KNN", "cosine")
        numbers[f"{prefix}_{g}_knn_vs_cosine_halfwidth"] = (primary["ci_high"] - primary["ci_low"]) / 2 if primary else math.nan
        numbers[f"{prefix}_{g}_knn_vs_cosine_mdd"] = primary.get("mdd", math.nan)
        numbers[f"{prefix}_{g}_knn_vs_cosine_ppl"] = verdict(row(g, head, *PRIMARY_PAIR, "perplexity"), "KNN", "cosine")
        for m in PRIMARY_PAIR:
            for b in (RANDOM, LAST):
                numbers[f"{prefix}_{g}_{m}_vs_{b}"] = verdict(row(g, head, m, b), criteria.short(m), f"{b} K" if b == LAST
                                                              else "random drop sets")
            where = {"model": model, "calibration": calibration, "method": m, "granularity": g}
            numbers.update(_retention_numbers(row(g, head, m, DENSE), lookup(acc, "mean", **where, K=0),
                                              lookup(acc, "chance", **where, K=head), f"{prefix}_{g}_{m}"))
        numbers[f"{prefix}_{g}_curve_verdict"] = _curve_verdict(here, g)
    return numbers


def _retention_numbers(versus_dense: Mapping[str, Any], dense: float, chance: float, key: str) -> dict[str, Any]:
    """Retention (% of the dense accuracy ``dense``) of one pruning with its 95 % CI, from its paired
    comparison row against the dense model; retention above ``chance``; and whether 95 % is kept."""
    if not versus_dense or math.isnan(dense):
        return {f"{key}_retention": "not measured", f"{key}_chance_retention": math.nan,
                f"{key}_headline_verdict": "not measured"}
    kept = [100 * (1 + versus_dense[c] / (100 * dense)) for c in ("diff", "ci_low", "ci_high")]
    above = chance_retention(dense + versus_dense["diff"] / 100, dense, chance)
    headline = retention_headline(kept[1], kept[2], HEADLINE_RETENTION).text
    return {f"{key}_retention": f"{kept[0]:.1f} % (95 % CI {kept[1]:.1f} to {kept[2]:.1f})",
            f"{key}_chance_retention": above, f"{key}_headline_verdict": headline}


def _curve_verdict(comparisons: pd.DataFrame, granularity: str) -> str:
    """How many K > 0 of the curve each primary criterion is ahead at, Holm-adjusted over those K."""
    a, b = PRIMARY_PAIR
    rows = comparisons[(comparisons["granularity"] == granularity) & (comparisons["method_a"] == a)
                       & (comparisons["method_b"] == b) & (comparisons["metric"] == "accuracy")]
    significant = holm(rows["p_value"].to_numpy()) < SIGNIFICANCE
    ahead_a = int((significant & (rows["diff"].to_numpy() > 0)).sum())
    ahead_b = int((significant & (rows["diff"].to_numpy() < 0)).sum())
    return curve(criteria.short(a), criteria.short(b), ahead_a, ahead_b, len(rows)).text


def missing_model_numbers(prefix: str) -> dict[str, Any]:
    """The glue keys of :func:`evidence_numbers` for a model the run does not have, as "not measured"."""
    numbers: dict[str, Any] = {f"{prefix}_{k}": "not measured" for k in ("model", "drops", "num_layers", "headline_k",
                                                                          "n_primary", "n_other")}
    numbers[f"{prefix}_headline_pct"] = math.nan
    for g in STANDARD_GRANULARITIES:
        texts = ["knn_vs_cosine", "knn_vs_cosine_ppl", "curve_verdict"]
        texts += [f"{m}_vs_{b}" for m in PRIMARY_PAIR for b in (RANDOM, LAST)]
        texts += [f"{m}_{what}" for m in PRIMARY_PAIR for what in ("retention", "headline_verdict")]
        numbers.update({f"{prefix}_{g}_{t}": "not measured" for t in texts})
        numbers.update({f"{prefix}_{g}_{t}": math.nan for t in ("knn_vs_cosine_halfwidth", "knn_vs_cosine_mdd",
                                                                *(f"{m}_chance_retention" for m in PRIMARY_PAIR))})
    return numbers


# ---------------------------------------------------------------- the league

def league_numbers(rho: pd.DataFrame, costs: pd.DataFrame, heads: Mapping[str, int],
                   model_runs: Sequence[str]) -> dict[str, Any]:
    """The league's glue values, per model (prefix ``m1``/``m2``, in run order; a missing model "not
    measured") and granularity ``g``: ``{p}_model``; ``{p}_{g}_best_rho`` (the criterion with the
    highest ρ with the yardstick, with its interval), ``{p}_{g}_knn_rho`` (KNN's ρ, interval and rank
    among the criteria), ``{p}_{g}_last_rho`` (reverse order's), ``{p}_{g}_knn_verdict`` (whether KNN
    entropy is the best, apart from the best, or not separated from it, and whether last K does as well,
    judged by whether the 95 % intervals overlap); for the granularities of the curves
    ``{p}_{g}_best_cost`` (the criterion whose drop set costs least on held-out text at the headline K,
    with its interval, beside the random and last-K drop sets'); ``{p}_{g}_{c}_cell`` for each criterion
    ``c`` of ``LEAGUE_ROWS`` (ρ with its interval, and the held-out cost of its drop set at the headline
    K where evaluated: one cell of the summary's league table)."""
    numbers: dict[str, Any] = {}
    for index, prefix in enumerate(("m1", "m2")):
        model = model_runs[index] if index < len(model_runs) else None
        numbers[f"{prefix}_model"] = model or "not measured"
        for g in ("attn", "mlp", "layer"):
            mine = rho[(rho["model"] == model) & (rho["granularity"] == g)] if model else rho.iloc[:0]
            ranked = mine[mine["criterion"] != LAST].sort_values("rho", ascending=False).reset_index(drop=True)
            numbers[f"{prefix}_{g}_best_rho"] = (f"{criteria.short(ranked['criterion'][0])}, "
                                                 f"{_rho_text(ranked.iloc[0])}" if len(ranked) else "not measured")
            knn = ranked.index[ranked["criterion"] == "knn"]
            numbers[f"{prefix}_{g}_knn_rho"] = (f"{_rho_text(ranked.iloc[knn[0]])}, rank {knn[0] + 1} of {len(ranked)}"
                                                if len(knn) else "not measured")
            last = mine[mine["criterion"] == LAST]
            numbers[f"{prefix}_{g}_last_rho"] = _rho_text(last.iloc[0]) if len(last) else "not measured"
            numbers[f"{prefix}_{g}_knn_verdict"] = _entropy_verdict(ranked, last)
            here = costs[(costs["model"] == model) & (costs["granularity"] == g)
                         & (costs["K"] == heads.get(model, -1))] if model else costs.iloc[:0]
            for name in LEAGUE_ROWS:
                numbers[f"{prefix}_{g}_{name}_cell"] = _league_cell(mine, here, name)
            rival = here[~here["method"].isin([RANDOM, LAST])].sort_values("cost")
            if len(rival):
                top = rival.iloc[0]
                text = f"{criteria.short(top['method'])}, {top['cost']:.3f} [{top['ci_low']:.3f}, {top['ci_high']:.3f}]"
                for base, name in ((RANDOM, "random drop sets"), (LAST, "last K")):
                    found = here[here["method"] == base]
                    if len(found):
                        text += f"; {name} {found['cost'].iloc[0]:.3f}"
                numbers[f"{prefix}_{g}_best_cost"] = text + " nats/token"
            else:
                numbers[f"{prefix}_{g}_best_cost"] = "not measured"
    return numbers


# The rows of the summary's league table, in its order.
LEAGUE_ROWS = ("knn", "bucket", "renyi", "cosine", "angular", "ppl", "sleb", "taylor", LAST)


def _league_cell(rho: pd.DataFrame, costs: pd.DataFrame, name: str) -> str:
    """ρ with its interval and, where evaluated, the held-out cost at the headline K, as one table cell."""
    found = rho[rho["criterion"] == name]
    if found.empty:
        return "–"
    text = _rho_text(found.iloc[0]).replace("ρ = ", "")
    cost = costs[costs["method"] == name]
    return text + (f"; cost {cost['cost'].iloc[0]:.2f}" if len(cost) else "")


def _entropy_verdict(ranked: pd.DataFrame, last: pd.DataFrame) -> str:
    """KNN entropy against the best criterion and reverse order, by their ρ intervals (in words)."""
    if ranked.empty or not (ranked["criterion"] == "knn").any():
        return "not measured"
    knn = ranked[ranked["criterion"] == "knn"].iloc[0]
    top = ranked.iloc[0]
    if top["criterion"] == "knn":
        text = "KNN entropy follows the yardstick best"
    elif knn["ci_high"] < top["ci_low"]:
        text = f"{criteria.short(top['criterion'])} follows the yardstick better than KNN entropy (intervals apart)"
    else:
        text = (f"{criteria.short(top['criterion'])} has the highest ρ, but its interval overlaps KNN's: this run "
                "does not separate them")
    if len(last) and last["rho"].iloc[0] >= knn["ci_low"]:
        text += "; last K does as well as KNN (its ρ lies within or above KNN's interval)"
    return text


def _rho_text(row: Mapping[str, Any]) -> str:
    low, high = row["ci_low"], row["ci_high"]
    interval = f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"ρ = {row['rho']:.2f}{interval}"
