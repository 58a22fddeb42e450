"""3D Slicer module: FLAIR abnormality (lower-grade glioma) segmentation with the project's MONAI U-Net.

GUI wiring only. Everything that computes lives beside this file, in MONAIUNetSegLib (``mrml``, ``segmentations``,
``markups``, ``jobs`` + ``background`` (segmentation jobs), ``training_cases`` + ``finetuning`` (the correct, save,
fine-tune loop), ``models``, ``dependencies``), and in the Slicer-free core package ``monaiunetseg``. Research use
only, not for clinical use.
"""

import logging
import os
import pathlib
import sys
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# MONAIUNetSegLib sits beside this file (extension build and "additional module paths" alike).
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)

from MONAIUNetSegLib import background, dependencies, logic, models, mrml, segmentations, training_cases  # noqa: E402

DEVICES = ["auto", "cuda", "cpu"]
MODEL_CHOICES = models.model_sets() + [models.FOLDER_CHOICE]  # the shipped sets, or a folder made by finetune
POLL_INTERVAL_MS = 250


class MONAIUNetSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MONAI U-Net LGG FLAIR"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MONAIUNetSeg developers"]
        self.parent.helpText = (
            "Segments the FLAIR abnormality of lower-grade gliomas in a brain MRI FLAIR volume with a 2D MONAI U-Net "
            "(trained on the Kaggle LGG data set). The result is a segmentation with one segment, "
            "\"FLAIR abnormality\", on the input's grid; its volume is shown in mL. Inference runs in a background "
            "process (GPU when available). <b>Research use only, not for clinical use.</b>")
        self.parent.acknowledgementText = (
            "Model trained on the LGG segmentation data set (Buda, Saha, Mazurowski 2019; images from TCIA TCGA-LGG) "
            "with MONAI (https://monai.io).")


@parameterNodeWrapper
class MONAIUNetSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(DEVICES)] = "auto"
    model: Annotated[str, Choice(MODEL_CHOICES)] = models.DEFAULT_MODEL
    modelFolder: pathlib.Path
    createLabelmap: bool = False
    trainingFolder: pathlib.Path
    keepWorse: bool = False


class MONAIUNetSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MONAIUNetSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MONAIUNetSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.segmentAllButton.clicked.connect(self.onSegmentAll)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.addTrainingCaseButton.clicked.connect(self.onAddTrainingCase)
        self.ui.fineTuneButton.clicked.connect(self.onFineTune)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        if self._timer:
            self._timer.stop()
        if self.logic is not None:  # never leave a process running behind a closed module
            self.logic.cancelJobs()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event):
        self._cancelAll(quiet=True)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, calldata):
        # The input defaults to the most recently loaded scalar volume (selected once its data has arrived).
        if calldata.IsA("vtkMRMLScalarVolumeNode") and not calldata.IsA("vtkMRMLLabelMapVolumeNode"):
            nodeID = calldata.GetID()
            qt.QTimer.singleShot(0, lambda: self._selectInput(nodeID))

    def _selectInput(self, nodeID):
        volumeNode = slicer.mrmlScene.GetNodeByID(nodeID)
        if self._parameterNode and volumeNode is not None and volumeNode.GetImageData() is not None and not self.logic.isBusy():
            self._parameterNode.inputVolume = volumeNode
        self._updateButtons()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            latest = mrml.latest_scalar_volume(slicer.mrmlScene)
            if latest:
                self._parameterNode.inputVolume = latest

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None):
        busy = self.logic.isBusy()
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.segmentButton.enabled = hasInput and not busy
        self.ui.segmentAllButton.enabled = not busy and bool(mrml.scalar_volume_nodes(slicer.mrmlScene))
        self.ui.cancelButton.enabled = busy
        self.ui.inputsCollapsibleButton.enabled = not busy
        self.ui.modelFolderPathLineEdit.enabled = bool(self._parameterNode) and self._parameterNode.model == models.FOLDER_CHOICE
        self.ui.outputsCollapsibleButton.enabled = not busy
        self.ui.addTrainingCaseButton.enabled = hasInput and not busy
        self.ui.fineTuneButton.enabled = not busy

    # --- log -------------------------------------------------------------------------------------------------

    def _log(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info("MONAIUNetSeg: %s", text)

    # --- dependencies --------------------------------------------------------------------------------------

    def _ensureDependencies(self):
        missing = dependencies.missing()
        if not missing:
            return True
        text = dependencies.confirmation_text(missing)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MONAIUNetSeg: missing Python packages"):
            self._log("Missing Python packages not installed: " + ", ".join(d.requirement for d in missing))
            return False
        self._log("Installing " + ", ".join(d.requirement for d in missing) + " ...")
        try:
            with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
                dependencies.install(missing, background.temp_constraints())
        except Exception as error:  # already shown by tryWithErrorDisplay
            self._log(f"Installing the Python packages failed: {error}")
            return False
        still = dependencies.missing()
        if still:
            slicer.util.errorDisplay("Still missing after installation:\n\n" + dependencies.describe(still)
                                     + "\n\nRestart Slicer and try again, or install them from the Python console.",
                                     windowTitle="MONAIUNetSeg")
            return False
        self._log("Python packages installed.")
        return True

    # --- runs: the Logic's job queue, polled by the timer ----------------------------------------------------

    def onSegment(self):
        volumeNode = self._parameterNode.inputVolume
        if volumeNode is None:
            slicer.util.errorDisplay("Select an input volume first.", windowTitle="MONAIUNetSeg")
            return
        self._enqueue([volumeNode], self._parameterNode.outputSegmentation)

    def onSegmentAll(self):
        volumeNodes = mrml.scalar_volume_nodes(slicer.mrmlScene)
        if not volumeNodes:
            slicer.util.errorDisplay("No scalar volumes are loaded.", windowTitle="MONAIUNetSeg")
            return
        self._enqueue(volumeNodes)  # one new segmentation per scan

    def _enqueue(self, volumeNodes, segmentationNode=None):
        if self.logic.isBusy() or not self._ensureDependencies():
            return
        device = self._parameterNode.device
        try:
            choice = models.resolve(self._parameterNode.model, self._parameterNode.modelFolder)
        except models.ModelFolderError as error:
            slicer.util.errorDisplay(str(error), windowTitle="MONAIUNetSeg: model folder")
            return
        count = self.logic.enqueue(volumeNodes, device, segmentationNode, self._parameterNode.createLabelmap,
                                   model=choice.model, bundle=choice.bundle)
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.format = "%v / %m scans"
        self.ui.progressBar.setRange(0, 0 if count == 1 else count)
        self.ui.progressBar.setValue(0)
        self._log(f"Segmenting {count} scan(s) on device '{device}' with the {choice.describe()} ...")
        self._timer.start()
        self._poll()  # the first job starts now, not a tick later

    def _poll(self):
        """Timer tick: the queue moves on; its news goes to the log, the progress bar and the status line."""
        update, training = self.logic.pollJobs(), self.logic.pollFineTune()
        for line in update.lines + training.lines:
            self._log(line)
        for outcome in update.finished:
            self._showOutcome(outcome)
        if update.finished and update.total > 1:
            self.ui.progressBar.setValue(update.done)
        for request in update.started:
            self.ui.statusLabel.text = f"Segmenting '{request.name}' ..."
            self._log(self.ui.statusLabel.text)
        if update.ended:
            self._showSummary(update)
        for outcome in training.finished:
            self._showFineTuned(outcome)
        if self.logic.training.busy:
            self.ui.progressBar.setValue(round(100 * self.logic.fineTuneProgress()))
        if not self.logic.isBusy():
            self._timer.stop()
        self._updateButtons()

    def _showOutcome(self, outcome):
        name = outcome.request.name
        if not outcome.ok:
            logging.error("MONAIUNetSeg: segmentation of '%s' failed", name, exc_info=outcome.error)
            self._log(f"FAILED '{name}': {outcome.error}")
            return
        result = outcome.result
        self.ui.volumeLabel.text = f"{result.volumeMl:.1f} mL"
        verdict = result.verdictText()
        self.ui.reviewLabel.text = verdict or "-"
        self.ui.reviewLabel.setStyleSheet("color: #E69F00; font-weight: bold" if result.review else "")
        self.ui.measureLabel.text = result.measurementText()
        self._log(f"FLAIR abnormality in '{name}': {result.volumeMl:.1f} mL ({result.seconds:.0f} s)"
                  + (f"; {verdict}" if verdict else "") + f"; RANO {result.measurementText()}")

    def _showSummary(self, update):
        self.ui.progressBar.setVisible(False)
        failed = len(update.failures)
        self.ui.statusLabel.text = f"Done: {update.total - failed} of {update.total} scan(s) segmented."
        self._log(self.ui.statusLabel.text)
        if failed:
            details = "\n\n".join(f"{o.request.name}: {o.error}" for o in update.failures)
            slicer.util.errorDisplay(f"Segmentation failed for {failed} of {update.total} scan(s).",
                                     windowTitle="MONAIUNetSeg", detailedText=details)

    # --- the correct, save, fine-tune loop ------------------------------------------------------------------

    def onAddTrainingCase(self):
        p = self._parameterNode
        segmentationNode = p.outputSegmentation or (training_cases.result_of(p.inputVolume) if p.inputVolume else None)
        try:
            case = self.logic.addTrainingCase(p.inputVolume, segmentationNode, p.trainingFolder)
        except (ValueError, OSError) as error:
            slicer.util.errorDisplay(str(error), windowTitle="MONAIUNetSeg: training cases")
            return
        how = {True: "edited", False: "as the model made it", None: "not made by this module"}[case["edited"]]
        self._log(f"Training case '{case['case']}' added to {p.trainingFolder} ({how}; model: {case['model']}).")

    def onFineTune(self):
        p = self._parameterNode
        if self.logic.isBusy() or not self._ensureDependencies():
            return
        try:
            choice = models.resolve(p.model, p.modelFolder)
            modelDir = self.logic.startFineTune(p.trainingFolder, p.device, choice.model, choice.bundle, p.keepWorse)
        except (ValueError, OSError) as error:
            slicer.util.errorDisplay(str(error), windowTitle="MONAIUNetSeg: fine-tune")
            return
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.format = "fine-tuning: %p%"
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = f"Fine-tuning the {choice.describe()} on {p.trainingFolder} ..."
        self._log(self.ui.statusLabel.text + f" -> {modelDir}")
        self._timer.start()
        self._poll()  # the process starts now; the buttons follow

    def _showFineTuned(self, outcome):
        self.ui.progressBar.setVisible(False)
        if not outcome.ok:
            self.ui.statusLabel.text = "Fine-tuning: no new model."
            self._log(f"Fine-tuning: {outcome.error}")
            slicer.util.errorDisplay(f"Fine-tuning gave no new model: {outcome.error}", windowTitle="MONAIUNetSeg")
            return
        self._parameterNode.model = models.FOLDER_CHOICE  # the new model is the one the next run uses
        self._parameterNode.modelFolder = pathlib.Path(outcome.result.modelDir)
        self.ui.statusLabel.text = f"Fine-tuned: {outcome.result.text()}; selected as the model."
        self._log(f"Fine-tuned model {outcome.result.modelDir}: {outcome.result.text()}")

    def onCancel(self):
        self._cancelAll()

    def _cancelAll(self, quiet=False):
        if self._timer:
            self._timer.stop()
        ended = self.logic.cancelJobs()
        if ended:
            self._log("Cancelled: the background process was ended.")
        if not quiet or ended:
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = "Cancelled."
        self._updateButtons()


class MONAIUNetSegLogic(ScriptedLoadableModuleLogic, logic.Logic):
    """Callable without the GUI: ``MONAIUNetSegLogic().segment(volumeNode, device="auto")``; the work is in
    ``MONAIUNetSegLib.logic.Logic`` (segmentation jobs, the correct, save, fine-tune loop)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        logic.Logic.__init__(self)

    def getParameterNode(self):
        return MONAIUNetSegParameterNode(super().getParameterNode())


class MONAIUNetSegTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: the bundled sample through the logic, checked against its reference mask."""

    MIN_DICE = 0.8  # for the final shipped model

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_in_process()
        self.setUp()
        self.test_sample_background_process()

    def _loadSample(self):
        flairPath, labelPath = mrml.sample_paths()
        return slicer.util.loadVolume(str(flairPath)), slicer.util.loadLabelVolume(str(labelPath))

    def _check(self, result, volumeNode, referenceNode):
        segmentId = segmentations.find_segment_id(result.segmentationNode)
        self.assertIsNotNone(segmentId, "no 'FLAIR abnormality' segment")
        self.assertEqual(segmentId, result.segmentId)
        self.assertTrue(segmentations.reference_geometry_matches(result.segmentationNode, volumeNode))
        dice = segmentations.dice_with_labelmap(result.segmentationNode, segmentId, volumeNode, referenceNode)
        self.delayDisplay(f"Dice {dice:.3f} against the reference mask, {result.volumeMl:.1f} mL, "
                          f"RANO {result.measurementText()}, {result.verdictText()}")
        self.assertGreaterEqual(dice, self.MIN_DICE)
        self.assertFalse(result.review, f"the sample was flagged for review: {result.reviewReasons}")
        self.assertEqual(sorted(result.lineNodes), ["longest", "perpendicular"], "no RANO diameter lines")
        for lineNode in result.lineNodes.values():
            self.assertGreater(lineNode.GetLineLengthWorld(), 0.0)
        return dice

    def test_sample_in_process(self):
        self.delayDisplay("Segmenting the bundled sample (in-process)")
        volumeNode, referenceNode = self._loadSample()
        result = MONAIUNetSegLogic().run(volumeNode, device="auto")
        self._check(result, volumeNode, referenceNode)
        self.delayDisplay("In-process test passed")

    def test_sample_background_process(self):
        self.delayDisplay("Segmenting the bundled sample (background process)")
        volumeNode, referenceNode = self._loadSample()
        result = MONAIUNetSegLogic().run(volumeNode, device="auto", inProcess=False, timeout=900)
        self._check(result, volumeNode, referenceNode)
        self.delayDisplay("Background-process test passed")
