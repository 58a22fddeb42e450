"""3D Slicer module: FLAIR abnormality (lower-grade glioma) segmentation with the project's MONAI U-Net.

GUI wiring only. Everything that computes lives beside this file: in MONAIUNetSegLib ``mrml`` (volume nodes <->
arrays/files), ``segmentations`` (segmentation node, volume, checks), ``markups`` (the RANO diameters as line
nodes), ``jobs`` (the background job queue the Logic
owns) and ``dependencies`` (dependency check), and in the Slicer-free core package ``monaiunetseg``. Research use only, not for clinical use.
"""

import logging
import os
import pathlib
import shutil
import sys
import tempfile
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

from MONAIUNetSegLib import dependencies, jobs, models, mrml, segmentations  # noqa: E402

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

    # --- log -------------------------------------------------------------------------------------------------

    def _log(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info("MONAIUNetSeg: %s", text)

    # --- dependencies --------------------------------------------------------------------------------------

    def _ensureDependencies(self):
        missing = dependencies.missing()
        if not missing:
            return True
        torchNote = ""
        if any(d.module == "torch" for d in missing):
            torchNote = ("\n\nPyTorch will be installed with the PyTorch extension's installer (the right CUDA or CPU build)."
                         if dependencies.pytorch_utils_available() else
                         "\n\nThe PyTorch extension is not installed, so PyTorch will come from PyPI (default build). "
                         "For a specific CUDA build, cancel, install the 'PyTorch' extension from the Extensions Manager, "
                         "restart Slicer and try again.")
        text = ("MONAIUNetSeg needs these Python packages, which are missing from Slicer's Python:\n\n"
                + dependencies.describe(missing) + torchNote
                + "\n\nSlicer's own numpy and SimpleITK are kept as they are. Install now? (PyTorch can take several GB.)")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MONAIUNetSeg: missing Python packages"):
            self._log("Missing Python packages not installed: " + ", ".join(d.requirement for d in missing))
            return False
        self._log("Installing " + ", ".join(d.requirement for d in missing) + " ...")
        try:
            with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
                self.logic.installDependencies(missing)
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
        self.ui.progressBar.setRange(0, 0 if count == 1 else count)
        self.ui.progressBar.setValue(0)
        self._log(f"Segmenting {count} scan(s) on device '{device}' with the {choice.describe()} ...")
        self._timer.start()
        self._poll()  # the first job starts now, not a tick later

    def _poll(self):
        """Timer tick: the queue moves on; its news goes to the log, the progress bar and the status line."""
        update = self.logic.pollJobs()
        for line in update.lines:
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

    def onCancel(self):
        self._cancelAll()

    def _cancelAll(self, quiet=False):
        if self._timer:
            self._timer.stop()
        ended = self.logic.cancelJobs()
        if ended:
            self._log("Cancelled: the segmentation process was ended.")
        if not quiet or ended:
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = "Cancelled."
        self._updateButtons()


class MONAIUNetSegLogic(ScriptedLoadableModuleLogic):
    """Callable without the GUI: ``MONAIUNetSegLogic().segment(volumeNode, device="auto")``. Background runs go
    through the Logic's one job queue: ``enqueue`` volumes, ``pollJobs`` from a timer, ``cancelJobs``.
    ``model`` is a model set of the bundle; ``bundle`` a model folder made by ``monaiunetseg finetune`` (or any
    bundle folder; None: the shipped one), used alike in-process and by the background job."""

    _segmenters = {}  # (resolved device, bundle folder or None, model set) -> core Segmenter, loaded once

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.jobs = jobs.JobQueue(self.startJob, self.finishJob)

    def getParameterNode(self):
        return MONAIUNetSegParameterNode(super().getParameterNode())

    @staticmethod
    def modelChoice(model=models.DEFAULT_MODEL, bundle=None):
        """(model, bundle) checked: a bundle folder must hold the set's config and weights (ModelFolderError)."""
        if bundle is None:
            return models.ModelChoice(model or models.DEFAULT_MODEL, None)
        return models.ModelChoice(model, str(models.check_model_folder(bundle, model)))

    def getSegmenter(self, device="auto", model=models.DEFAULT_MODEL, bundle=None):
        from monaiunetseg.model.predictor import Segmenter, resolve_device

        choice = self.modelChoice(model, bundle)
        key = (str(resolve_device(device)), choice.bundle, choice.model)
        if key not in MONAIUNetSegLogic._segmenters:
            MONAIUNetSegLogic._segmenters[key] = Segmenter(bundle=choice.bundle, device=key[0], model=choice.model)
        return MONAIUNetSegLogic._segmenters[key]

    def segment(self, volumeNode, device="auto", segmentationNode=None, createLabelmap=False, inProcess=True, timeout=None,
                model=models.DEFAULT_MODEL, bundle=None):
        """Segment synchronously; returns the segmentation node (``run`` returns the full result)."""
        return self.run(volumeNode, device, segmentationNode, createLabelmap, inProcess, timeout, model, bundle).segmentationNode

    def run(self, volumeNode, device="auto", segmentationNode=None, createLabelmap=False, inProcess=True, timeout=None,
            model=models.DEFAULT_MODEL, bundle=None):
        """In-process with the cached Segmenter, or (``inProcess=False``) as a background job, waited for."""
        if volumeNode is None:
            raise ValueError("no input volume")
        if inProcess:
            segmenter = self.getSegmenter(device, model, bundle)
            result = segmentations.segment_volume_node(volumeNode, segmenter, segmentationNode, createLabelmap)
        else:
            (result,) = self.runJobs([volumeNode], device, segmentationNode, createLabelmap, timeout, model, bundle)
        logging.info("MONAIUNetSeg: FLAIR abnormality in '%s': %.1f mL", volumeNode.GetName(), result.volumeMl)
        return result

    def segmentAll(self, device="auto", inProcess=True, createLabelmap=False, timeout=None, model=models.DEFAULT_MODEL,
                   bundle=None):
        """Segment every loaded scalar volume, each into its own new segmentation node."""
        volumeNodes = mrml.scalar_volume_nodes(slicer.mrmlScene)
        if inProcess:
            return [self.segment(v, device, None, createLabelmap, model=model, bundle=bundle) for v in volumeNodes]
        results = self.runJobs(volumeNodes, device, None, createLabelmap, timeout, model, bundle)
        return [result.segmentationNode for result in results]

    def runJobs(self, volumeNodes, device="auto", segmentationNode=None, createLabelmap=False, timeout=None,
                model=models.DEFAULT_MODEL, bundle=None):
        """Background jobs waited for (scripts, the self-test): results in order; once all have run, a failure
        raises (a single job's own error, else one listing every failed scan)."""
        if self.isBusy():
            raise RuntimeError("background segmentations are running: wait for them or cancel them first")
        self.enqueue(volumeNodes, device, segmentationNode, createLabelmap, model, bundle)
        outcomes = self.jobs.wait(timeout)
        failures = [o for o in outcomes if not o.ok]
        if len(failures) == 1 and len(outcomes) == 1:
            raise failures[0].error
        if failures:
            raise jobs.BackgroundError(f"segmentation failed for {len(failures)} of {len(outcomes)} scan(s): "
                                             + "; ".join(f"{o.request.name}: {o.error}" for o in failures))
        return [o.result for o in outcomes]

    def enqueue(self, volumeNodes, device="auto", segmentationNode=None, createLabelmap=False,
                model=models.DEFAULT_MODEL, bundle=None):
        """Queue a background job per volume, into a new segmentation node each (or ``segmentationNode``, meant
        for a single volume); returns how many. They start, one at a time, from ``pollJobs``. A bad model folder
        raises here, before anything is queued."""
        choice = self.modelChoice(model, bundle)
        segmentationNodeID = segmentationNode.GetID() if segmentationNode else None
        return self.jobs.enqueue(jobs.JobRequest(volumeNode.GetID(), volumeNode.GetName(), device, segmentationNodeID,
                                                 createLabelmap, choice.model, choice.bundle) for volumeNode in volumeNodes)

    def pollJobs(self):
        """Advance the queue (call it from a timer); returns a ``jobs.QueueUpdate``: output, finished, started."""
        return self.jobs.poll()

    def cancelJobs(self):
        """End the running job's process and drop the waiting ones; True when a process was ended."""
        return self.jobs.cancel()

    def isBusy(self):
        return self.jobs.busy

    def childEnvironment(self):
        try:
            base = slicer.util.startupEnvironment()  # PythonSlicer sets up Slicer's own paths itself
        except AttributeError:  # headless (no slicer.app): this process's environment
            base = None
        return jobs.child_environment(base)

    def startJob(self, request):
        """The queue's ``start``: write the volume to a temporary NIfTI and start ``segment-case`` on it."""
        volumeNode = self._requestedVolume(request)
        workDir = tempfile.mkdtemp(prefix="MONAIUNetSeg-")
        try:
            inputPath = segmentations.prepare_background_input(volumeNode, workDir)
            return jobs.start_job(request, inputPath, workDir, env=self.childEnvironment())
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    def finishJob(self, job, returncode):
        """The queue's ``finish``: bring a finished job's labelmap into the scene; raises saying why it failed."""
        result = job.result(returncode)
        volumeNode = self._requestedVolume(job.request)
        segmentationID = job.request.segmentationNodeID
        segmentationNode = slicer.mrmlScene.GetNodeByID(segmentationID) if segmentationID else None
        return segmentations.import_background_result(result.output, volumeNode, segmentationNode,
                                                    job.request.createLabelmap, job.started,
                                                    (result.confidence, result.review == "yes", result.review_reasons))

    @staticmethod
    def _requestedVolume(request):
        volumeNode = slicer.mrmlScene.GetNodeByID(request.volumeNodeID)
        if volumeNode is None:
            raise RuntimeError(f"'{request.name}' was removed from the scene before it was segmented")
        return volumeNode

    def installDependencies(self, missing):
        """torch through the PyTorch extension when present (right CUDA/CPU build), the rest with pip, all under
        a constraints file pinning Slicer's numpy and SimpleITK (and an installed torch)."""
        constraintsPath = dependencies.write_constraints(os.path.join(tempfile.gettempdir(), "MONAIUNetSeg-constraints.txt"))
        if any(d.module == "torch" for d in missing):
            if dependencies.pytorch_utils_available():
                import PyTorchUtils

                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=True, torchVersionRequirement=dependencies.TORCH_VERSION_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed")
            else:
                slicer.util.pip_install(dependencies.torch_pip_arguments(constraintsPath))
            constraintsPath = dependencies.write_constraints(constraintsPath)  # now also pins the torch just installed
        arguments = dependencies.pip_arguments(dependencies.missing(), constraintsPath)
        if arguments:
            slicer.util.pip_install(arguments)


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
