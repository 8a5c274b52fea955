"""Screenshots of the Embeddings dock and the context-eval dialog from real runs on the starter (README pictures).

    python -m app.analysis_screenshots OUT_DIR [EVAL_REPORT.json]

The embeddings come from the starter in an engine child; the eval picture draws the report that
`ingle eval-context --compare ... --json EVAL_REPORT.json` saved (nothing in either picture is made up here).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

CONTEXT = (
    "The king and the queen travelled from Paris to London in the spring. They spoke about music, "
    "painting and the history of the old castle, and the children asked why the river was so cold."
)


def render_embeddings(out_dir: Path, token: str = " king") -> Path:
    from app.screenshots import qt_app
    from app.visualizers.embeddings import EmbeddingsView
    from engine.events import ModelLoaded
    from engine.host import EngineHost
    from engine.library import Library
    from engine.settings import LoadSettings

    app = qt_app()
    starter = Library().ensure_starter().file
    with EngineHost() as host:
        loaded = [e for e in host.load(starter, LoadSettings(n_ctx=1024)) if isinstance(e, ModelLoaded)]
        assert loaded
        started = time.perf_counter()
        first = host.token_neighbours(token, 15)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        again = host.token_neighbours(token, 15)
        again_s = time.perf_counter() - started
        host.evaluate_text(CONTEXT)
        projection = host.embedding_projection(None)
    print(f"neighbours of {token!r}: first call {first_s:.2f} s (engine {first.seconds:.2f} s, cached "
          f"{first.cached}), again {again_s:.3f} s (engine {again.seconds:.3f} s, cached {again.cached})")  # fmt: skip
    print("  " + ", ".join(f"{n.piece!r} {n.score:.3f}" for n in again.neighbours))
    view = EmbeddingsView()
    view.resize(1000, 470)
    view.token_box.setText(token)
    view.show_neighbours(again)
    view.show_projection(projection)
    view.show()
    app.processEvents()
    path = out_dir / "embeddings.png"
    view.grab().save(str(path))
    return path


def render_eval_context(out_dir: Path, report_path: Path) -> Path:
    from app.eval_context_dialog import ContextEvalDialog
    from app.screenshots import qt_app
    from engine.settings import LoadSettings

    app = qt_app()
    report = json.loads(report_path.read_text())
    stretched = report["runs"][-1]["rope"]
    dialog = ContextEvalDialog(report["model"], LoadSettings.from_dict(stretched))
    dialog.lengths.setText(",".join(str(n) for n in report["lengths"]))
    dialog.depths.setText(",".join(str(d) for d in report["depths"]))
    dialog.resize(900, 470)
    dialog.show()
    dialog._done(report)
    app.processEvents()
    path = out_dir / "eval-context.png"
    dialog.grab().save(str(path))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(render_embeddings(out))
    if len(sys.argv) > 2:
        print(render_eval_context(out, Path(sys.argv[2])))
