"""GLAM: global-local weakly-supervised high-resolution segmentation (Liu et al., MIDL 2021).

Kangning Liu, Yiqiu Shen, Nan Wu, Jakub Chledowski, Carlos Fernandez-Granda, Krzysztof J. Geras,
"Weakly-supervised High-resolution Segmentation of Mammography Images for Breast Cancer
Diagnosis" (``shared/papers/liu-glam-weakly-supervised-segmentation.md``). Modules:

- :mod:`.network`: the model of Fig. 2 (global module, Fig. 6; local module, Fig. 7; fusion);
- :mod:`.patches`: patch selection at the peaks of the global saliency, crops and pasting back (Fig. 2, step 2);
- :mod:`.loss`: BCE plus sparsity of each training stage (Fig. 3);
- :mod:`.options`: the options of ``train_glam`` (the paper's configuration as defaults);
- :mod:`.training`: the three training stages global, local, joint (Fig. 3), thresholds chosen on validation;
- :mod:`.predict`: one image through the trained model (maps, predictions, patch boxes, labelmap);
- :mod:`.inference`: :class:`~.inference.GlamMethod`, the infer task ``glam_segmentation`` and its evaluation.
"""

from mammolabel.methods.glam.inference import GlamMethod

METHOD = GlamMethod()
