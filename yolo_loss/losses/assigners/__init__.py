"""Dynamic label assignment over every candidate of the anchor-based head: TAL (``tal.py``), SimOTA
(``simota.py``) and ATSS (``atss.py``), each a pure ``no_grad`` function equal to its authors' code.

The candidates. A head of levels with strides ``s_l`` (8, 16, 32), ``A`` anchors each and ``H_l x W_l`` cells has
``N = sum_l A * H_l * W_l`` candidates, flattened level by level, then anchor, then cell row, then cell column:
candidate ``offset_l + (a * H_l + y) * W_l + x``. Every assigner reads them as flat tensors in input pixels:

- ``points``: ``Tensor[N, 2]`` the candidate's cell centre ``((x + 0.5) * s, (y + 0.5) * s)``;
- ``strides``: ``Tensor[N]`` its level's stride;
- ``anchor_boxes``: ``Tensor[N, 4]`` xyxy, its anchor's width and height centred on ``points`` (ATSS);
- ``level_sizes``: the number of candidates of each level, in order (ATSS's top-k is per level);
- ``pred_boxes``: ``Tensor[B, N, 4]`` the decoded, detached predicted boxes, xyxy (TAL, SimOTA);
- ``pred_scores``: ``Tensor[B, N, C]`` the class probabilities the method's cost reads (TAL, SimOTA);

and the truths padded to ``M`` per image: ``truth_boxes`` ``Tensor[B, M, 4]`` xyxy, ``truth_labels``
``Tensor[B, M]`` int64 and ``truth_mask`` ``Tensor[B, M]`` bool (``False``: padding, which the criterion puts after
an image's truths, so that truth 0 is a real one wherever the image has any: TAL falls back to it). Boxes, anchors
and scores share one floating dtype. TAL also takes ``min_truth_side``, the head's second stride (ultralytics'
``stride_val``).

Each returns an :class:`Assignment`; ``candidates.py`` lays out the head's candidates, calls the configured one and
turns its positives into rows of :class:`~yolo_loss.losses.assign.LevelTargets` for the criterion.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Assignment:
    """The positives of a batch, one entry per (image, candidate).

    Attributes:
        fg: ``Tensor[B, N]`` bool: the candidate is a positive.
        truth: ``Tensor[B, N]`` int64: the index (into the image's ``M`` truths) of the truth a positive regresses
            to; 0 where ``fg`` is False.
        cls_target: ``Tensor[B, N, C]`` float: the class target of each positive, soft where the method defines
            one (TAL's normalised alignment metric, SimOTA's IoU with its truth), one-hot otherwise (ATSS);
            0 where ``fg`` is False.
    """

    fg: Tensor
    truth: Tensor
    cls_target: Tensor
