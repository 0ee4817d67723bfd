"""Real learning on real images: the shipped demo model against raw pixels and its untrained self.

Held-out last 30 % of the Nordland route, winter queries against the summer
map, correct within +-2 frames (the model never saw these frames).
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


def test_demo_model_beats_pixels_and_untrained_by_a_wide_margin(nordland):
    path = builtin_checkpoint()
    assert path.stat().st_size <= 20 * 2**20
    ck = read_checkpoint(path)
    eval_set = load_sequence_eval(nordland, span=(0.7, 1.0), tolerance=2)
    pixels = pixel_recall(eval_set, (1, 5))

    def recall(extractor):
        db = extractor.extract(eval_set.database, batch_size=256)
        q = extractor.extract(eval_set.queries, batch_size=256)
        return descriptor_recall(db, q, eval_set.positives, (1, 5))

    trained = recall(open_extractor(path, device="cpu"))
    torch.manual_seed(0)
    untrained = recall(TorchExtractor(create_model(ck.config), device="cpu"))
    print({"pixels": pixels, "untrained": untrained, "trained": trained})
    assert trained["float"][1] >= 1.4 * pixels[1]
    assert trained["float"][5] >= pixels[5] + 5
    assert trained["float"][1] >= untrained["float"][1] + 12
    assert trained["binary"][1] >= untrained["binary"][1] + 8
