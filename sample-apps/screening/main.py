"""MammoLabel screening: is this film suspicious, and where should the reader look?

Serves Dahl et al.'s ``classification`` (malignancy risk of the image and the examination, with the
saliency and attention ROI) and Liang et al.'s ``localization`` (lesion points and heatmap), both trained
from image-level findings alone, and the ``uncertainty`` strategy that sends the reader the film the two
models are least sure of (``POST /scoring/uncertainty`` first). Built from the ``mammolabel`` library:

    monailabel start_server --app sample-apps/screening --studies DATASTORE
"""

from monailabel.interfaces.app import MONAILabelApp

from mammolabel.tasks import app


class ScreeningApp(app.MammoApp, MONAILabelApp):
    title = "MammoLabel screening"
    summary = "Malignancy risk and lesion points from image-level findings"
    tasks = ("classification", "localization")
    strategies = ("uncertainty", "random")
