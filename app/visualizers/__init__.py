"""The visualizer widgets, one module per view: context bar, tokens, KV cache map and calculator, token
probabilities, sampling preview, timing. Each is painted with QPainter from plain data (engine.visual,
engine.kv); none talks to the engine: app.inspector feeds them."""

from app.visualizers.common import ROLE_COLORS, visible_piece
from app.visualizers.context import ContextBar, Segment, split_budget
from app.visualizers.kv import KVCacheMap, KVCalculator, kv_formula
from app.visualizers.preview import SamplingPreview
from app.visualizers.probabilities import TokenProbabilities, prob_color
from app.visualizers.timing import TimingBar
from app.visualizers.tokens import TokenPanel, TokenView

__all__ = [
    "ROLE_COLORS",
    "ContextBar",
    "KVCacheMap",
    "KVCalculator",
    "SamplingPreview",
    "Segment",
    "TimingBar",
    "TokenPanel",
    "TokenProbabilities",
    "TokenView",
    "kv_formula",
    "prob_color",
    "split_budget",
    "visible_piece",
]
