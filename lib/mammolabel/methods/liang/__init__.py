"""Liang et al., weakly-supervised self-training breast cancer localization (EMBC 2020).

Gongbo Liang, Xiaoqin Wang, Yu Zhang, Nathan Jacobs, "Weakly-Supervised Self-Training for Breast
Cancer Localization" (``shared/papers/liang-cam-self-training-localization.md``), from image-level
findings only. Which module holds what:

* :mod:`.inception`: the Inception-V3 feature blocks of the classification network (section II-D);
* :mod:`.network`: Fig. 2, the classifier with its CAM (section II-B), the self-training CNNs with
  their shared layers and trimaps (section II-C/D) and the softmax fusion of the test stage;
* :mod:`.loss`: the binary cross-entropy over a trimap's confident pixels (Eq. 1);
* :mod:`.options`: the training options, the paper's configuration as defaults (sections II-D, III-A);
* :mod:`.data`: the training items, positives in the paper's five versions (section III-A);
* :mod:`.training`: the stages, the classifier then one self-training round per tapped block;
* :mod:`.localize`: maps, lesion points and labelmap on one image;
* :mod:`.inference`: the method (infer task ``localization``, train task ``train_cam_self_training``).
"""

from mammolabel.methods.liang.inference import LiangMethod

METHOD = LiangMethod()
