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
