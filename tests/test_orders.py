"""Drop orders as results files store them."""

from __future__ import annotations


def test_an_order_with_unscored_protected_layers_round_trips_through_strict_json():
    import json
    import math

    from companion.method.orders import DropOrder

    order = DropOrder("ppl", "attn", [3, 2], [0, 1], [math.nan, math.nan, 0.5, 0.1], 4)
    text = json.dumps(order.to_json(), allow_nan=False)  # results files refuse NaN
    back = DropOrder.from_json(json.loads(text))
    assert back.order == [3, 2] and back.values[2:] == [0.5, 0.1] and math.isnan(back.values[0])


def test_baseline_names_and_random_seeds_read_back():
    from companion.method.orders import baseline_order
    from companion.names import LAST, RANDOM, baseline_names, random_seed

    names = baseline_names([RANDOM, LAST], 3)
    assert names == ["random:0", "random:1", "random:2", LAST] and baseline_names([LAST], 3) == [LAST]
    assert [random_seed(n) for n in names] == [0, 1, 2, None] and random_seed("random:x") is None
    first, again = baseline_order(names[1], "attn", 6, [0, 5]), baseline_order(names[1], "attn", 6, [0, 5])
    assert first.order == again.order and sorted(first.order) == [1, 2, 3, 4]
    assert baseline_order(LAST, "attn", 6, [0, 5]).order == [4, 3, 2, 1]
