"""Dahl et al., "A mammography classification model trained from image labels only" (doi:10.7557/18.6244).

The infer task ``classification`` and the train task ``train_classifier``:

* :mod:`.network`: the Holistic and Attention ResNets, the gradient saliency and centre of attention,
  the ROI, the Ensemble and the examination score (§3.1-§3.4, §4.2).
* :mod:`.analysis`: the pipeline on one canonical image and the saliency labelmap.
* :mod:`.options`: the training options (§4.2); :mod:`.training`: the ``holistic`` and ``attention`` stages.
* :mod:`.inference`: the :class:`~mammolabel.methods.contract.Method` (prediction, examination over the
  patient's other views, §3.4); :mod:`.evaluation`: evaluation rows and their AUCs per model (§5).
"""

from mammolabel.methods.dahl.inference import DahlMethod

METHOD = DahlMethod()
