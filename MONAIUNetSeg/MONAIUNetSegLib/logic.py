"""The module Logic's work, callable without the GUI (scripts, tests, the self-test): segmentation in-process or
as background jobs, and the correct, save, fine-tune loop. ``MONAIUNetSeg.MONAIUNetSegLogic`` is this class on
Slicer's ``ScriptedLoadableModuleLogic`` (the parameter node); here so the module file stays GUI wiring (issue 31).

Qt-free; ``slicer`` is imported inside the methods, and the scene is ``slicer.mrmlScene`` at call time.
"""

from __future__ import annotations

import logging
import os

from MONAIUNetSegLib import background, finetuning, jobs, models, mrml, segmentations, training_cases


class Logic:
    """``model`` is a model set of the bundle; ``bundle`` a model folder made by ``monaiunetseg finetune`` (None:
    the shipped bundle), used alike in-process and in the background. Background runs go through the job queues:
    ``enqueue`` volumes, ``pollJobs`` from a timer, ``cancelJobs``; one fine-tuning at a time (``startFineTune``,
    ``pollFineTune``, or ``fineTune`` waited for)."""

    _segmenters = {}  # (resolved device, bundle folder or None, model set) -> core Segmenter, loaded once

    def __init__(self):
        self.jobs = jobs.JobQueue(self.startJob, self.finishJob)
        self.training = jobs.JobQueue(lambda r: finetuning.start_job(r, env=self.childEnvironment()),
                                      lambda job, returncode: job.result(returncode))
        self.fineTuneOptions = {}  # more finetune options for every fine-tuning (scripts), e.g. {"epochs": 5}

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
        if key not in Logic._segmenters:
            Logic._segmenters[key] = Segmenter(bundle=choice.bundle, device=key[0], model=choice.model)
        return Logic._segmenters[key]

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
            choice = self.modelChoice(model, bundle)
            background.mark(result, volumeNode, choice.model, choice.bundle)
        else:
            (result,) = self.runJobs([volumeNode], device, segmentationNode, createLabelmap, timeout, model, bundle)
        logging.info("MONAIUNetSeg: FLAIR abnormality in '%s': %.1f mL", volumeNode.GetName(), result.volumeMl)
        return result

    def segmentAll(self, device="auto", inProcess=True, createLabelmap=False, timeout=None, model=models.DEFAULT_MODEL,
                   bundle=None):
        """Segment every loaded scalar volume, each into its own new segmentation node."""
        import slicer

        volumeNodes = mrml.scalar_volume_nodes(slicer.mrmlScene)
        if inProcess:
            return [self.segment(v, device, None, createLabelmap, model=model, bundle=bundle) for v in volumeNodes]
        results = self.runJobs(volumeNodes, device, None, createLabelmap, timeout, model, bundle)
        return [result.segmentationNode for result in results]

    def runJobs(self, volumeNodes, device="auto", segmentationNode=None, createLabelmap=False, timeout=None,
                model=models.DEFAULT_MODEL, bundle=None):
        """Background jobs waited for (scripts, the self-test): results in order; a failure raises once all ran."""
        if self.isBusy():
            raise RuntimeError("background jobs are running: wait for them or cancel them first")
        self.enqueue(volumeNodes, device, segmentationNode, createLabelmap, model, bundle)
        return background.results_or_raise(self.jobs.wait(timeout))

    def enqueue(self, volumeNodes, device="auto", segmentationNode=None, createLabelmap=False,
                model=models.DEFAULT_MODEL, bundle=None):
        """Queue a background job per volume, into a new segmentation node each (or ``segmentationNode``, meant
        for a single volume); returns how many. They start from ``pollJobs``; a bad model folder raises here."""
        choice = self.modelChoice(model, bundle)
        segmentationNodeID = segmentationNode.GetID() if segmentationNode else None
        return self.jobs.enqueue(jobs.JobRequest(volumeNode.GetID(), volumeNode.GetName(), device, segmentationNodeID,
                                                 createLabelmap, choice.model, choice.bundle) for volumeNode in volumeNodes)

    def pollJobs(self):
        """Advance the queue (call it from a timer); returns a ``jobs.QueueUpdate``: output, finished, started."""
        return self.jobs.poll()

    def cancelJobs(self):
        """End the running process (segmentation or fine-tuning) and drop the waiting jobs; True when one ended."""
        return self.training.cancel() | self.jobs.cancel()

    def isBusy(self):
        return self.jobs.busy or self.training.busy

    def childEnvironment(self):
        import slicer.util

        return background.child_environment(getattr(slicer.util, "startupEnvironment", None))

    def startJob(self, request):
        """The queue's ``start``: write the volume to a temporary NIfTI and start ``segment-case`` on it."""
        import slicer

        return background.start(slicer.mrmlScene, request, env=self.childEnvironment())

    def finishJob(self, job, returncode):
        """The queue's ``finish``: bring a finished job's labelmap into the scene; raises saying why it failed."""
        import slicer

        return background.finish(slicer.mrmlScene, job, returncode)

    # --- the correct, save, fine-tune loop ----------------------------------------------------------------

    def addTrainingCase(self, volumeNode, segmentationNode, folder):
        """Save the scan and its (edited) segmentation as a training pair in ``folder``; returns its provenance."""
        return training_cases.add_training_case(volumeNode, segmentationNode, folder)

    def startFineTune(self, casesFolder, device="auto", model=models.DEFAULT_MODEL, bundle=None, keepWorse=False,
                      options=None):
        """Start ``finetune`` on the training cases (prepared first) from the chosen model, as a background job;
        returns the model folder it writes (an unfinished one from the same start is resumed)."""
        if self.isBusy():
            raise RuntimeError("background jobs are running: wait for them or cancel them first")
        text = str(casesFolder or "").strip()
        if not text or text == "." or not os.path.isdir(text):
            raise ValueError("choose the folder of training cases (Add to training cases fills it) first")
        source = self.modelChoice(model, bundle).bundle or model
        modelDir = finetuning.plan(text, source)
        prepared = finetuning.prepare(text, modelDir)  # a bad or lonely pair is refused here, before any process
        options = dict(self.fineTuneOptions if options is None else options)
        self.training.enqueue([finetuning.FineTuneRequest(text, str(modelDir), source, device, keepWorse, options,
                                                          str(prepared))])
        return str(modelDir)

    def pollFineTune(self):
        """Advance the fine-tuning job (call it from a timer); a ``jobs.QueueUpdate``."""
        return self.training.poll()

    def fineTuneProgress(self) -> float:
        """0-1, the running fine-tuning's epochs done (0 when none runs)."""
        job = self.training.job
        return finetuning.progress(job.request.modelDir) if job is not None else 0.0

    def fineTune(self, casesFolder, device="auto", model=models.DEFAULT_MODEL, bundle=None, keepWorse=False,
                 options=None, timeout=None):
        """``startFineTune`` waited for; returns the ``finetuning.FineTuneResult`` (raises when none was made)."""
        self.startFineTune(casesFolder, device, model, bundle, keepWorse, options)
        (outcome,) = self.training.wait(timeout)
        if not outcome.ok:
            raise outcome.error
        return outcome.result
