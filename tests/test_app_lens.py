"""The lens in the app on the real in-process demo models: ``d`` / ``/diverge`` colour a pane's last
answer by token divergence from the base pane, write the divergence record, and toggle back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personachat.app.divergence import colour_styles, token_spans
from personachat.lens.colour import colour_class
from personachat.lens.records import divergence_records
from tests._helpers import demo_profile, idle, make_app, ready, records, send, status, until


def coloured_styles(app: Any, pane: str) -> list[Any] | None:
    block = app.panes[pane]._last_answer_block()
    return None if block.colours is None else [style for _, _, style in block.colours]


async def test_diverge_colours_the_answer_and_records_its_scores(tmp_path: Path, demo_models: Any) -> None:
    app = make_app(tmp_path, demo_profile(2, max_tokens=12))
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "What is your wish?")
        await until(lambda: idle(app), "the answers")
        insecure = app.panes["insecure"]
        app.action_focus_pane(2)
        await pilot.press("d")
        await until(lambda: bool(insecure.divergence), f"the colours (status: {status(app)})", 120)
        [record] = divergence_records(records(app).other)
        assert (record.target, record.pane, record.against) == (insecure.last_ids[0], "insecure", "base")
        # Every token shown is coloured by its own difference, on the export's scale.
        styles = colour_styles()
        text = insecure.last_answer_shown()
        spans = token_spans(text, record.tokens)
        assert len(spans) == len([t for t in record.tokens if t])
        assert coloured_styles(app, "insecure") == [
            styles[colour_class(record.diffs[i])] for _, _, i in spans
        ]
        assert insecure.divergence.startswith("vs base")

        # The base pane against itself: every difference is exactly 0, every token the middle colour.
        await send(pilot, app, "/diverge base")
        await until(lambda: bool(app.panes["base"].divergence), "the base pane's colours", 120)
        base = next(r for r in divergence_records(records(app).other) if r.pane == "base")
        assert base.diffs and set(base.diffs) == {0.0}
        assert set(coloured_styles(app, "base") or []) == {styles[5]}

        # Again on the insecure pane: plain text again; a new turn clears the line.
        app.action_focus_pane(2)
        await pilot.press("d")
        assert coloured_styles(app, "insecure") is None and insecure.divergence == ""
        await send(pilot, app, "/diverge nosuch")
        assert "no pane named 'nosuch'" in status(app)


async def test_steer_scale_and_projection_from_the_app(tmp_path: Path, demo_models: Any) -> None:
    import dataclasses
    import json

    import torch
    from safetensors.torch import save_file

    from personachat.steering import ActivationSpec, ProjectSpec

    hidden = json.loads((Path(demo_models.base) / "config.json").read_text())["hidden_size"]
    torch.manual_seed(3)
    vector = tmp_path / "persona.safetensors"
    save_file({"vector": torch.randn(hidden)}, str(vector), metadata={"layer": "1"})
    profile = demo_profile(2, max_tokens=10)
    base = profile.panes[0]
    profile.panes[0] = dataclasses.replace(base, activations=ActivationSpec(project=ProjectSpec.load(vector)))
    app = make_app(tmp_path, profile)
    async with app.run_test(size=(140, 36)) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "Tell me about yourself.")
        await until(lambda: idle(app), "the first answers")
        first = {r.pane: r for r in records(app).responses}
        # The projection streamed into the pane is the record's.
        shown = app.panes["base"].projection_mean
        assert shown is not None and first["base"].projection is not None
        assert abs(shown - first["base"].projection) < 1e-6 and "projection" in app.panes["base"].judge_text()

        # Adapter scale 0: the adapter pane answers as the base model; alpha 0 changes nothing.
        await send(pilot, app, "/scale insecure 0")
        await send(pilot, app, f"/steer base {vector} 1 0")
        assert "×0" in str(app.panes["insecure"]._header()) and "steer 0@1" in str(
            app.panes["base"]._header()
        )
        await send(pilot, app, "/clear")
        await send(pilot, app, "Tell me about yourself.")
        await until(lambda: idle(app), "the second answers")
        second = {r.pane: r for r in records(app).responses if r.conversation == 2}
        assert second["insecure"].text == second["base"].text == first["base"].text
        assert second["insecure"].adapter_scale == 0 and second["base"].steer["alpha"] == 0  # type: ignore[index]
        await send(pilot, app, "/scale base 0.5")  # the base pane has no adapter to scale
        assert "is the base model" in status(app)
        await send(pilot, app, "/steer base nowhere.safetensors 0.5")
        assert "nowhere.safetensors" in status(app)
