"""MammoLabel segmentation: lesion masks from a few masks and many cheap labels.

Serves Xiong et al.'s ``hybrid_segmentation`` (trained on a few masks and boxes for the rest) and Tardy &
Mateus's ``discriminative_segmentation`` (pretrained by reconstruction on unannotated films, then trained
on malignant masks), with the ``weak_first`` strategy: the next film is one with a box or an abnormal
finding but no mask, the cheapest upgrade to a strong label. Built from the ``mammolabel`` library:

    monailabel start_server --app sample-apps/segmentation --studies DATASTORE
"""

from monailabel.interfaces.app import MONAILabelApp

from mammolabel.tasks import app


class SegmentationApp(app.MammoApp, MONAILabelApp):
    title = "MammoLabel segmentation"
    summary = "Lesion masks from a few masks, boxes and unannotated films"
    tasks = ("hybrid_segmentation", "discriminative_segmentation")
    strategies = ("weak_first", "random")
