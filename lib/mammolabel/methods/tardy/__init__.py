"""Tardy & Mateus, "Improving Mammography Malignancy Segmentation with a Semi-Supervised Training Process".

- :mod:`.network`: the U-Net for full-size mammograms (Section 2: separable convolutions, short skips,
  top long skips removed, instance norm and leaky ReLU) and the subtraction layer ``O = I - U(I)`` (Fig. 1),
  or the plain sigmoid head of the baseline (Table 1, "fully supervised segmentation").
- :mod:`.transforms`: the self-supervised corruptions (Section 2, "Self-supervised training": gamma,
  irregular in-painting and out-painting, after Models Genesis).
- :mod:`.loss`: the loss of the subtraction output (the paper names none).
- :mod:`.options`, :mod:`.training`: stage 1 ``pretrain_reconstruction`` (restore corrupted normal/benign
  images) and stage 2 ``train_discriminative`` (malignant masks, from stage 1's weights); Table 1's Dice
  at the best epoch and averaged over the last 10.
- :mod:`.inference`: :class:`~.inference.TardyMethod`, the infer task ``discriminative_segmentation``.
"""

from mammolabel.methods.tardy.inference import TardyMethod

METHOD = TardyMethod()
