"""Xiong et al., hybrid strong/weak mass segmentation: infer task ``hybrid_segmentation``, train task ``train_hybrid``.

Xinyu Xiong, Churan Wang, Wenxue Li, Guanbin Li, "Semi- and weakly-supervised learning for
mammogram mass segmentation with limited annotations" (ISBI 2024;
``shared/papers/xiong-hybrid-strong-weak-segmentation.md``).

- :mod:`.network`: the framework of Fig. 2 (shared encoder, background and segmentation decoders,
  feature-level disentanglement Sec. 2.2, spatial prompting Sec. 2.3).
- :mod:`.loss`: the pixel-position-aware (Eq. 1), uncertain-area perception (Eq. 2) and total (Eq. 3)
  losses, and the reversed box mask of Fig. 1e.
- :mod:`.options`: ``train_hybrid``'s options, the implementation details of Sec. 3.2 as defaults.
- :mod:`.training`: the label budget (10 % strong / 90 % weak, Sec. 3.1) and the one stage ``hybrid``.
- :mod:`.inference`: :class:`~.inference.XiongMethod`, prediction (lesion and uncertain-area labels) and
  evaluation rows.
"""

from mammolabel.methods.xiong.inference import XiongMethod

METHOD = XiongMethod()
