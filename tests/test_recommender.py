"""The Python facade (:mod:`miir.recommender`) and its batch CLI: loading a run, saving and
loading, recommending from catalogue ids and inline item records, imputing, batch scoring, and
MIIR's per-position side inputs (:class:`miir.models.miir.SideInputs`) it relies on."""

from __future__ import annotations

import torch

from helpers import random_windows, small_model
from miir.models.miir import SideInputs

# ---------------------------------------------------------------------- MIIR's side inputs


def test_side_inputs_from_the_tables_change_nothing() -> None:
    model = small_model("miir").eval()
    history = random_windows(4, 7, seed=3)
    side = model.side_inputs(history)
    assert isinstance(side, SideInputs) and side.present.shape == (4, 7, 4)
    torch.testing.assert_close(model.score(history, side=side), model.score(history))
    items = torch.cat([history, torch.ones(4, 1, dtype=torch.long)], 1)
    torch.testing.assert_close(
        model.impute(items, side=model.side_inputs(items))["brand"], model.impute(items)["brand"]
    )


def test_an_inline_item_is_a_catalogue_item_whose_id_is_hidden() -> None:
    """An item given by its side fields alone (id 1) is what the model sees of a catalogue item
    with the same fields whose ID is masked; and its fields do reach the scores."""
    model = small_model("miir").eval()
    history = random_windows(3, 6, seed=4, min_len=6)
    side = model.side_inputs(history)
    inline = history.clone()
    inline[:, 2] = 1  # the item at position 2 becomes a new item with the same side fields
    hidden = torch.zeros(3, 6, model.n_fields, dtype=torch.bool)
    hidden[:, 2, 0] = True
    torch.testing.assert_close(
        model(inline, torch.zeros_like(hidden), side=side), model(history, hidden)
    )
    # without its side fields, the new item is a blank one, and the scores move
    blank = model.side_inputs(inline)
    assert not blank.present[:, 2].any()
    assert not torch.allclose(model.score(inline, side=side), model.score(inline, side=blank))
    torch.testing.assert_close(model.score(inline, side=blank), model.score(inline))
