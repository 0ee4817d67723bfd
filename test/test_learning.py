"""Real learning on real images: the shipped demo model against raw pixels and its untrained self.

Winter queries against the summer map, correct within +-2 frames, on frames the model never trained
on: the 200 bundled places (every checkout; they lie in the validation span, which chose the epoch),
and the test span (the last 15 % of the route) where the full Nordland set is present.
"""

from __future__ import annotations

import torch

from selavpr_ros.datasets.sequence import load_sequence_eval
from selavpr_ros.evaluation.baselines import descriptor_recall, pixel_recall
from selavpr_ros.inference.loader import open_extractor
from selavpr_ros.inference.torch_backend import TorchExtractor
from selavpr_ros.models.checkpoint import read_checkpoint
from selavpr_ros.models.weights import create_model
from selavpr_ros.models.zoo import builtin_checkpoint


def _recalls(root, span):
    path = builtin_checkpoint()
    assert path.stat().st_size <= 20 * 2**20
    eval_set = load_sequence_eval(root, span=span, tolerance=2)

    def recall(extractor):
        db = extractor.extract(eval_set.database, batch_size=256)
        q = extractor.extract(eval_set.queries, batch_size=256)
        return descriptor_recall(db, q, eval_set.positives, (1, 5))

    trained = recall(open_extractor(path, device="cpu"))
    torch.manual_seed(0)
    untrained = recall(TorchExtractor(create_model(read_checkpoint(path).config), device="cpu"))
    pixels = pixel_recall(eval_set, (1, 5))
    print({"pixels": pixels, "untrained": untrained, "trained": trained})
    return pixels, untrained, trained


def test_demo_model_learned_what_its_untrained_self_cannot(nordland):
    """The bundled stretch (measured: R@1 33.5 trained, 5.0 untrained, 33.0 raw pixels)."""
    pixels, untrained, trained = _recalls(nordland, (0.0, 1.0))
    assert trained["float"][1] >= untrained["float"][1] + 20 and trained["float"][5] >= untrained["float"][5] + 30
    assert trained["binary"][1] >= untrained["binary"][1] + 15
    assert trained["float"][5] >= pixels[5] - 5  # on par with pixels on this easy stretch


def test_demo_model_beats_pixels_and_untrained_by_a_wide_margin(nordland_full):
    """The test span of the whole route (the last 15 %, 536 places), never used for a choice."""
    pixels, untrained, trained = _recalls(nordland_full, (0.85, 1.0))
    assert trained["float"][1] >= 1.4 * pixels[1]
    assert trained["float"][5] >= pixels[5] + 5
    assert trained["float"][1] >= untrained["float"][1] + 12
    assert trained["binary"][1] >= untrained["binary"][1] + 8
